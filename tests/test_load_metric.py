"""hf_collapse.load_metric (no registration, no Hub request) and the cached-copy warning filter."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
COMPUTE = (
    "import numpy as np\n"
    "r = nc.compute(features=np.array([[1., 0], [3, 0], [0, 2], [0, 4]]), labels=np.array([0, 0, 1, 1]))\n"
    "print('CDNV', round(r['nc1_cdnv'], 8))\n"
)


def _env(home, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_CACHE", "PYTHONPATH"))}
    env.update(PYTHONPATH=str(REPO / "src"), HF_HOME=str(home), **extra)
    return env


def _run(code, env, cwd):
    return subprocess.run([PY, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow  # fresh Python processes
def test_load_metric_needs_no_registration_and_the_bare_name_error_is_explained(tmp_path):
    # a fresh cache where `hf-collapse install-metric` never ran: the bare name is unknown to evaluate
    env = _env(tmp_path / "home")
    out = _run("import hf_collapse\nnc = hf_collapse.load_metric()\n" + COMPUTE, env, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"CDNV {round(1 / 169, 8)}" in out.stdout  # variances 1 and 1, squared mean distance 13: 2 / (2 * 13^2)
    assert "couldn't be found" not in out.stderr
    assert not (
        tmp_path / "home" / "modules" / "evaluate_modules" / "metrics" / "evaluate-metric--neural_collapse"
    ).exists()
    bare = _run("import evaluate\nevaluate.load('neural_collapse')\n", {**env, "HF_EVALUATE_OFFLINE": "1"}, tmp_path)
    assert bare.returncode != 0 and "Couldn't find a module script" in bare.stderr  # evaluate's own message
    from hf_collapse.integrations.metric import INSTALL_HINT

    assert "hf-collapse install-metric" in INSTALL_HINT


@pytest.mark.slow  # fresh Python processes
def test_bare_name_after_import_logs_no_cached_copy_warning(tmp_path):
    env = _env(tmp_path / "home", HF_EVALUATE_OFFLINE="1")
    install = subprocess.run(
        [PY, "-m", "hf_collapse.cli", "install-metric"], env=env, capture_output=True, text=True, timeout=240
    )
    assert install.returncode == 0, install.stderr[-3000:]
    out = _run("import hf_collapse, evaluate\nnc = evaluate.load('neural_collapse')\n" + COMPUTE, env, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"CDNV {round(1 / 169, 8)}" in out.stdout
    assert "couldn't be found locally" not in out.stderr
    # without hf_collapse imported first, evaluate's warning is there (the message the filter removes)
    plain = _run("import evaluate\nnc = evaluate.load('neural_collapse')\n" + COMPUTE, env, tmp_path)
    assert plain.returncode == 0 and "couldn't be found locally" in plain.stderr


def test_filter_drops_only_our_cached_copy_notice(caplog):
    from hf_collapse.integrations.metric import silence_cached_copy_notice

    silence_cached_copy_notice()
    silence_cached_copy_notice()  # idempotent: one filter
    log = logging.getLogger("evaluate.loading")
    assert sum(type(f).__name__ == "_CachedCopyNotice" for f in log.filters) == 1
    with caplog.at_level(logging.WARNING, logger="evaluate.loading"):
        log.warning(
            "Using the latest cached version of the module from /x/evaluate-metric--neural_collapse/ab "
            "since it couldn't be found locally at evaluate-metric--neural_collapse, or remotely on the Hub."
        )
        log.warning(
            "Using the latest cached version of the module from /x/evaluate-metric--accuracy/ab since "
            "it couldn't be found locally at evaluate-metric--accuracy, or remotely on the Hub."
        )
    assert [r.getMessage().count("accuracy") for r in caplog.records] == [2]
