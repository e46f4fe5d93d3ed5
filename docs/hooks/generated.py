"""MkDocs hook: the parts of the docs that are generated from the code, so they are never written by hand.

Markers in a page's markdown, replaced at build time:

- ``<!-- generated: measures-table -->``: one row per record of ``hf_collapse.core.registry.MEASURES``
  (key; name, source and meaning; definition; more collapsed when; needs);
- ``<!-- generated: logged-keys -->``: the ``eval_*`` keys the Trainer integration logs, and when;
- ``<!-- generated: cli-help COMMAND -->``: ``hf-collapse COMMAND --help`` as printed (``COMMAND`` may be
  empty for the top-level help);
- ``<!-- generated: api-layer LAYER -->``: the API reference of every module of a layer;
- ``<!-- generated: dependencies -->``: the Python version, the dependencies and the extras of
  ``pyproject.toml``, with their version bounds, read at build time;
- ``<!-- generated: include PATH -->``: a file of the repository (e.g. CHANGELOG.md), inlined without
  its title; its links to other repository files become plain text, since they are not pages of the
  site.

A malformed registry record (missing field, unknown direction or need) fails the build, and so (as a
warning under ``--strict``) does a public module-level function or class of ``core``, ``integrations``,
``study`` or ``cli`` without a docstring (the API reference would show it bare), except the
``add_parser``/``run`` pair every command module has.
"""

from __future__ import annotations

import argparse
import html
import io
import os
import re
from contextlib import redirect_stdout
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import get_plugin_logger
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser as a package (the docs extra installs it there)
    import tomli as tomllib

log = get_plugin_logger("generated")

REPO = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"<!--\s*generated:\s*([\w-]+)\s*([^>]*?)\s*-->")
FIELDS = ("key", "name", "equation", "source", "meaning", "direction", "needs")
NEEDS_TEXT = {
    "weights": "classifier weights",
    "test_data": "held-out data",
    "covariance": "`covariance=True` statistics",
    "option": "an option of `measure_collapse`",
}
# when the Trainer integration logs a key that needs ...
NEEDS_WHEN = {
    "weights": "the classifier module only (not inner layers)",
    "test_data": "with the NC4 pass (`collapse_nc4`, on by default)",
    "covariance": "with `collapse_covariance=True`",
    "option": "when the option is set",
}


def _registry():
    try:
        from hf_collapse.core import registry
    except ImportError as e:  # the docs describe the installed package: `pip install -e .[docs]`
        raise PluginError(f"cannot import hf_collapse.core.registry ({e}); install the package first") from e
    for key, rec in registry.MEASURES.items():
        missing = [f for f in FIELDS if not hasattr(rec, f)]
        if missing:
            raise PluginError(f"measure record {key!r} lacks {missing}")
        if rec.key != key:
            raise PluginError(f"measure record {key!r} has key {rec.key!r}")
        if rec.direction not in registry.DIRECTIONS:
            raise PluginError(f"measure {key!r}: direction {rec.direction!r} is not one of {registry.DIRECTIONS}")
        bad = [n for n in rec.needs if n not in NEEDS_TEXT]
        if bad:
            raise PluginError(f"measure {key!r}: needs {bad} have no description in docs/hooks/generated.py")
    return registry.MEASURES


def _cell(text) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code(text) -> str:
    """Inline code inside a table cell (keeps _, * and < literal; a | would end the cell)."""
    return "<code>" + html.escape(str(text)).replace("|", "&#124;") + "</code>"


def measures_table() -> str:
    rows = ["| key | measure | definition | more collapsed when | needs |", "|---|---|---|---|---|"]
    for key, rec in _registry().items():
        needs = ", ".join(NEEDS_TEXT[n] for n in rec.needs) or "statistics only"
        direction = getattr(rec, "direction_text", rec.direction)
        measure = f"**{_cell(rec.name)}** ({_cell(rec.source)}): {_cell(rec.meaning)}"
        rows.append(f"| `{key}` | {measure} | {_code(rec.equation)} | {_cell(direction)} | {needs} |")
    return "\n".join(rows)


def logged_keys() -> str:
    """The keys CollapseTrainer / CollapseCallback log, with when each appears."""
    rows = [
        "| key at the classifier (the default module) | key for another module `M` in `collapse_modules` | logged |",
        "|---|---|---|",
    ]
    for key, rec in _registry().items():
        layer = "-" if "weights" in rec.needs else f"`eval_<M>_{key}`"
        when = "; ".join(NEEDS_WHEN[n] for n in rec.needs) or "always"
        rows.append(f"| `eval_{key}` | {layer} | {when} |")
    note = (
        "\n\n`<M>` is the module name with dots as underscores: `transformer.h.1` gives "
        "`eval_transformer_h_1_nc1_cdnv`. `eval_loss`, `eval_runtime`, ... are the Trainer's own."
    )
    return "\n".join(rows) + note


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


