"""``wire install``: what WireGuard needs here, and installing it."""

from __future__ import annotations

from wire.ops.context import Context, OpError, _require_root
from wire.runner import CommandError


def install(ctx: Context) -> dict:
    """What WireGuard needs here, and the command that installs what is missing."""
    return ctx.check_install().as_dict()


async def install_now(ctx: Context) -> dict:
    """Run the platform's package manager for what is missing."""
    check = ctx.check_install()
    if check.ok:
        return {**check.as_dict(), "installed": []}
    if not check.command:
        raise OpError(f"cannot install {', '.join(check.missing)} on this platform ({check.platform}); install WireGuard by hand")
    if check.platform != "macos":  # Homebrew refuses to run as root
        _require_root(ctx, "wire install --yes")
    try:
        result = await ctx.runner.run(list(check.command), timeout=600)
    except CommandError as e:
        raise OpError(str(e))
    if result.rc != 0:
        output = (result.stderr or result.stdout).decode(errors="replace").strip()[-500:]
        raise OpError(f"{' '.join(check.command)} failed (exit {result.rc}): {output}")
    after = ctx.check_install()
    return {**after.as_dict(), "installed": [m for m in check.missing if m not in after.missing]}
