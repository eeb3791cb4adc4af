"""``wire demo``: the demonstration mesh in network namespaces."""

from __future__ import annotations

from wire.ops.context import Context, OpError


async def demo(ctx: Context, keep: bool = False, clean: str | None = None) -> dict:
    """Build a mesh of real nodes in network namespaces, show it working, tear it down."""
    from wire import demo as demo_module
    from wire.lab import LabUnavailable, check_requirements

    try:
        check_requirements()
    except LabUnavailable as e:
        raise OpError(f"the demo needs a Linux host with network namespaces: {e}")
    tools = ctx.check_install()
    if not tools.ok:
        raise OpError(f"the demo needs WireGuard: missing {', '.join(tools.missing)} (wire install --yes)")
    if clean:
        await demo_module.clean_demo(ctx.reactor, ctx.runner, clean)
        return {"ok": True, "cleaned": clean}
    try:
        return await demo_module.run_demo(ctx.reactor, ctx.runner, keep=keep)
    except demo_module.DemoError as e:
        raise OpError(str(e))
