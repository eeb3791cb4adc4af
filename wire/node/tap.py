"""``twistd wire-node``: the node daemon (not built yet; see the node issue)."""

from twisted.python import usage


class Options(usage.Options):
    def postOptions(self) -> None:
        raise usage.UsageError("wire-node is not built yet; this release ships the coordination server only")


def makeService(config):  # pragma: no cover - postOptions refuses first
    raise SystemExit("wire-node is not built yet")
