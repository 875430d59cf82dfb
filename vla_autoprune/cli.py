"""The project's plain (non-Hydra) command lines: an argument parser whose usage errors are the
project's one line, like every other bad input."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

logger = logging.getLogger(__name__)


class OneLineParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose usage errors are one log line
    ``error: <message>; see <prog> --help`` (exit 2) instead of the usage text and the message."""

    def error(self, message: str) -> NoReturn:
        """Inherited, see superclass. Logged; unless a root handler already prints to the terminal
        (the CLI configured logging first), through a stderr handler of its own: the line shows once."""
        shown = any(
            isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stderr, sys.stdout)
            for h in logging.getLogger().handlers
        )
        handler = None if shown else logging.StreamHandler(sys.stderr)
        if handler is not None:
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
        try:
            logger.error("error: %s; see %s --help", message, self.prog)
        finally:
            if handler is not None:
                logger.removeHandler(handler)
        raise SystemExit(2)
