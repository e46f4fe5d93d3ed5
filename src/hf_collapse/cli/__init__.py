"""The ``hf-collapse`` command line (also ``python -m hf_collapse.cli``).

Each sub-command lives in its own module, which exposes ``add_parser(subparsers)``; the parser it
adds sets ``func`` to a callable taking the parsed ``argparse.Namespace`` and returning an exit code.

Errors: a user error (``hf_collapse.core.errors.UserError``: the ValueError / TypeError /
FileNotFoundError subclasses that every validation of hf_collapse raises) is printed as one line
``hf-collapse COMMAND: error: ...`` with exit code 1; any other exception keeps its traceback.
``--debug`` (before or after the command) shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from ..core.errors import is_user_error, one_line

# sub-command modules, in workflow order (as ``--help`` lists them): measure a model, follow it over its
# checkpoints, inspect its tokens, publish it, analyse several runs, the end-to-end demo, then setup of
# the evaluate module
COMMAND_MODULES = [
    "hf_collapse.cli.measure",
    "hf_collapse.cli.sweep",
    "hf_collapse.cli.tokens",
    "hf_collapse.cli.push",
    "hf_collapse.cli.analyze",
    "hf_collapse.cli.demo",
    "hf_collapse.cli.install_metric",
]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (paragraphs kept), and every option's default shown unless its help says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "default" in text.lower()
            or any(action.default is v for v in (None, False, argparse.SUPPRESS))
            or not action.option_strings
        ):
            return text
        return text + " (default: %(default)s)"


def plain(text: str | None) -> str | None:
    """Docstring text for a terminal: reST double backticks and roles removed."""
    if not text:
        return text
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-collapse`` parser with every sub-command of ``COMMAND_MODULES``."""
    from .._version import __version__

    parser = argparse.ArgumentParser(
        prog="hf-collapse",
        formatter_class=HelpFormatter,
        description="Measure neural collapse in Hugging Face models. Commands in workflow order; "
        "`hf-collapse COMMAND --help` for each.",
    )
    parser.add_argument("--version", action="version", version=f"hf_collapse {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    for command in sub.choices.values():  # one look for every command's --help
        # --debug also after the command; SUPPRESS keeps a leading one
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of user errors too"
        )
        command.formatter_class = HelpFormatter
        command.description = plain(command.description)
        for action in command._actions:
            action.help = plain(action.help)
    return parser


def main(argv=None) -> int:
    """Run ``hf-collapse`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code (1 for a user error)."""
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
