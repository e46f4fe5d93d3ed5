"""Faults: SIGKILL during ``hf-collapse measure --resume``, a push whose server goes away mid-way,
two ``hf-collapse measure`` on one ``--output-dir``, and the test session's isolation."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_collapse.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest  # noqa: E402
from conftest import HF_TMP_HOME  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")]


def measure_args(shared_data, out, *extra, save_model=False):
    # 3000 labelled tokens in blocks of 64 (63 labels each) -> 48 blocks, batches of 2 -> 24 batches
    return conftest.measure_args(
        shared_data, out, *extra, block_size=64, batch_size=2, checkpoint_every=1, save_model=save_model
    )


def _env():
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}


def _checkpointed_batches(out: Path) -> int:
    try:
        return json.loads((out / "collapse" / ".checkpoint" / "latest.json").read_text())["batches"]
    except (OSError, ValueError, KeyError):
        return 0


def _start(args):
    return subprocess.Popen(
        [sys.executable, "-m", "hf_collapse.cli", *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_when(proc, out: Path, at_least: int, timeout=600) -> int:
    """SIGKILL ``proc`` once its checkpoint holds ``at_least`` batches; returns the batches then."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done = _checkpointed_batches(out)
        if done >= at_least:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            assert proc.returncode == -signal.SIGKILL
            return done
        if proc.poll() is not None:
            raise AssertionError(f"measure ended (rc {proc.returncode}) before batch {at_least}: {proc.stderr.read()}")
        time.sleep(0.005)
    proc.kill()
    raise AssertionError(f"no checkpoint of {at_least} batches within {timeout} s")


