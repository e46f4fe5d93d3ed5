"""The ``hf-collapse`` command line (also ``python -m hf_collapse.cli``).

Each sub-command lives in its own module, which exposes ``add_parser(subparsers)``; the parser it
adds sets ``func`` to a callable taking the parsed ``argparse.Namespace`` and returning an exit code.

Errors: a user error (``hf_collapse.errors.is_user_error``: a ValueError / TypeError /
FileNotFoundError that hf_collapse raised on purpose after checking its input) is printed as one line
``hf-collapse COMMAND: error: ...`` with exit code 1; any other exception keeps its traceback.
``--debug`` (before or after the command) shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import is_user_error, one_line

# sub-command modules, in the order ``--help`` lists them
COMMAND_MODULES = [
    "hf_collapse.demo",
    "hf_collapse.install_metric",
    "hf_collapse.push_cli",
    "hf_collapse.measure_cli",
    "hf_collapse.analysis",
    "hf_collapse.tokens",
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="hf-collapse", description="Measure neural collapse in Hugging Face models.")
    parser.add_argument("--version", action="version", version=f"hf_collapse {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    for command in sub.choices.values():  # also accepted after the command; SUPPRESS keeps a leading one
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of user errors too")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command as typed, recorded in measured folders
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        if args.debug or not is_user_error(e):
            raise  # a bug or an unexpected failure: the traceback tells where
        print(f"hf-collapse {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
