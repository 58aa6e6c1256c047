"""Regenerate the tables of docs/BENCHMARKS.md (and of its history page) from the committed raw files.

The page marks each generated block with the command that prints it:

    <!-- generated: python -m benchmarks.returns table docs/results/runs -->
    | env | algo | ... |
    <!-- end generated -->

`python -m benchmarks.docs_page` (`make benchmarks-report`) reruns every block's command and writes
each page back with their output; `--check` changes nothing and exits 1 naming each block whose text
is not what its command prints now. Commands may only run `benchmarks` modules, in this process
(with their own argv, standard output captured), so that a block cannot run anything else.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import runpy
import shlex
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from tinypolicy.ondevice.artefact import write_text
from tinypolicy.ondevice.errors import UserError

# the results page, and the history page that superseded results move to (some still generated)
PAGES = (Path("docs/BENCHMARKS.md"), Path("docs/benchmarks-history.md"))
BLOCK = re.compile(r"^<!-- generated: (?P<command>.+?) -->\n(?P<body>.*?)^<!-- end generated -->$",
                   re.MULTILINE | re.DOTALL)
PREFIX = ("python", "-m")


@dataclass(frozen=True)
class Block:
    command: str
    body: str
    line: int  # of the opening marker, 1-based
    span: tuple[int, int]  # of the body in the page


def blocks(page: str) -> list[Block]:
    found = [Block(m["command"], m["body"], page.count("\n", 0, m.start()) + 1, m.span("body"))
             for m in BLOCK.finditer(page)]
    opened = len(re.findall(r"^<!-- generated: ", page, re.MULTILINE))
    closed = len(re.findall(r"^<!-- end generated -->", page, re.MULTILINE))
    if not (len(found) == opened == closed):
        raise UserError(f"unbalanced generated blocks: {opened} opening and {closed} closing markers, "
                        f"{len(found)} well-formed")
    return found


def run_command(command: str) -> str:
    """The standard output of `python -m benchmarks.MODULE ARGS...`, run in this process."""
    words = shlex.split(command)
    if tuple(words[:2]) != PREFIX or len(words) < 3 or not words[2].startswith("benchmarks."):
        raise UserError(f"a generated block may only run `python -m benchmarks.MODULE ...`, not: {command}")
    module, args = words[2], words[3:]
    out, err = io.StringIO(), io.StringIO()
    saved_argv = sys.argv
    sys.argv = [module, *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            # runpy warns when the module was imported before (by an earlier block): it runs a fresh copy anyway
            warnings.filterwarnings("ignore", "'benchmarks.", RuntimeWarning)
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            last_line = (err.getvalue().strip().splitlines() or [""])[-1]
            raise UserError(f"`{command}` failed ({exc.code}): {last_line}") from None
    finally:
        sys.argv = saved_argv
    return out.getvalue().rstrip() + "\n"


def regenerate(page: str) -> tuple[str, list[Block]]:
    """The page with every block's body replaced by its command's output, and the blocks that changed."""
    changed, pieces, last = [], [], 0
    for block in blocks(page):
        body = run_command(block.command)
        if body != block.body:
            changed.append(block)
        pieces += [page[last:block.span[0]], body]
        last = block.span[1]
    return "".join(pieces) + page[last:], changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--page", type=Path, action="append", help=f"a page to regenerate (repeatable; default: "
                        f"{', '.join(map(str, PAGES))})")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is out of date")
    args = parser.parse_args(argv)
    stale = False
    for path in args.page or PAGES:
        try:
            if not path.is_file():
                raise UserError(f"{path} is not a file")
            new_page, changed = regenerate(path.read_text())
        except UserError as exc:
            parser.exit(2, f"docs_page: error: {exc}\n")
        for block in changed:
            print(f"{path}:{block.line}: {'out of date' if args.check else 'regenerated'}: {block.command}")
        stale |= bool(changed)
        if changed and not args.check:
            write_text(path, new_page)
        if not args.check:
            print(f"{path}: {len(blocks(new_page))} generated blocks, {len(changed)} changed")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
