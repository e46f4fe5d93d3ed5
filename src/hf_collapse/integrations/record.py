"""What was measured: one frozen record, built once per run and written with every measurement.

A :class:`MeasurementRecord` says which weights (model name, revision, commit, ``weights_sha256``),
which data (descriptors with their digests), which budgets and block size, which task and measure
options, by which command and library version, at which training step. ``hf-collapse measure``,
``sweep``, the Trainer and the study each build one; :mod:`hf_collapse.integrations.folder` writes it
into the statistics header (:meth:`to_header`) and ``metrics.json`` (:meth:`to_metrics`) and reads it
back (:meth:`from_files`); ``measure`` reuses stored statistics when :meth:`mismatches` is empty.

Data descriptors: ``file:NAME sha256:HEX`` for a text file, ``dataset:ID split:SPLIT[ config:CONFIG]``
for a dataset (:mod:`hf_collapse.integrations.measurement_data` makes them). The on-disk keys are the
field names, except ``step`` (header ``global_step``) and ``library_version`` (header
``measured_with``: ``hf_collapse X.Y.Z``), as the first release wrote them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from .._version import __version__
from ..core.errors import UserTypeError
from ..core.options import MeasureOptions

_INT_FIELDS = ("max_tokens", "nc4_max_tokens", "block_size", "batch_size", "step")
# what must be equal for stored statistics and measures to answer a new request
MATCH_FIELDS = (
    "weights_sha256",
    "data",
    "nc4_data",
    "max_tokens",
    "nc4_max_tokens",
    "block_size",
    "task",
    "covariance",
    "options",
)


def _none(value) -> bool:
    return value is None or value in ("", "None", "null")


def _options_record(options) -> dict[str, Any]:
    if options is None:
        return MeasureOptions().to_record()
    if isinstance(options, MeasureOptions):
        return options.to_record()
    if isinstance(options, Mapping):
        out = MeasureOptions().to_record()
        out.update({k: options[k] for k in out if k in options})
        return out
    raise UserTypeError(f"options must be a MeasureOptions or its record, got {type(options).__name__}")


def _parse_option(name: str, value):
    """An option value read back from a header string or a JSON number."""
    if _none(value):
        return None
    if name in ("k", "riesz_s"):
        return float(value)
    if name in ("tile_size", "min_count"):
        return int(float(value))
    return str(value)


def _first_release_data(header: Mapping[str, str]) -> Optional[str]:
    """The data descriptor of a header written before descriptors: ``dataset``/``split``/``dataset_config``
    keys, or a file's ``data_files``/``data_sha256``."""
    if not _none(header.get("dataset")):
        config = header.get("dataset_config")
        return f"dataset:{header['dataset']} split:{header.get('split') or 'train'}" + (
            f" config:{config}" if not _none(config) else ""
        )
    if not _none(header.get("data_sha256")):
        return f"file:{header.get('data_files') or 'text'} sha256:{header['data_sha256']}"
    return None