def _bounds(specifier: SpecifierSet) -> str:
    """``>=0.4.3,<0.5`` -> ``>= 0.4.3, < 0.5`` (lower bounds first)."""
    ordered = sorted(specifier, key=lambda s: (not s.operator.startswith(">"), str(s)))
    return ", ".join(f"{s.operator} {s.version}" for s in ordered)


def _requirement(text: str) -> tuple[str, str]:
    """``"evaluate>=0.4.3,<0.5"`` -> (``"evaluate"``, ``">= 0.4.3, < 0.5"``); extras and markers kept."""
    req = Requirement(text)
    name = req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else "")
    spec = _bounds(req.specifier) or "any version"
    if req.marker:
        spec += f" (where {req.marker})"
    return name, spec


def dependencies() -> str:
    """The version bounds of ``pyproject.toml``: Python, each dependency, then each extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    python = _bounds(SpecifierSet(project["requires-python"]))
    rows = ["| package | versions |", "|---|---|", f"| Python | {_cell(python)} |"]
    for text in project["dependencies"]:
        name, spec = _requirement(text)
        rows.append(f"| `{name}` | {_cell(spec)} |")
    extras = []
    for extra, reqs in project.get("optional-dependencies", {}).items():
        items = ", ".join("`{}` {}".format(*_requirement(r)).replace(" any version", "") for r in reqs)
        extras.append(f"- `{extra}`: {items}")
    return "\n".join(rows) + '\n\nExtras (`pip install -e ".[EXTRA]"`):\n\n' + "\n".join(extras)


def include(path: str) -> str:
    file = (REPO / path).resolve()
    if REPO not in file.parents or not file.is_file():
        raise PluginError(f"include: no file {path!r} in the repository")
    text = file.read_text(encoding="utf-8")
    text = re.sub(r"\A# .*\n", "", text, count=1)  # the page has its own title
    # [text](relative/file) -> text: repository files are not pages of the site
    return re.sub(r"\[([^\]]+)\]\((?!https?://|#)[^)]+\)", r"\1", text)


# the order of the API pages: the data path first; modules not listed follow alphabetically
API_ORDER = {
    "core": ["statistics", "registry", "measures", "sweep", "nc4", "distributed", "scope", "io", "errors", "lockfile"],
    "integrations": [
        "settings",
        "passes",
        "hooks",
        "resume",
        "trainer",
        "folder",
        "hub",
        "weights_hash",
        "model_card",
        "metric",
        "data",
        "model_source",
    ],
    "study": ["corpus", "train", "analysis", "design", "figures", "demo", "token_report"],
}


def api_layer(layer: str) -> str:
    """A ``::: hf_collapse.<layer>.<module>`` block for every module of a layer, so none is left out."""
    folder = REPO / "src" / "hf_collapse" / layer
    if layer not in API_ORDER or not folder.is_dir():
        raise PluginError(f"api-layer: no layer {layer!r}")
    present = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
    order = [m for m in API_ORDER[layer] if m in present] + [m for m in present if m not in API_ORDER[layer]]
    return "\n\n".join(f"::: hf_collapse.{layer}.{m}" for m in order)


def on_pre_build(config, **kwargs):
    """Warn (an error under --strict) for each public module-level function or class without a docstring."""
    import griffe

    package = griffe.load("hf_collapse", search_paths=[str(REPO / "src")])
    for layer in ("core", "integrations", "study", "cli"):
        modules = [package[layer]]
        while modules:
            module = modules.pop()
            for name, member in module.members.items():
                if name.startswith("_") or member.is_alias:
                    continue
                if layer == "cli" and name in ("add_parser", "run"):  # the convention cli/__init__.py documents
                    continue
                if member.is_module:
                    modules.append(member)
                elif (member.is_function or member.is_class) and not member.docstring:
                    log.warning(f"{member.path} has no docstring ({member.relative_filepath}:{member.lineno})")


def on_page_markdown(markdown, page, config, files, **kwargs):
    def replace(m):
        kind, arg = m.group(1), m.group(2)
        if kind == "measures-table":
            return measures_table()
        if kind == "logged-keys":
            return logged_keys()
        if kind == "cli-help":
            return cli_help(arg)
        if kind == "dependencies":
            return dependencies()
        if kind == "include":
            return include(arg)
        if kind == "api-layer":
            return api_layer(arg)
        raise PluginError(f"{page.file.src_path}: unknown generated marker {kind!r}")

    return MARKER.sub(replace, markdown)
