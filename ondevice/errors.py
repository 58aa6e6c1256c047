"""The error type for a user's mistake: the CLI prints its message on one line and exits 2.

An `OSError` met while reading or writing (a full disk, a folder made read-only) is no
mistake of the user's: it is printed on one line too, with the path and the OS's reason,
and exits 1.
"""
from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    pass


def os_error_line(exc: OSError) -> str:
    """The path and the OS's reason, on one line: "runs/x/checkpoint.pt: No space left on device"."""
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename is not None else reason


def run_command(prog: str, command: Callable[[], int]) -> int:
    """`command()`'s exit status; a UserError (2) or OSError (1) is printed as "PROG: error: ..."."""
    try:
        return command()
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{prog}: error: {os_error_line(exc)}", file=sys.stderr)
        return 1
