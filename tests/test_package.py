"""The package's front: public names, the CLI entry points."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import hf_collapse
from hf_collapse.cli import COMMAND_MODULES, main

REPO = Path(__file__).resolve().parents[1]
CARD_TEMPLATES = ("collapse_model_card.md.j2", "measurements_dataset_card.md.j2")


def test_public_names_resolve():
    assert hf_collapse.CollapseStatistics and hf_collapse.measure_collapse
    for name in hf_collapse.__all__:
        assert getattr(hf_collapse, name) is not None, name
    with pytest.raises(AttributeError):
        _ = hf_collapse.no_such_name


def test_cli_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "measure", "sweep", "push", "analyze", "tokens", "install-metric"):
        assert command in out, command
    assert len(COMMAND_MODULES) == 7


@pytest.mark.slow
def test_module_entry_points():
    for argv in (["-m", "hf_collapse.cli", "--version"], ["-m", "hf_collapse", "--version"]):
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and hf_collapse.__version__ in proc.stdout, proc.stderr


def test_user_errors_are_one_line(capsys, tmp_path):
    code = main(["measure", str(tmp_path / "no-model"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("hf-collapse measure: error:") and "Traceback" not in err


@pytest.mark.slow  # builds a wheel and starts a fresh Python
def test_wheel_carries_both_card_templates(tmp_path):
    """model_cards/ is the one physical copy of the templates; the wheel ships it as hf_collapse.model_cards
    and the installed package renders both cards from there."""
    copies = [p.relative_to(REPO).as_posix() for p in REPO.rglob("*.j2") if not {".venv", "build"} & set(p.parts)]
    assert sorted(copies) == [f"model_cards/{name}" for name in CARD_TEMPLATES]
    src = tmp_path / "src_copy"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("src", "metrics", "model_cards"):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    build = "import sys; from setuptools import build_meta as b; print(b.build_wheel(sys.argv[1]))"
    out = subprocess.run(
        [sys.executable, "-c", build, str(tmp_path / "dist")], cwd=src, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    wheel = tmp_path / "dist" / out.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as z:
        for name in CARD_TEMPLATES:
            assert z.read(f"hf_collapse/model_cards/{name}") == (REPO / "model_cards" / name).read_bytes(), name
        assert not [n for n in z.namelist() if n.startswith("hf_collapse/templates/")]
        z.extractall(tmp_path / "site")  # what `pip install` of this pure-python wheel puts in site-packages
    code = (
        "import hf_collapse.integrations.model_card as mc\n"
        "print(mc.TEMPLATE_PATH.parent)\n"
        "assert mc.TEMPLATE_PATH.is_file() and mc.MEASUREMENTS_TEMPLATE_PATH.is_file()\n"
        "assert 'arXiv:2405.17767' in str(mc.render_measurements_card('a/b'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert Path(out.stdout.strip()) == tmp_path / "site" / "hf_collapse" / "model_cards"


def test_gitignore_covers_what_the_documented_commands_write(tmp_path):
    """README and example commands write into the clone root; none of it may show up as untracked."""
    import re
    import subprocess

    readme = (REPO / "README.md").read_text()
    written = set(re.findall(r"--output[-_]dir (\S+)", readme)) | set(re.findall(r'TrainingArguments\("(\w+)"', readme))
    for example in (REPO / "examples").glob("*.py"):
        written |= set(re.findall(r'"--(?:output-dir|statistics-file)", default="([^"]+)"', example.read_text()))
    written = {w.strip("`") for w in written} - {"OUT"}  # OUT: a placeholder
    assert {"stories260K-measured", "out", "runs", "analysis"} <= written
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *(w if "." in w else w + "/" for w in sorted(written))],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.split()
    ignored = {w.rstrip("/") for w in ignored}
    assert ignored == written, f"not ignored: {sorted(written - ignored)}"
