"""The package's front: public names, the CLI entry points."""

import subprocess
import sys

import pytest

import hf_collapse
from hf_collapse.cli import COMMAND_MODULES, main


def test_public_names_resolve():
    assert hf_collapse.CollapseStatistics and hf_collapse.measure_collapse
    for name in hf_collapse._LAZY:
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


def test_module_entry_points():
    for argv in (["-m", "hf_collapse.cli", "--version"], ["-m", "hf_collapse", "--version"]):
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and hf_collapse.__version__ in proc.stdout, proc.stderr


def test_user_errors_are_one_line(capsys, tmp_path):
    code = main(["measure", str(tmp_path / "no-model"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("hf-collapse measure: error:") and "Traceback" not in err
