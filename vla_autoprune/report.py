"""``python -m vla_autoprune.report DIR [DIR ...]``: merge runs / shards / sweeps into one report.

Writes ``report.md``, ``report.csv`` and plots (L2@3s and collision@3s vs budget, one line per
pruner) into ``--out`` (default: the first DIR) and logs the compact table.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vla_autoprune.pipeline.report_files import write_report

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m vla_autoprune.report", description=__doc__)
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep output folders")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: first DIR)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        write_report(args.dirs, args.out or args.dirs[0])
    except (FileNotFoundError, ValueError) as err:
        logger.error("error: %s", err)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
