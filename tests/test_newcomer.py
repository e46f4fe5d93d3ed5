"""A newcomer follows the README top to bottom: every ```bash block runs, in order, as written.

The blocks run in a fresh folder laid out like a clone (``.venv``, ``scripts/`` and ``examples/`` of this
checkout, ``../shared`` beside it), each in ``bash -e`` after ``source .venv/bin/activate`` as the README
says, against the local Hub server (the README's ``someuser/...`` repos go there). Only budgets change:
each entry of ``TINY`` replaces README text by the same command on tiny settings, and must occur in the
README (a changed README fails here until this walk-through follows it). Two lines are not run: the setup
(``scripts/setup.sh``, which made the environment these tests run in) and the test command (this run).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "hf-collapse demo": "hf-collapse demo --sizes 1x16,1x32,2x32 --epochs 1 --stories 300 --block-size 32 "
    "--permutations 50",
    "--max-tokens 200000": "--max-tokens 3000",
    "--width 64 --depth 2 --epochs 1 --num_heads 4": "--width 32 --depth 1 --epochs 1 --num_heads 4 "
    "--max_train_stories 60 --max_eval_blocks 8 --block_size 64 --batch_size 8 --measure_max_tokens 3000 "
    "--nc4_max_tokens 500 --eval_strategy no",
}
NOT_RUN = ("bash scripts/setup.sh && ", ".venv/bin/python -m pytest")


def readme_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def tiny(block: str) -> str:
    lines = []
    for line in block.splitlines():
        if NOT_RUN[1] in line:
            continue
        lines.append(line.replace(NOT_RUN[0], ""))
    text = "\n".join(lines)
    for readme, small in TINY.items():
        text = re.sub(re.escape(readme) + r"(?=\s|$)", small, text)
    return text


def test_every_tiny_setting_follows_the_readme():
    text = "\n".join(readme_blocks())
    for readme in TINY:
        assert readme in text, f"the README no longer says {readme!r}: update TINY"
    assert NOT_RUN[0] + ".venv/bin/hf-collapse demo" in text and NOT_RUN[0] + NOT_RUN[1] in text


@pytest.fixture
def long_hub(tmp_path, monkeypatch):
    """The local Hub for the whole walk-through (the ``hub_env`` server stops itself after 300 s)."""
    from conftest import HubEnv
    from hub_server import LocalHub

    hub = LocalHub(max_seconds=3600).start()
    try:
        yield HubEnv(hub, tmp_path / "hf_home", monkeypatch)
    finally:
        hub.stop()


def test_readme_top_to_bottom(tmp_path, shared_data, long_hub):
    clone = tmp_path / "clone"
    clone.mkdir()
    os.symlink(shared_data.parent, tmp_path / "shared")  # ../shared beside the clone
    os.symlink(Path(sys.prefix), clone / ".venv")
    for name in ("scripts", "examples"):
        os.symlink(REPO / name, clone / name)
    env = {**long_hub.env, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    blocks = readme_blocks()
    assert len(blocks) >= 5
    for i, block in enumerate(blocks):
        script = "source .venv/bin/activate\n" + tiny(block)
        out = subprocess.run(
            ["bash", "-e", "-c", script], cwd=clone, env=env, capture_output=True, text=True, timeout=900
        )
        assert out.returncode == 0, (
            f"README bash block {i + 1} failed:\n{script}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
        )
    # what the README promises is there
    assert (clone / "hf_collapse_demo" / "report.md").is_file()
    assert (clone / "stories260K-measured" / "collapse" / "metrics.json").is_file()
    assert (clone / "analysis" / "report.md").is_file() and (clone / "analysis" / "correlations.csv").is_file()
    assert len([p for p in (clone / "runs").iterdir() if (p / "run.json").is_file()]) == 3
    assert long_hub.hub.file("someuser/stories260K-measured", "collapse/statistics.safetensors")
    # everything the walk-through wrote into the clone is ignored by git: a newcomer's `git status` stays clean
    written = sorted(p.name for p in clone.iterdir() if p.name not in (".venv", "scripts", "examples"))
    assert written
    for name in written:
        rc = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "--no-index", name + "/"]).returncode
        rc_file = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "--no-index", name]).returncode
        assert 0 in (rc, rc_file), f"the README's commands leave {name!r} in the clone and .gitignore misses it"
