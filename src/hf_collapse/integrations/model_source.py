"""Checking a "Hub id or local folder" argument before transformers / huggingface_hub see it.

A mistyped local path otherwise ends in a long traceback about repo-id syntax ("Repo id must be in
the form 'repo_name' or 'namespace/repo_name'") or about the network.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..core.errors import UserFileNotFoundError, UserTypeError, UserValueError


def looks_like_path(text: str) -> bool:
    """Written as a path (``./x``, ``/x``, ``~/x``, ``a/b/c``, a Windows separator) rather than a Hub id."""
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text


def is_valid_repo_id(text: str) -> bool:
    """True when huggingface_hub accepts ``text`` as a repo id."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def check_model_source(name_or_path, what: str = "model folder", need_config: bool = True) -> str:
    """Return ``name_or_path`` as a string if it is an existing folder or could be a Hub repo id.

    Raises ``FileNotFoundError`` (a :class:`~hf_collapse.errors.UserError`) naming the path when it is
    neither: no folder there and not a valid Hub id (or written as a path). ``need_config``: a
    folder must hold the ``config.json`` that ``save_pretrained`` writes.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise UserTypeError(f"expected a Hub repo id or a local {what} path, got {type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if need_config and not (path / "config.json").is_file():
            raise UserFileNotFoundError(
                f"{text!r} is a folder but holds no config.json: not a saved {what} (save_pretrained writes one)"
            )
        return text
    if path.exists():
        raise UserFileNotFoundError(f"{text!r} is a file, not a {what} or a Hub repo id")
    if looks_like_path(text) or not is_valid_repo_id(text):
        raise UserFileNotFoundError(f"no {what} at {text!r} (and it is not a valid Hub repo id either)")
    return text


def from_pretrained_or_explain(load, name_or_path: str, what: str = "model", **kwargs):
    """``load(name_or_path, **kwargs)`` where a name that is no local folder and fails to load from the
    Hub (unknown repo, no network, offline) becomes one clear ``FileNotFoundError``."""
    try:
        return load(name_or_path, **kwargs)
    except OSError as e:
        if Path(os.fspath(name_or_path)).expanduser().is_dir():
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserFileNotFoundError(
            f"no local folder {name_or_path!r}, and loading the {what} {name_or_path!r} from the Hub failed: {first}"
        ) from e


# ---------------------------------------------------------------------------------------------
# Hub ids while offline: one quick probe instead of transformers' retry loop

HUB_PROBE_TIMEOUT = 5.0  # seconds


def probe_hub(name_or_path, revision: Optional[str] = None, token=None, timeout: float = HUB_PROBE_TIMEOUT) -> None:
    """For a Hub id (not a local folder) while ``HF_HUB_OFFLINE`` is not set: ask the Hub once, with a short
    timeout, so an unreachable Hub is one line with the offline hint instead of a minute of retries.
    Errors other than connection errors (unknown repo, gated) are left to the loading that follows."""
    from huggingface_hub import constants

    text = os.fspath(name_or_path)
    if Path(text).expanduser().is_dir() or constants.HF_HUB_OFFLINE:
        return
    from huggingface_hub import HfApi

    try:
        HfApi(endpoint=constants.ENDPOINT, token=token).model_info(text, revision=revision, timeout=timeout)
    except Exception as e:  # not found, gated, ...: transformers explains those; connection errors are ours
        if not _is_connection_error(e):
            return
        raise UserFileNotFoundError(
            f"cannot reach the Hub ({constants.ENDPOINT}) for {text!r}: "
            "set HF_HUB_OFFLINE=1 to use the local cache (or check the network)"
        ) from None


def _is_connection_error(e: BaseException) -> bool:
    """A failed connection or a timeout (requests, httpx or the OS), anywhere in the exception's chain."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
        if type(e).__name__ in (
            "ConnectError",
            "ConnectTimeout",
            "ReadTimeout",
            "TimeoutException",
            "ConnectionError",
            "Timeout",
            "OfflineModeIsEnabled",
        ):
            return True
        e = e.__cause__ or e.__context__
    return False


# ---------------------------------------------------------------------------------------------
# how a model is loaded


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserValueError(f"--model-kwargs must be a JSON object, got {text!r} ({e.msg})") from None
    if not isinstance(value, dict):
        raise UserValueError(f"--model-kwargs must be a JSON object, got {text!r}")
    return value


