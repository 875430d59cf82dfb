"""``python -m vla_autoprune.report DIR [DIR ...]``: merge runs / shards / sweeps into one report.

Writes ``report.md`` and ``report.csv`` (results with 95 % scene-bootstrap intervals, stratified
by scenario family when every sample has one), ``pairwise.csv`` (pruner vs pruner at each budget),
``breakdown.csv`` (by scenario family and complexity), ``autoprune_stats.csv`` (MI and k per
scenario family) and plots (L2@3s and collision@3s vs budget with interval bands) into ``--out``
(default: the first DIR), and logs the compact table.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vla_autoprune.cli import OneLineParser
from vla_autoprune.errors import UserError
from vla_autoprune.pipeline.report_files import write_report

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = OneLineParser(prog="python -m vla_autoprune.report", description=__doc__)
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep output folders")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: first DIR)")
    parser.add_argument(
        "--bootstrap-seed", type=int, default=0, help="seed of the scene bootstrap (default: 0)"
    )
    parser.add_argument(
        "--resamples", type=int, default=2000, help="bootstrap resamples per interval (default: 2000)"
    )
    parser.add_argument(
        "--plain-bootstrap",
        action="store_true",
        help="resample scenes without stratifying by scenario family (default: stratify when known)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        write_report(
            args.dirs,
            args.out or args.dirs[0],
            resamples=args.resamples,
            seed=args.bootstrap_seed,
            stratify=not args.plain_bootstrap,
        )
    except UserError as err:
        logger.error("error: %s", err)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