def test_sigkill_at_random_moments_then_resume_gives_the_same_statistics(shared_data, tmp_path):
    """Kill ``measure --resume`` three times (twice in pass 1 at random batches, once after pass 1,
    i.e. in the NC4 pass or while writing) and resume: the same statistics and measures as one
    uninterrupted run, and every restart continued from a later checkpoint."""
    from hf_collapse import CollapseStatistics

    full = tmp_path / "full"
    assert main(measure_args(shared_data, full)) == 0
    out = tmp_path / "killed"
    seed = int(time.time())
    rng = random.Random(seed)  # different moments on every run; the seed is in the failure message
    first = rng.randint(2, 10)
    second = rng.randint(first + 3, 20)
    reached = []
    for target in (first, second, 24):
        reached.append(_kill_when(_start(measure_args(shared_data, out, "--resume")), out, target))
        assert not (out / "collapse" / "metrics.json").exists() or target == 24
    assert reached[0] < reached[1] <= reached[2], (seed, reached)
    proc = subprocess.run(
        [sys.executable, "-m", "hf_collapse.cli", *measure_args(shared_data, out, "--resume")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (seed, reached, proc.stderr[-3000:])
    a = json.loads((full / "collapse" / "metrics.json").read_text())
    b = json.loads((out / "collapse" / "metrics.json").read_text())
    a.pop("command"), b.pop("command")  # each names its own --output-dir (and --resume)
    assert a == b, (seed, reached)
    sa = CollapseStatistics.load(full / "collapse" / "statistics.safetensors")
    sb = CollapseStatistics.load(out / "collapse" / "statistics.safetensors")
    assert sa.num_tokens == sb.num_tokens == 3000
    assert (sa.counts == sb.counts).all() and (sa.means == sb.means).all()
    assert not (out / "collapse" / ".checkpoint").exists()


def test_second_measure_on_the_same_output_dir_refuses(shared_data, tmp_path, capsys):
    """A second ``measure`` on a folder another one is writing exits 1 with one clear line and
    writes nothing there; the first finishes normally; afterwards the folder is free again."""
    out = tmp_path / "shared-out"
    first = _start(measure_args(shared_data, out))
    try:
        end = time.monotonic() + 600
        while _checkpointed_batches(out) < 1:  # the first holds the lock and is in its pass
            assert first.poll() is None and time.monotonic() < end, first.stderr.read()
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)  # keep it mid-pass while the second one tries
        before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
        code = main(measure_args(shared_data, out))
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1
        assert len(err) == 1 and "is being written by another hf-collapse measure" in err[0], err
        assert f"pid {first.pid}" in err[0] and "--output-dir" in err[0]
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    assert json.loads((out / "collapse" / "metrics.json").read_text())["num_tokens"] == 3000
    capsys.readouterr()
    assert main(measure_args(shared_data, out)) == 1  # a folder holding a measurement is not replaced silently
    assert "already holds a measurement: pass --overwrite" in capsys.readouterr().err
    assert main(measure_args(shared_data, out, "--overwrite")) == 0  # the lock went with the first process


def _digest(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def measured_folder(shared_data, tmp_path):
    out = tmp_path / "measured"
    assert main(measure_args(shared_data, out, save_model=True)) == 0
    assert (out / "model.safetensors").is_file()
    return out


@pytest.mark.parametrize("fault", ["lfs_put", "commit"])
def test_push_that_fails_mid_way_changes_nothing_and_a_retry_succeeds(
    hub_env, measured_folder, capsys, fault, monkeypatch
):
    """The server drops the connection during the LFS upload (every retry too) or at the commit: the
    push exits 1 with one line, the local folder is byte-identical, the repo shows no new revision;
    once the server answers again the same push succeeds and the Hub holds the folder's files."""
    repo = "tester/faulty-push"
    before = _digest(measured_folder)
    hub_env.hub.fail(fault, times=-1)
    if fault == "lfs_put":  # huggingface_hub retries LFS uploads with back-off: keep the test short
        import huggingface_hub.lfs as hub_lfs

        real = hub_lfs.http_backoff

        def quick(*args, **kwargs):
            return real(*args, **{**kwargs, "max_retries": 1, "base_wait_time": 0.05, "max_wait_time": 0.05})

        monkeypatch.setattr(hub_lfs, "http_backoff", quick)
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()  # stderr must hold the error line only
    try:
        code = main(["push", str(measured_folder), repo])
    finally:
        if not was_disabled:
            enable_progress_bars()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("hf-collapse push: could not push"), err
    assert any(kind == fault for kind, _ in hub_env.hub.state.dropped)
    assert _digest(measured_folder) == before
    state = hub_env.hub.state
    assert [c for c in state.commits if c[0] == repo] == [(repo, "main", "initial commit")]
    assert hub_env.hub.files(repo) == [".gitattributes"]
    assert list(state.repos[repo].branches) == ["main"]

    hub_env.hub.fail(fault, times=0)
    assert main(["push", str(measured_folder), repo]) == 0
    assert _digest(measured_folder) == before
    assert [c[2] for c in state.commits if c[0] == repo][1:] and len([c for c in state.commits if c[0] == repo]) == 2
    files = {
        p.relative_to(measured_folder).as_posix()
        for p in measured_folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(measured_folder).parts)
    }
    assert files <= set(hub_env.hub.files(repo))
    assert hub_env.hub.file(repo, "model.safetensors") == (measured_folder / "model.safetensors").read_bytes()
    assert ".hf-collapse.lock" not in hub_env.hub.files(repo)


def test_session_uses_a_temporary_hf_home():
    """conftest points every Hugging Face cache at a temporary folder before anything imports
    huggingface_hub: the evaluate metric that ``import hf_collapse`` registers lands there too."""
    home = str(HF_TMP_HOME)
    # what a process of this session sees (a fresh one: in-process constants may be patched by fixtures)
    probe = "import huggingface_hub.constants as hc; print(hc.HF_HOME); print(hc.HF_HUB_CACHE)"
    seen = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert all(p.startswith(home) for p in seen), seen
    for key in ("HF_HOME", "HF_DATASETS_CACHE", "HF_MODULES_CACHE", "MPLCONFIGDIR"):
        assert os.environ[key].startswith(home), key
    import datasets.config
    import evaluate.config

    assert str(datasets.config.HF_MODULES_CACHE).startswith(home)
    assert str(evaluate.config.HF_MODULES_CACHE).startswith(home)
    real = Path.home() / ".cache" / "huggingface"
    assert not any(p.startswith(str(real)) for p in seen)