@dataclass(frozen=True)
class MeasurementRecord:
    """What one measurement measured (see the module docstring). ``options`` is
    :meth:`MeasureOptions.to_record` (``classes`` as a count and hash); a ``MeasureOptions`` given
    here is converted."""

    model_name: Optional[str] = None  # a Hub id as given, a local folder by its name (no machine paths)
    revision: Optional[str] = None
    commit: Optional[str] = None
    weights_sha256: Optional[str] = None
    data: Optional[str] = None
    nc4_data: Optional[str] = None
    max_tokens: Optional[int] = None
    nc4_max_tokens: Optional[int] = None
    block_size: Optional[int] = None
    batch_size: Optional[int] = None
    task: str = "causal_lm"
    covariance: bool = False
    options: Mapping[str, Any] = field(default_factory=lambda: MeasureOptions().to_record())
    torch_dtype: Optional[str] = None
    tokenizer: Optional[str] = None
    command: Optional[str] = None
    hyperparameters: Optional[Mapping[str, Any]] = None  # of the training run, when known (the card lists them)
    step: Optional[int] = None
    library_version: str = __version__

    def __post_init__(self):
        object.__setattr__(self, "options", _options_record(self.options))
        for name in _INT_FIELDS:
            value = getattr(self, name)
            object.__setattr__(self, name, None if _none(value) else int(value))

    def replace(self, **changes: Any) -> MeasurementRecord:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------------- the data descriptor
    def _data_part(self, pattern: str) -> Optional[str]:
        m = re.search(pattern, self.data or "")
        return m.group(1) if m else None

    @property
    def dataset(self) -> Optional[str]:
        """The Hub dataset id of the statistics data (None for text files)."""
        return self._data_part(r"^dataset:(\S+)")

    @property
    def dataset_config(self) -> Optional[str]:
        return self._data_part(r" config:(\S+)")

    @property
    def split(self) -> Optional[str]:
        return self._data_part(r" split:(\S+)")

    @property
    def data_sha256(self) -> Optional[str]:
        return self._data_part(r" sha256:([0-9a-f]+)")

    # ------------------------------------------------------------------------- on disk
    def to_header(self) -> dict[str, str]:
        """The statistics-file header (safetensors metadata: strings only; None left out)."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "options":
                out.update({k: str(v) for k, v in value.items() if v is not None})
            elif f.name == "step":
                if value is not None:
                    out["global_step"] = str(value)
            elif f.name == "library_version":
                out["measured_with"] = f"hf_collapse {value}"
            elif value is not None:
                out[f.name] = json.dumps(value, sort_keys=True) if isinstance(value, (bool, Mapping)) else str(value)
        return out

    def to_metrics(self) -> dict[str, Any]:
        """The fields as ``metrics.json`` holds them beside the measures (options flattened)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "options":
                out.update(self.options)
            else:
                out[f.name] = getattr(self, f.name)
        return out

    @classmethod
    def from_files(cls, header: Mapping[str, str], metrics: Optional[Mapping[str, Any]] = None) -> MeasurementRecord:
        """The record of a stored measurement: its statistics header, completed by ``metrics.json``
        (folders of the first release recorded the options and some budgets only there)."""
        metrics = dict(metrics or {})
        get = lambda key: header.get(key) if not _none(header.get(key)) else metrics.get(key)  # noqa: E731
        options = MeasureOptions().to_record()
        for name in options:
            value = get(name)
            if value is not None:
                options[name] = _parse_option(name, value)
        version = header.get("measured_with", "")
        data = get("data") or _first_release_data(header)
        hyperparameters = get("hyperparameters")
        if isinstance(hyperparameters, str):
            try:
                hyperparameters = json.loads(hyperparameters)
            except ValueError:
                hyperparameters = None
        covariance = get("covariance")
        values = dict(
            model_name=get("model_name"),
            revision=get("revision"),
            commit=get("commit"),
            weights_sha256=header.get("weights_sha256") or metrics.get("weights_sha256"),
            data=data or None,
            nc4_data=get("nc4_data") or None,
            max_tokens=get("max_tokens"),
            nc4_max_tokens=get("nc4_max_tokens"),
            block_size=get("block_size"),
            batch_size=get("batch_size"),
            task=get("task") or "causal_lm",
            covariance=covariance in (True, "true", "True"),
            options=options,
            torch_dtype=get("torch_dtype"),
            tokenizer=get("tokenizer"),
            command=get("command"),
            hyperparameters=hyperparameters if isinstance(hyperparameters, Mapping) and hyperparameters else None,
            step=header.get("global_step") if not _none(header.get("global_step")) else metrics.get("step"),
            library_version=version.split(" ", 1)[1] if version.startswith("hf_collapse ") else (version or "unknown"),
        )
        return cls(**values)

    # ------------------------------------------------------------------------- reuse
    def mismatches(self, other: MeasurementRecord) -> list[str]:
        """Why a stored measurement (``self``) does not answer the request ``other`` (empty: it does)."""
        problems = []
        for name in MATCH_FIELDS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if name == "options":
                diff = [k for k in theirs if mine.get(k) != theirs[k]]
                problems += [f"{k}: stored {mine.get(k)!r}, wanted {theirs[k]!r}" for k in diff]
            elif mine != theirs:
                problems.append(f"{name}: stored {mine!r}, wanted {theirs!r}")
        return problems

    def matches(self, other: MeasurementRecord) -> bool:
        return not self.mismatches(other)


__all__ = ["MeasurementRecord", "MATCH_FIELDS"]
