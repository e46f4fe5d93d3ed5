"""MkDocs hook: the parts of the docs that are generated from the code, so they are never written by hand.

Markers in a page's markdown, replaced at build time:

- ``<!-- generated: measures-table -->``: one row per record of ``hf_collapse.core.registry.MEASURES``
  (key, name, paper, more collapsed when, needs), each key linking to its section below;
- ``<!-- generated: measures-details -->``: one section per measure with its equation and meaning;
- ``<!-- generated: logged-keys -->``: the ``eval_*`` keys the Trainer integration logs, and when;
- ``<!-- generated: cli-help COMMAND -->``: ``hf-collapse COMMAND --help`` as printed (``COMMAND`` may be
  empty for the top-level help);
- ``<!-- generated: include PATH -->``: a file of the repository (e.g. CONTRIBUTING.md), inlined; its
  links to other repository files become plain text, since they are not pages of the site;
  ``include-optional PATH`` does the same when the file exists and names it otherwise.

A malformed registry record (missing field, unknown direction or need) fails the build.
"""

from __future__ import annotations

import argparse
import io
import os
import re
from contextlib import redirect_stdout
from pathlib import Path

from mkdocs.exceptions import PluginError

REPO = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"<!--\s*generated:\s*([\w-]+)\s*([^>]*?)\s*-->")
DIRECTIONS = {"lower": "lower", "higher": "higher", "target": "closer to its target"}
NEEDS = {"weights": "classifier weights", "test_data": "held-out data", "covariance": "covariance=True"}
FIELDS = ("key", "name", "equation", "paper", "meaning", "direction", "needs")


def _registry():
    try:
        from hf_collapse.core.registry import MEASURES
    except ImportError as e:  # the docs describe the installed package: `pip install -e .[docs]`
        raise PluginError(f"cannot import hf_collapse.core.registry ({e}); install the package first") from e
    for key, rec in MEASURES.items():
        missing = [f for f in FIELDS if not hasattr(rec, f)]
        if missing:
            raise PluginError(f"measure record {key!r} lacks {missing}")
        if rec.key != key:
            raise PluginError(f"measure record {key!r} has key {rec.key!r}")
        if rec.direction not in DIRECTIONS:
            raise PluginError(f"measure {key!r}: direction {rec.direction!r} is not one of {sorted(DIRECTIONS)}")
        bad = [n for n in rec.needs if n not in NEEDS]
        if bad:
            raise PluginError(f"measure {key!r}: unknown needs {bad}; known: {sorted(NEEDS)}")
    return MEASURES


def _cell(text) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _anchor(key: str) -> str:
    return key.replace("_", "-")


def _math(equation: str) -> str:
    """A display formula: the registry's equation as is when it is already markdown with math
    delimiters, else wrapped as display LaTeX."""
    eq = equation.strip()
    if "$" in eq or "\\(" in eq or "\\[" in eq or "\\" not in eq:
        return eq
    return f"$$\n{eq}\n$$"


def measures_table() -> str:
    rows = ["| key | measure | in the paper | more collapsed when | needs |", "|---|---|---|---|---|"]
    for key, rec in _registry().items():
        needs = ", ".join(NEEDS[n] for n in rec.needs) or "statistics only"
        rows.append(f"| [`{key}`](#{_anchor(key)}) | {_cell(rec.name)} | {_cell(rec.paper)} | "
                    f"{DIRECTIONS[rec.direction]} | {needs} |")
    return "\n".join(rows)


def measures_details() -> str:
    parts = []
    for key, rec in _registry().items():
        needs = ", ".join(NEEDS[n] for n in rec.needs) or "the statistics only"
        parts.append(f"### `{key}` {{#{_anchor(key)}}}\n\n**{rec.name}** ({rec.paper}). "
                     f"More collapsed when {DIRECTIONS[rec.direction]}; needs {needs}.\n\n"
                     f"{_math(rec.equation)}\n\n{rec.meaning}\n")
    return "\n".join(parts)


def logged_keys() -> str:
    """The keys CollapseTrainer / CollapseCallback log, with when each appears."""
    when = {"weights": "the classifier module only (not inner layers)",
            "test_data": "with the NC4 pass (`collapse_nc4`, on by default)",
            "covariance": "with `collapse_covariance=True`"}
    rows = ["| key at the classifier (default module) | key for another module `M` in `collapse_modules` | logged |",
            "|---|---|---|"]
    for key, rec in _registry().items():
        layer = "-" if "weights" in rec.needs else f"`eval_<M>_{key}`"
        cond = "; ".join(when[n] for n in rec.needs) or "always"
        rows.append(f"| `eval_{key}` | {layer} | {cond} |")
    return "\n".join(rows) + ("\n\n`<M>` is the module name with dots as underscores (`transformer.h.1` -> "
                               "`eval_transformer_h_1_nc1_cdnv`). `eval_loss`, `eval_runtime`, ... are the Trainer's own.")


def cli_help(command: str) -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width: fix it for a stable page
    from hf_collapse.cli import build_parser

    parser = build_parser()
    if command:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or command not in subs[0].choices:
            raise PluginError(f"cli-help: no command {command!r}")
        parser = subs[0].choices[command]
    out = io.StringIO()
    with redirect_stdout(out):
        parser.print_help()
    return "```text\n" + out.getvalue().rstrip() + "\n```"


def include(path: str) -> str:
    file = (REPO / path).resolve()
    if REPO not in file.parents or not file.is_file():
        raise PluginError(f"include: no file {path!r} in the repository")
    text = file.read_text(encoding="utf-8")
    text = re.sub(r"^# .*\n", "", text, count=1)  # the page has its own title
    # [text](relative/file) -> text: repository files are not pages of the site
    return re.sub(r"\[([^\]]+)\]\((?!https?://|#)[^)]+\)", r"\1", text)


def on_page_markdown(markdown, page, config, files, **kwargs):
    def replace(m):
        kind, arg = m.group(1), m.group(2)
        if kind == "measures-table":
            return measures_table()
        if kind == "measures-details":
            return measures_details()
        if kind == "logged-keys":
            return logged_keys()
        if kind == "cli-help":
            return cli_help(arg)
        if kind == "include":
            return include(arg)
        if kind == "include-optional":  # a file another change adds: its section appears once it exists
            if (REPO / arg).is_file():
                return f"## {arg}\n\n" + include(arg)
            return f"The rules for contributors are in `{arg}` at the repository root."
        raise PluginError(f"{page.file.src_path}: unknown generated marker {kind!r}")

    return MARKER.sub(replace, markdown)
