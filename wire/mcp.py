"""``wire-mcp``: the MCP adapter (not built yet; see the MCP issue).

It will be an stdio MCP server whose stdout carries MCP messages only, so
even this placeholder writes to stderr.
"""

import sys


def main() -> int:
    print("wire-mcp: the MCP adapter is not built yet in this release", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
