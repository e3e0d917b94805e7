"""The ``lotterylab`` console script: an installed plugin that cannot register is bad input.

Registries load installed plugins when the spec module is imported, before the command line is
read; an entry that clashes or fails to load then exits 2 with its distribution named.
"""

from __future__ import annotations

import sys

from lotterylab.platform.registry import PluginError


def main(argv: list[str] | None = None) -> int:
    try:
        from lotterylab.cli import main as cli_main
    except PluginError as error:
        print(f"lotterylab: {error}", file=sys.stderr)
        return 2
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