@dataclass(frozen=True)
class ModelSpec:
    """How a model and its tokenizer are loaded: the ``from_pretrained`` keywords of ``hf-collapse
    measure`` and ``sweep`` as one object (the CLI generates ``--revision``, ``--device-map``, ... from it)."""

    revision: Optional[str] = field(default=None, metadata={"help": "Hub revision: branch, tag or commit"})
    device_map: Optional[str] = field(
        default=None,
        metadata={
            "help": "place the model with accelerate: auto, balanced, sequential, cpu, a device, or a JSON "
            'map {"module": device|"disk"}; the model is then not moved',
            "metavar": "MAP",
        },
    )
    offload_folder: Optional[str] = field(
        default=None, metadata={"help": "folder for weights a device map puts on disk"}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "run the model repo's own code (trust it first)"})
    attn_implementation: Optional[str] = field(
        default=None, metadata={"help": "attention implementation: eager, sdpa, flash_attention_2, ..."}
    )
    token: Optional[str] = field(default=None, metadata={"help": "Hub token (default: the logged-in one, HF_TOKEN)"})
    model_kwargs: Optional[str] = field(
        default=None,
        metadata={
            "help": "more from_pretrained keywords as JSON, e.g. '{\"low_cpu_mem_usage\": true}' or a quantization_config",
            "metavar": "JSON",
        },
    )

    def check(self) -> None:
        """ValueError for malformed JSON (reads nothing)."""
        if self.model_kwargs is not None:
            _json_object(self.model_kwargs)
        if self.device_map and self.device_map.lstrip().startswith("{"):
            _json_object(self.device_map)

    def device_map_value(self):
        """The device map as ``from_pretrained`` takes it (a dict for JSON), or None."""
        if not self.device_map:
            return None
        if self.device_map.lstrip().startswith("{"):
            return _json_object(self.device_map)
        return self.device_map

    def hub_kwargs(self) -> dict:
        out = {}
        if self.revision:
            out["revision"] = self.revision
        if self.token:
            out["token"] = self.token
        if self.trust_remote_code:
            out["trust_remote_code"] = True
        return out

    def model_keywords(self) -> dict:
        """All ``from_pretrained`` keywords of the model."""
        out = self.hub_kwargs()
        if self.device_map:
            out["device_map"] = self.device_map_value()
        if self.offload_folder:
            out["offload_folder"] = self.offload_folder
        if self.attn_implementation:
            out["attn_implementation"] = self.attn_implementation
        if self.model_kwargs:
            out.update(_json_object(self.model_kwargs))
        return out

    def load(self, source, kind: str = "model", **kwargs):
        """The model (``kind="model"``, ``AutoModelForCausalLM`` unless ``auto_class=``) or tokenizer
        (``kind="tokenizer"``) of ``source`` with these keywords (``kwargs`` added, e.g. ``dtype``). A Hub id
        is probed first (:func:`probe_hub`), a failed Hub load is one line (:func:`from_pretrained_or_explain`)."""
        auto = kwargs.pop("auto_class", None)
        probe_hub(source, self.revision, self.token)
        if kind == "tokenizer":
            from transformers import AutoTokenizer

            return from_pretrained_or_explain(
                (auto or AutoTokenizer).from_pretrained, source, "tokenizer", **self.hub_kwargs(), **kwargs
            )
        if kind != "model":
            raise UserValueError(f"kind must be 'model' or 'tokenizer', got {kind!r}")
        from transformers import AutoModelForCausalLM

        return from_pretrained_or_explain(
            (auto or AutoModelForCausalLM).from_pretrained, source, "model", **{**self.model_keywords(), **kwargs}
        )

    def place(self, model, device):
        """``model`` on ``device`` unless a device map placed it (then it is left where it is)."""
        if self.device_map or getattr(model, "hf_device_map", None):
            return model
        return model.to(device)


def resolved_commit(model) -> Optional[str]:
    """The commit a model was loaded from (``config._commit_hash``), when transformers knows it."""
    return getattr(getattr(model, "config", None), "_commit_hash", None) or None


# ---------------------------------------------------------------------------------------------
# the model against its data: checked before any forward

CONTEXT_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def model_context(config) -> Optional[int]:
    """The longest sequence the model's position embeddings take (None when the config does not say)."""
    for attr in CONTEXT_ATTRIBUTES:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_vocabulary(model) -> Optional[int]:
    """Rows of the output head (else of the input embeddings, else ``config.vocab_size``)."""
    for get in ("get_output_embeddings", "get_input_embeddings"):
        mod = getattr(model, get, lambda: None)()
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 2 and w.shape[0] > 0:
            return int(w.shape[0])
        rows = getattr(mod, "out_features", None) or getattr(mod, "num_embeddings", None)
        if rows:
            return int(rows)
    value = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(value) if value else None


def max_token_id(blocks) -> Optional[int]:
    """The largest token id of in-memory token blocks (None for streaming blocks or none)."""
    stream = getattr(blocks, "stream", None)
    chunks = getattr(stream, "chunks", None)
    if not chunks:
        return None
    return int(max(int(c.max()) for c in chunks if len(c)))


def check_model_fits(model, block_size: int, tokenizer=None, blocks=()) -> None:
    """ValueError (one line, both numbers) when ``block_size`` exceeds the model's context, or the data's
    token ids (``blocks``) or the tokenizer reach past the model's vocabulary. Runs no forward."""
    context = model_context(getattr(model, "config", None))
    if context is not None and block_size > context:
        raise UserValueError(
            f"--block-size {block_size} is longer than the model's context of {context} positions: "
            f"pass --block-size {context} or less"
        )
    vocab = model_vocabulary(model)
    if vocab is None:
        return
    for b in blocks:
        top = max_token_id(b) if b is not None else None
        if top is not None and top >= vocab:
            raise UserValueError(
                f"the data hold token id {top}, but the model's vocabulary has {vocab} entries (ids 0..{vocab - 1}): "
                "the tokenizer does not belong to this model (pass its own with --tokenizer)"
            )
    if tokenizer is not None and top_checked(blocks) is False and len(tokenizer) > vocab:
        raise UserValueError(
            f"the tokenizer has {len(tokenizer)} tokens, more than the model's vocabulary of {vocab}: "
            "the tokenizer does not belong to this model (pass its own with --tokenizer)"
        )


def top_checked(blocks) -> bool:
    """Whether the token ids of ``blocks`` could be read (then they decide, not the tokenizer's length)."""
    return any(b is not None and max_token_id(b) is not None for b in blocks)


def check_tokenizer(tokenizer, where: str) -> None:
    """ValueError for a tokenizer with fewer than 2 tokens (what transformers loads from a folder without
    tokenizer files): "pass --tokenizer"."""
    if len(tokenizer) < 2:
        raise UserValueError(
            f"no usable tokenizer in {where} (it loads as {type(tokenizer).__name__} with {len(tokenizer)} token; "
            "Trainer checkpoints often have none): pass --tokenizer NAME_OR_PATH"
        )
