"""hf_collapse.load_metric (no registration, no Hub request), the bare name before and after
`hf-collapse install-metric`, and where the documentation names the bare name."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hf_collapse.cli import main as cli_main
from hf_collapse.integrations import metric as reg

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
COMPUTE = (
    "import numpy as np\n"
    "r = nc.compute(features=np.array([[1., 0], [3, 0], [0, 2], [0, 4]]), labels=np.array([0, 0, 1, 1]))\n"
    "print('CDNV', round(r['nc1_cdnv'], 8))\n"
)
CDNV = f"CDNV {round(1 / 169, 8)}"  # variances 1 and 1, squared mean distance 13: 2 / (2 * 13^2)
CACHED_NOTICE = "couldn't be found locally"  # evaluate's warning when it takes a bare name from its cache


def _env(home, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_CACHE", "PYTHONPATH"))}
    env.update(PYTHONPATH=str(REPO / "src"), HF_HOME=str(home), HF_EVALUATE_OFFLINE="1", **extra)
    return env


def _run(code, env, cwd):
    return subprocess.run([PY, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow  # fresh Python processes
def test_fresh_cache_load_metric_works_and_the_bare_name_fails_until_install_metric(tmp_path, capsys):
    home = tmp_path / "home"
    env = _env(home)
    out = _run("import hf_collapse\nnc = hf_collapse.load_metric()\n" + COMPUTE, env, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert CDNV in out.stdout and CACHED_NOTICE not in out.stderr
    assert not reg.registered_script(home / "modules").parent.parent.exists()  # load_metric registered nothing
    # the bare name in this fresh cache: evaluate's own error, raised before any code of ours runs
    code = "import hf_collapse, evaluate\nnc = evaluate.load('neural_collapse')\n" + COMPUTE
    bare = _run(code, env, tmp_path)
    assert bare.returncode != 0 and "Couldn't find a module script" in bare.stderr
    # ... so the check command carries the hint
    assert cli_main(["install-metric", "--modules-cache", str(home / "modules"), "--check"]) == 1
    assert "hf-collapse install-metric" in capsys.readouterr().out
    # after install-metric the same code works, from the cached copy (evaluate says so; nothing hides it)
    assert cli_main(["install-metric", "--modules-cache", str(home / "modules")]) == 0
    bare = _run(code, env, tmp_path)
    assert bare.returncode == 0, bare.stderr[-3000:]
    assert CDNV in bare.stdout and CACHED_NOTICE in bare.stderr


@pytest.mark.slow  # fresh Python processes
def test_exported_folder_in_the_working_directory_loads_without_cache_or_warning(tmp_path, capsys):
    home = tmp_path / "home"
    work = tmp_path / "work"
    assert (
        cli_main(
            ["install-metric", "--modules-cache", str(tmp_path / "other"), "--export", str(work / "neural_collapse")]
        )
        == 0
    )
    capsys.readouterr()
    out = _run("import evaluate\nnc = evaluate.load('neural_collapse')\n" + COMPUTE, _env(home), work)
    assert out.returncode == 0, out.stderr[-3000:]
    assert CDNV in out.stdout and CACHED_NOTICE not in out.stderr
    assert not reg.registered_script(home / "modules").parent.parent.exists()  # HF_HOME's cache was not used


_BARE = re.compile(r"""evaluate\.load\(\s*["']neural_collapse["']""")


def _unhinted(text):
    """Offsets of bare-name loads with no `install-metric` before them or in the rest of their sentence."""
    bad = []
    for m in _BARE.finditer(text):
        end = re.search(r"\.\s|\n\s*\n|$", text[m.end() :]).start() + m.end()  # end of the sentence
        if "install-metric" not in text[:end]:
            bad.append(m.start())
    return bad


def _documents():
    for pattern in ("*.md", "docs/**/*.md", "examples/*.py", "metrics/neural_collapse/*"):
        for path in sorted(REPO.glob(pattern)):
            if path.is_file() and path.name != "CHANGELOG.md":
                yield path


def test_every_document_naming_the_bare_name_says_install_metric_first():
    """evaluate's error for an unregistered bare name cannot carry the hint, so every page must."""
    named = [p for p in _documents() if _BARE.search(p.read_text(encoding="utf-8"))]
    assert len(named) >= 6, named  # the card, the module, README, docs pages, the example script
    assert {p.relative_to(REPO).as_posix(): _unhinted(p.read_text(encoding="utf-8")) for p in named} == {
        p.relative_to(REPO).as_posix(): [] for p in named
    }


def test_the_document_check_flags_a_page_without_the_hint():
    bad = 'Load it:\n\n    nc = evaluate.load("neural_collapse")\n\nThen run `hf-collapse install-metric`.\n'
    assert _unhinted(bad) == [bad.index("evaluate.load")]
    good = 'Works by bare name, `evaluate.load("neural_collapse")`, once `hf-collapse install-metric` ran.\n'
    assert _unhinted(good) == [] and _unhinted("Run `hf-collapse install-metric`.\n" + bad) == []
