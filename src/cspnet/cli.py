"""``cspnet <verb>``: one entry point; each verb lives in ``cspnet.commands.<module>``.

A verb module defines ``add_parser(subparsers)`` which registers its sub-parser and sets
``func=run`` with ``run(args) -> int``. Any ValueError/OSError raised by a verb is printed as one
line (``cspnet <verb>: error: ...``) with exit status 2, never as a traceback; an
:class:`~cspnet.errors.OptionError` names the command line's flags (``--label-smoothing 1.5``), not
the library's arguments. A reader that closes the pipe early (``cspnet list | head -1``) ends the
command quietly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .commands.args import flag_for, one_line_errors
from .errors import OptionError, first_line

# verb -> module under cspnet.commands
COMMANDS = {
    "list": "zoo",
    "info": "zoo",
    "convert": "convert",
    "bench": "bench",
    "export": "export",
    "train": "driver",
    "val": "driver",
    "predict": "driver",
    "anchors": "anchors",
    "ablate": "ablate",
    "grads": "grads",
}



def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="cspnet", description="Cross Stage Partial Networks in PyTorch")
    parser.add_argument("--version", action="version", version=f"cspnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    seen = set()
    for module in dict.fromkeys(COMMANDS.values()):
        if module not in seen:
            seen.add(module)
            importlib.import_module(f"cspnet.commands.{module}").add_parser(sub)
    for p in (parser, *sub.choices.values()):
        one_line_errors(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        status = _run(argv)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter shutdown
        return status
    except BrokenPipeError:
        # the reader has gone: point stdout at devnull so the exit flush cannot fail again, and
        # exit 1 without a message (the Python docs' recipe for SIGPIPE)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"cspnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except (ValueError, OSError) as e:
        print(f"cspnet {args.command}: error: {cli_message(e)}", file=sys.stderr)
        return 2


def cli_message(e: BaseException) -> str:
    """The one line the command line shows for an error: an OptionError with its flags."""
    return first_line(e.render(_as_flag) if isinstance(e, OptionError) else e)


def _as_flag(name: str, value, shown: str) -> str:
    flag = flag_for(name)
    return f"{flag} {shown}" if shown and not isinstance(value, bool) else flag  # a switch is its flag alone


if __name__ == "__main__":
    sys.exit(main())
