"""Shared fixtures. Real data lives in ../shared/data beside the repository (or $HF_COLLAPSE_SHARED_DATA)."""

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# No test writes to the developer's Hugging Face cache: every HF cache points into one temporary
# home for the session (set before any test module imports huggingface_hub, datasets or evaluate).
_HOME = Path(tempfile.mkdtemp(prefix="hf_collapse_tests_home_"))
for _key, _sub in (("HF_HOME", ""), ("HF_MODULES_CACHE", "modules"), ("HF_DATASETS_CACHE", "datasets"),
                   ("HF_HUB_CACHE", "hub"), ("HF_EVALUATE_CACHE", "evaluate"), ("XDG_CACHE_HOME", "xdg")):
    os.environ[_key] = str(_HOME / _sub) if _sub else str(_HOME)


def shared_data_dir() -> Path:
    env = os.environ.get("HF_COLLAPSE_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not (path / "README.md").is_file():
        pytest.fail(f"shared test data not found at {path}: clone the repo beside ../shared or set HF_COLLAPSE_SHARED_DATA")
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
        self.env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home),
                    "HF_HUB_CACHE": str(home / "hub"), "HF_TOKEN": "hf_local_test_token",
                    "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}

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
    import huggingface_hub.hf_api  # a lazy submodule: not an attribute until imported
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
