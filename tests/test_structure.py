"""The layout rules of CONTRIBUTING.md, checked: layers, no import cycle, the map of modules, one measure
registry, and an import that writes nothing."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src" / "hf_collapse"
SOURCES = sorted(p for p in PKG.rglob("*.py")) + sorted((REPO / "metrics" / "neural_collapse").glob("*.py"))
LAYERS = {"core": 0, "integrations": 1, "study": 2, "cli": 3}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = ["hf_collapse", *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """hf_collapse modules imported by ``path`` (module level and inside functions)."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("hf_collapse"):
                out.add(target)
                out.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("hf_collapse"))
    known = {_module_name(p) for p in PKG.rglob("*.py")}
    return {t for t in out if t in known and t != mod}


def _layer(mod: str):
    parts = mod.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_layers_import_only_downwards():
    bad = []
    for path in PKG.rglob("*.py"):
        mod = _module_name(path)
        own = _layer(mod)
        if own is None:
            continue
        for target in _imports(path):
            other = _layer(target)
            if other is not None and other > own:
                bad.append(f"{mod} -> {target}")
            if other is None and target not in ("hf_collapse._version",):
                bad.append(f"{mod} -> {target} (a compatibility path or the package root)")
    assert not bad, "layer violations:\n" + "\n".join(sorted(bad))


def test_no_import_cycle():
    graph = {_module_name(p): _imports(p) for p in PKG.rglob("*.py")}
    # a package's __init__ re-exporting its children is not a cycle of concepts
    graph = {m: {t for t in deps if not t.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for t in graph.get(m, ()):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t) :] + [t]))
            if t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def _contributing_map() -> str:
    text = (REPO / "CONTRIBUTING.md").read_text()
    start = text.index("## The map")
    block = text[start:].split("```", 2)[1]
    return block


def test_contributing_map_lists_every_module():
    """Every module of the package appears in CONTRIBUTING's map, under its own folder, and the map
    names no module that does not exist."""
    block = _contributing_map()
    sections: dict[str, set[str]] = {}
    current = ""
    for line in block.splitlines():
        m = re.match(r"^  (\w+)/", line)
        if m:
            current = m.group(1)
            continue
        m = re.match(r"^    (\w+\.py)\b", line)
        if m:
            sections.setdefault(current, set()).add(m.group(1))
    for sub in ("core", "integrations", "study", "cli"):
        have = {p.name for p in (PKG / sub).glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
        listed = sections.get(sub, set())
        assert have - listed == set(), f"CONTRIBUTING.md's map misses {sorted(have - listed)} in {sub}/"
        assert listed - have == set(), (
            f"CONTRIBUTING.md's map names {sorted(listed - have)} in {sub}/, which do not exist"
        )


@pytest.mark.slow
def test_core_imports_without_transformers_or_hub():
    code = (
        "import sys, hf_collapse, hf_collapse.core\n"
        "bad = [m for m in ('transformers', 'huggingface_hub', 'datasets', 'evaluate', 'accelerate') "
        "if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_import_writes_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    code = "import hf_collapse, hf_collapse.integrations.hub, hf_collapse.integrations.trainer, hf_collapse.cli"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _key_literals(path: Path) -> set[str]:
    """String constants in code that are exactly a measure key (docstrings and messages excluded)."""
    from hf_collapse.core.registry import MEASURE_KEYS

    return {
        n.value
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in MEASURE_KEYS
    }


def test_measure_keys_are_written_in_at_most_two_source_files():
    """Each key is defined in the registry and computed in one core module; everything else reads the registry
    (the paper's Table 1 in study/design.py names the keys its rows correspond to: a reference, not a copy)."""
    from hf_collapse.core.registry import MEASURE_KEYS

    literals = {p: _key_literals(p) for p in SOURCES if p != PKG / "study" / "design.py"}
    for key in MEASURE_KEYS:
        where = [p.relative_to(REPO).as_posix() for p, keys in literals.items() if key in keys]
        assert "src/hf_collapse/core/registry.py" in where and len(where) <= 2, f"{key} is written in {where}"


def test_version_is_written_once():
    hits = [
        p
        for p in [*SOURCES, REPO / "pyproject.toml"]
        if re.search(r'^\s*(__version__|version)\s*=\s*"\d', p.read_text(), re.M)
    ]
    assert [p.relative_to(REPO).as_posix() for p in hits] == ["src/hf_collapse/_version.py"]


@pytest.mark.parametrize(
    "path", ["LICENSE", "CHANGELOG.md", "CONTRIBUTING.md", ".pre-commit-config.yaml", "src/hf_collapse/py.typed"]
)
def test_project_files_exist(path):
    assert (REPO / path).is_file()
