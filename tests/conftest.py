"""Shared fixtures. Real data lives in ../shared/data beside the repository (or $HF_COLLAPSE_SHARED_DATA).

Isolation: before any test module imports hf_collapse, transformers or huggingface_hub, every Hugging
Face cache and home (and matplotlib's config dir) is pointed at a temporary folder for the whole
session, inherited by the subprocesses tests start; no test writes to the user's ~/.cache/huggingface.
"""

import atexit
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

HF_TMP_HOME = Path(tempfile.mkdtemp(prefix="hf_collapse_tests_home_"))
ISOLATED_ENV = {
    "HF_HOME": HF_TMP_HOME / "hf",
    "HF_HUB_CACHE": HF_TMP_HOME / "hf" / "hub",
    "HF_DATASETS_CACHE": HF_TMP_HOME / "hf" / "datasets",
    "HF_MODULES_CACHE": HF_TMP_HOME / "hf" / "modules",
    "HF_EVALUATE_CACHE": HF_TMP_HOME / "hf" / "evaluate",
    "HF_METRICS_CACHE": HF_TMP_HOME / "hf" / "metrics",
    "HF_XET_CACHE": HF_TMP_HOME / "hf" / "xet",
    "HF_ASSETS_CACHE": HF_TMP_HOME / "hf" / "assets",
    "MPLCONFIGDIR": HF_TMP_HOME / "matplotlib",
    "XDG_CACHE_HOME": HF_TMP_HOME / "xdg",
}
for _key, _value in ISOLATED_ENV.items():
    os.environ[_key] = str(_value)
os.environ.pop("HF_TOKEN_PATH", None)
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
atexit.register(shutil.rmtree, HF_TMP_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def _restore_environ():
    """Every test leaves the process environment as it found it (a library or CLI path that sets a variable,
    e.g. an HF_HOME of a test's temporary folder, must not leak into later tests)."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


def free_port() -> int:
    """A TCP port that is free now on 127.0.0.1 (for torchrun / accelerate launch rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_args(shared_data, out, *extra, block_size=128, batch_size=5, checkpoint_every=None, save_model=True):
    """``hf-collapse measure`` on stories260K and the TinyStories sample: 3000 labelled tokens, float64."""
    d = shared_data
    args = ["measure", str(d / "models" / "stories260K"), "--train-file", str(d / "tinystories" / "train-head.txt")]
    args += ["--validation-file", str(d / "tinystories" / "validation-head.txt"), "--max-tokens", "3000"]
    args += ["--block-size", str(block_size), "--batch-size", str(batch_size), "--dtype", "float64", "--no-progress"]
    if checkpoint_every is not None:
        args += ["--checkpoint-every", str(checkpoint_every)]
    return args + ["--output-dir", str(out), *extra] + ([] if save_model else ["--no-save-model"])


def accelerate_launch(num_processes: int = 2) -> list[str]:
    """``accelerate launch`` of several CPU processes on this machine (gloo), ready for ``-m MODULE ...``."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
    ] + [
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]


def shared_data_dir() -> Path:
    env = os.environ.get("HF_COLLAPSE_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not (path / "README.md").is_file():
        pytest.skip(
            f"shared test data not found at {path}: clone the repo beside ../shared or set "
            "HF_COLLAPSE_SHARED_DATA (CI has it)"
        )
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_dir()


# ---------------------------------------------------------------------------------------- local Hub
class HubEnv:
    """A running ``tests/hub_server.LocalHub`` with huggingface_hub pointed at it (in-process and,
    through ``env``, for subprocesses) and an empty Hub cache under ``home``."""

    def __init__(self, hub, home: Path, monkeypatch):
        self.hub, self.url, self.home, self._mp = hub, hub.url, home, monkeypatch
        self.env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(home / "hub"),
            "HF_TOKEN": "hf_local_test_token",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
        }

    def go_offline(self) -> None:
        """Stop the server and switch huggingface_hub to offline mode (``HF_HUB_OFFLINE=1``)."""
        from huggingface_hub import constants

        self.hub.stop()
        self._mp.setattr(constants, "HF_HUB_OFFLINE", True)
        self.env["HF_HUB_OFFLINE"] = "1"


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """Point the real huggingface_hub client at a fresh local Hub, with an empty cache.

    huggingface_hub reads HF_ENDPOINT and friends when it is imported, so in-process this patches the
    constants it reads at call time, the module-level default ``HfApi`` (``huggingface_hub.create_repo``
    and friends are its bound methods) and transformers' cached ``HfApi``. ``HF_HUB_DISABLE_XET``
    makes uploads use the LFS protocol the server speaks instead of Xet (hf_xet is installed).
    """
    import sys

    import huggingface_hub
    import huggingface_hub.hf_api  # noqa: F401  (a lazy submodule: patched below)
    from huggingface_hub import constants

    if str(Path(__file__).parent) not in sys.path:  # also under --import-mode=importlib
        sys.path.insert(0, str(Path(__file__).parent))
    from hub_server import LocalHub

    hub = LocalHub(max_seconds=300).start()
    home = tmp_path / "hf_home"
    env = HubEnv(hub, home, monkeypatch)
    for key in ("HF_ENDPOINT", "HF_HUB_DISABLE_XET", "HF_HOME", "HF_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(key, env.env[key])
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", hub.url)
    try:
        import transformers.utils.hub as th

        monkeypatch.setattr(th, "_hf_api", None, raising=False)
    except ImportError:
        pass
    try:
        yield env
    finally:
        hub.stop()
