"""Clean command-line errors for the entry scripts: one line naming the problem, no traceback unless --debug.

Exit codes: 2 for usage and config errors (an unknown key, a bad value, a glob that matches nothing, a
missing file named in the config), 1 for errors while running, 130 for Ctrl-C.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, TypeVar

from configs.loader import ConfigError

T = TypeVar("T")

USAGE_ERRORS = (ConfigError, ValueError, TypeError, FileNotFoundError)
RUN_ERRORS = (ValueError, FileNotFoundError, RuntimeError, OSError, FloatingPointError)


class CliError(Exception):
    """An error already reported to the user; ``code`` is the exit status."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def guarded(step: Callable[[], T], debug: bool, code: int, errors: tuple[type[BaseException], ...]) -> T:
    """Run ``step``; on one of ``errors`` print ``error: <message>`` (the traceback too with ``debug``) and
    raise CliError(code), which the entry point turns into its exit status."""
    try:
        return step()
    except errors as e:
        if debug:
            raise
        logging.getLogger("cli").debug("error", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        if not debug:
            print("(run with --debug for the traceback)", file=sys.stderr)
        raise CliError(code) from e
