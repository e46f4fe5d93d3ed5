"""Collect class statistics from a model's forward passes with hooks.

The features of NC are the classifier's input. ``FeatureHooks`` captures them with forward
(pre-)hooks on ``model.get_output_embeddings()`` (``lm_head`` of GPT-2/GPT-Neo/Llama, tied or
untied) or on modules named by the user (``score``, ``classifier``, or intermediate layers for
layer-wise NC: the *input* of each named module is its feature). One pre-hook on the top model reads
the batch's ``labels`` / ``input_ids`` / ``attention_mask``, so hooks on inner modules know each
position's class. Nothing per-token outlives the batch: every batch is folded into the float64
sums of a ``CollapseStatistics`` (pass 1) or into three integers (NC4 pass).

Which positions count (``task``):

- ``"causal_lm"``: the feature at position t predicts token t+1, so its class is
  ``labels[t+1]`` (``labels`` if the batch has them, else ``input_ids``). The last position of each
  sequence has no class; positions whose target is -100, or where ``attention_mask`` is 0 at t or
  t+1 (padding), are ignored.
- ``"token_classification"``: the class of position t is ``labels[t]`` (-100 ignored).
- ``"sequence_classification"``: one class per sequence, ``labels[b]``. If the head sees (B, d) the
  feature is that row; if it sees (B, T, d) (GPT-2/Llama ``score`` heads pool *after* the head) the
  feature is the one the model pools: the last non-padding token (``pooling="last"``, as
  transformers does with ``config.pad_token_id``) or the first (``pooling="first"``, CLS).

Distributed (Accelerate / torch.distributed): each process accumulates its own shard, then one
all-reduce (``CollapseStatistics.reduce``) per pass; measures are computed on every process from
the identical reduced statistics (cheap next to the pass, and no broadcast needed). With
``even_batches`` (Accelerate's default) the last batch of an uneven dataset is padded with repeated
samples; we count exactly the samples ``accelerator.gather_for_metrics`` would keep: on the last
batch of a prepared dataloader, rank r keeps its first ``clamp(remainder - r*B, 0, B)`` sequences.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Optional, Union

import torch

from ..core.distributed import rank_and_world
from ..core.errors import UserTypeError, UserValueError
from ..core.nc4 import NC4Counter
from ..core.statistics import CollapseStatistics

logger = logging.getLogger(__name__)

TASKS = ("causal_lm", "token_classification", "sequence_classification")
POOLINGS = ("last", "first")
ModulesArg = Union[None, str, torch.nn.Module, Sequence[Union[str, torch.nn.Module]]]


# ---------------------------------------------------------------------------- model helpers
def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP / DataParallel / FSDP / DeepSpeed / torch.compile wrappers (Accelerate's unwrap)."""
    if isinstance(model, (str, os.PathLike)):
        raise UserTypeError(
            f"model must be a loaded torch.nn.Module, got the path or name {os.fspath(model)!r}: "
            "load it first, e.g. AutoModelForCausalLM.from_pretrained(...)"
        )
    if not isinstance(model, torch.nn.Module):
        raise UserTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    try:
        from accelerate.utils import extract_model_from_parallel

        return extract_model_from_parallel(model)
    except ImportError:  # pragma: no cover - accelerate is a dependency
        while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        return model


def resolve_modules(model: torch.nn.Module, modules: ModulesArg = None) -> dict[str, torch.nn.Module]:
    """Map names to the modules whose *input* is measured.

    ``None`` means the output embeddings (the classifier of a language model). Strings are
    submodule paths (``"lm_head"``, ``"score"``, ``"transformer.h.1"``).
    """
    model = unwrap_model(model)
    names = {m: n for n, m in model.named_modules()}
    if modules is None:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None:
            raise UserValueError(
                f"{type(model).__name__} has no output embeddings (get_output_embeddings() is None): "
                "name the classifier module, e.g. modules='score' or modules='classifier'"
            )
        return {names.get(head, "output_embeddings"): head}
    if isinstance(modules, (str, torch.nn.Module)):
        modules = [modules]
    out: dict[str, torch.nn.Module] = {}
    for m in modules:
        if isinstance(m, str):
            try:
                mod = model.get_submodule(m)
            except AttributeError:
                import difflib

                close = difflib.get_close_matches(m, [n for n in names.values() if n], n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise UserValueError(
                    f"{type(model).__name__} has no submodule {m!r}{hint} (expected a name from model.named_modules())"
                ) from None
            out[m] = mod
        elif isinstance(m, torch.nn.Module):
            if m not in names:
                raise UserValueError(f"module {type(m).__name__} is not part of the model")
            out[names[m]] = m
        else:
            raise UserTypeError(f"modules must be names or nn.Modules, got {type(m).__name__}")
    if not out:
        raise UserValueError("modules is empty: name at least one module")
    return out


def _full(t: torch.Tensor) -> torch.Tensor:
    """A sharded DTensor (FSDP2 / tensor parallel) gathered to the full tensor (a collective)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def classifier_of(module: torch.nn.Module) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(weight (C, d), bias (C,) or None) of a linear head, or (None, None) for other modules."""
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor) and w.dim() == 2 and isinstance(module, torch.nn.Linear):
        if w.device.type == "meta":
            return _offloaded_classifier(module)
        b = getattr(module, "bias", None)
        return _full(w.detach()), (_full(b.detach()) if isinstance(b, torch.Tensor) else None)
    return None, None


def _offloaded_classifier(module: torch.nn.Module):
    """(W, b) of a head whose weights accelerate offloaded (device map / cpu or disk offload: 'meta'
    outside forward), read onto its execution device with ``accelerate.utils.align_module_device``."""
    from accelerate.utils import align_module_device

    with align_module_device(module):
        w, b = module.weight, getattr(module, "bias", None)
        if w.device.type == "meta":
            raise UserValueError(
                f"the weights of the head {type(module).__name__} are on the meta device and accelerate has no "
                "offloaded copy of them: load the model with its weights"
            )
        return w.detach().clone(), (b.detach().clone() if isinstance(b, torch.Tensor) else None)


# ---------------------------------------------------------------------------- the head reader
# How NC3 / NC4 / the class count read a classifier that sharding may have cut. Every case gathers
# outside forward and is a collective: every process must call ``read_head`` for the same module.
#
# - FSDP2 / tensor parallel: the weight is a DTensor; ``full_tensor()`` (in ``classifier_of``).
# - FSDP1 (``use_orig_params=True`` leaves each original parameter a flat 1-D view of this rank's
#   shard, possibly empty): ``FSDP.summon_full_params(unit, recurse=False, writeback=False)`` on the
#   innermost FSDP unit of the *wrapped* model that contains the head (the unit that owns its
#   parameters), else the root with ``recurse=True``.
# - DeepSpeed ZeRO-3 (a partitioned parameter has shape (0,) and ``ds_shape`` / ``ds_status``):
#   ``deepspeed.zero.GatheredParameters`` on the head's parameters (tied ones once).
# - anything else: ``classifier_of`` (plain tensors; offloaded heads are handled there).
# The result is checked: a 2-D (C, d) weight with data (not on the meta device); a head that cannot be
# read is a ValueError naming the case, never a missing NC3 key.


def _is_zero3(p) -> bool:
    return isinstance(p, torch.Tensor) and hasattr(p, "ds_shape") and hasattr(p, "ds_status")


def _zero3_gathered(params):
    """``deepspeed.zero.GatheredParameters`` (a module-level seam so that tests can fake it)."""
    try:
        import deepspeed  # ``deepspeed.zero`` is an attribute (deepspeed.runtime.zero), not an importable module

        GatheredParameters = deepspeed.zero.GatheredParameters
    except ImportError as e:  # pragma: no cover - a ds_shape parameter without deepspeed
        raise UserValueError(
            "the head's parameters are partitioned by DeepSpeed ZeRO-3 (they have ds_shape) but deepspeed "
            "cannot be imported to gather them"
        ) from e
    return GatheredParameters(params, modifier_rank=None)


def _fsdp1_classes():
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    except ImportError:  # pragma: no cover
        return None
    return FSDP


def _fsdp1_unit(wrapped, module):
    """The innermost FSDP1 unit of ``wrapped`` that contains ``module``, or None."""
    FSDP = _fsdp1_classes()
    if FSDP is None or not isinstance(wrapped, torch.nn.Module):
        return None
    best, best_size = None, None
    for unit in wrapped.modules():
        if isinstance(unit, FSDP) and any(m is module for m in unit.modules()):
            size = sum(1 for _ in unit.modules())
            if best is None or size < best_size:
                best, best_size = unit, size
    return best


def is_sharded(*models) -> bool:
    """Whether a model's parameters are sharded across processes (FSDP1/2, tensor parallel, ZeRO-3):
    its forwards are collectives, so every process must run the same number of them."""
    FSDP = _fsdp1_classes()
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch < 2.6
        FSDPModule = ()
    for model in models:
        if not isinstance(model, torch.nn.Module):
            continue
        for m in model.modules():
            if (FSDP is not None and isinstance(m, FSDP)) or (FSDPModule and isinstance(m, FSDPModule)):
                return True
        for p in model.parameters():
            if hasattr(p, "full_tensor") or _is_zero3(p):
                return True
    return False


def _check_head(name, w, b, case):
    if w.dim() != 2:
        raise UserValueError(
            f"cannot read the classifier {name!r} ({case}): its weight has shape {tuple(w.shape)}, not (C, d)"
            + (
                "; a flat or empty FSDP1 shard: pass the FSDP-wrapped model (the Trainer's model_wrapped), "
                "not the unwrapped one"
                if w.dim() == 1
                else ""
            )
        )
    if w.is_meta or (b is not None and b.is_meta):
        raise UserValueError(
            f"cannot read the classifier {name!r} ({case}): its weight is on the meta device (offloaded or "
            "not loaded); load the model with its weights or let accelerate place them"
        )
    return w, b


def read_head(model, name, module, *, wrapped=None):
    """The whole classifier ``(W (C, d), b (C,) or None)`` of ``module`` on every process, or ``(None, None)``
    when ``module`` is not a linear layer. ``wrapped`` is the model as the caller holds it (FSDP1's
    root wrapper included); default ``model``. A collective for sharded models (see above); gathered
    weights are copies, plain ones the parameters themselves (detached)."""
    if not isinstance(module, torch.nn.Linear):
        return None, None
    wrapped = model if wrapped is None else wrapped
    w = getattr(module, "weight", None)
    b = getattr(module, "bias", None)
    b = b if isinstance(b, torch.Tensor) else None
    if not isinstance(w, torch.Tensor):
        return None, None
    if _is_zero3(w) or (b is not None and _is_zero3(b)):
        params = list({id(p): p for p in (w, b) if p is not None}.values())  # tied: once
        with _zero3_gathered(params):
            w2 = w.detach().clone()
            b2 = None if b is None else b.detach().clone()
        return _check_head(name, w2, b2, "DeepSpeed ZeRO-3")
    if not hasattr(w, "full_tensor") and w.dim() != 2:  # an FSDP1 flat shard (use_orig_params=True)
        FSDP = _fsdp1_classes()
        unit = _fsdp1_unit(wrapped, module)
        if unit is None:
            return _check_head(name, w.detach(), None if b is None else b.detach(), "not wrapped by FSDP")
        with FSDP.summon_full_params(unit, recurse=False, writeback=False):
            w2, b2 = module.weight, module.bias
            whole = w2.dim() == 2
            if whole:
                w2 = w2.detach().clone()
                b2 = None if b2 is None else b2.detach().clone()
        if not whole:  # the head's parameters belong to another unit (tied weights): gather everything
            root = next(m for m in wrapped.modules() if isinstance(m, FSDP))
            with FSDP.summon_full_params(root, recurse=True, writeback=False):
                w2, b2 = module.weight.detach().clone(), None if module.bias is None else module.bias.detach().clone()
        return _check_head(name, w2, b2, "FSDP1")
    w2, b2 = classifier_of(module)
    if w2 is None:
        return None, None
    return _check_head(name, w2, b2, "tensor parallel / FSDP2" if hasattr(w, "full_tensor") else "plain")


def head_num_classes(module) -> Optional[int]:
    """The number of classes of a head from what sharding leaves whole (``out_features``,
    ``num_embeddings``, ZeRO-3's ``ds_shape``), with no collective; None if it does not say."""
    if isinstance(module, torch.nn.Linear):
        return int(module.out_features)
    if isinstance(module, torch.nn.Embedding):
        return int(module.num_embeddings)
    w = getattr(module, "weight", None)
    if _is_zero3(w):
        return int(w.ds_shape[0])
    if isinstance(w, torch.Tensor) and w.dim() == 2 and not w.is_meta:
        return int(w.shape[0])
    return None


def head_weights(model, name, module, stats: CollapseStatistics, *, wrapped=None):
    """Classifier (W, b) of ``module`` for NC3/NC4, or (None, None) when it is not a classifier of
    the statistics' C classes (an inner ``nn.Linear`` measured for layer-wise NC). Read with
    :func:`read_head` (a collective for sharded models: every process calls it).

    The output embeddings must match the statistics: a mismatch means statistics of another model.
    """
    w, b = read_head(model, name, module, wrapped=wrapped)
    if w is None:
        return None, None
    if tuple(w.shape) == (stats.num_classes, stats.dim):
        return w, b
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if module is head or w.shape[0] == stats.num_classes:
        raise UserValueError(
            f"statistics of shape (C={stats.num_classes}, d={stats.dim}) do not match the classifier {name!r} "
            f"of shape {tuple(w.shape)}: they were collected on another model or module"
        )
    return None, None


def _num_classes(model, modules: Mapping[str, torch.nn.Module], num_classes: Optional[int]) -> int:
    """From what sharding leaves whole (no collective; equal on every process): the measured Linear's
    ``out_features``, the output embeddings', ZeRO-3's ``ds_shape``, then the config."""
    if num_classes is not None:
        return int(num_classes)
    for mod in modules.values():
        if isinstance(mod, torch.nn.Linear):
            return int(mod.out_features)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        c = head_num_classes(head)
        if c:
            return c
    cfg = getattr(model, "config", None)
    for attr in ("num_labels", "vocab_size"):
        if cfg is not None and getattr(cfg, attr, None):
            return int(getattr(cfg, attr))
    raise UserValueError("cannot tell the number of classes: pass num_classes=")


# ---------------------------------------------------------------------------- labels
def align_labels(
    features: torch.Tensor,
    batch: Mapping,
    task: str,
    *,
    ignore_index: int = -100,
    pad_token_id: Optional[int] = None,
    pooling: str = "last",
):
    """Return ``(features, labels)`` with labels of shape ``features.shape[:-1]`` (see module doc)."""
    labels = batch.get("labels")
    input_ids = batch.get("input_ids")
    mask = batch.get("attention_mask")
    if task == "causal_lm":
        src = labels if labels is not None else input_ids
        if src is None:
            raise UserValueError("causal_lm collection needs 'labels' or 'input_ids' in the batch")
        if src.dim() != 2 or tuple(src.shape) != tuple(features.shape[:2]):
            raise UserValueError(
                f"causal_lm: features {tuple(features.shape)} do not line up with labels/input_ids "
                f"{tuple(src.shape)}; expected features (B, T, d) for (B, T) tokens"
            )
        y = torch.full_like(src, ignore_index)  # (B, T)
        y[:, :-1] = src[:, 1:]  # position t predicts token t+1
        if mask is not None:
            m = mask.to(torch.bool)
            valid = torch.zeros_like(m)
            valid[:, :-1] = m[:, :-1] & m[:, 1:]
            y = y.masked_fill(~valid, ignore_index)
        return features, y
    if labels is None:
        raise UserValueError(f"{task} collection needs 'labels' in the batch")
    if task == "token_classification":
        if tuple(labels.shape) != tuple(features.shape[:-1]):
            raise UserValueError(
                f"token_classification: labels {tuple(labels.shape)} do not match features {tuple(features.shape)}"
            )
        return features, labels
    if task == "sequence_classification":
        labels = labels.reshape(-1)
        if features.dim() == 2:
            return features, labels
        if features.dim() != 3 or features.shape[0] != labels.shape[0]:
            raise UserValueError(
                f"sequence_classification: features {tuple(features.shape)} do not match {labels.shape[0]} labels"
            )
        B, T = features.shape[:2]
        if pooling == "first":
            pos = torch.zeros(B, dtype=torch.long, device=features.device)
        elif pooling == "last":
            if input_ids is not None and pad_token_id is not None:
                non_pad = (input_ids != pad_token_id).to(torch.long)
            elif mask is not None:
                non_pad = mask.to(torch.long)
            else:
                non_pad = torch.ones(B, T, dtype=torch.long, device=features.device)
            pos = (torch.arange(T, device=non_pad.device) * non_pad).argmax(-1).to(features.device)
        else:
            raise UserValueError(f"pooling must be 'last' or 'first', got {pooling!r}")
        return features[torch.arange(B, device=features.device), pos], labels  # (B, d), (B,)
    raise UserValueError(f"task must be one of {TASKS}, got {task!r}")


def _keep_real_samples(features: torch.Tensor, labels: torch.Tensor):
    """Drop the samples Accelerate's ``even_batches`` repeated to pad the last batch.

    Same rule as ``Accelerator.gather_for_metrics``: on the last batch of a prepared dataloader the
    gathered batch (rank 0's rows, then rank 1's, ...) is cut to ``remainder`` rows.
    """
    rank, world = rank_and_world()
    if world == 1:
        return features, labels
    try:
        from accelerate.state import GradientState

        gs = GradientState()
        if not (gs.in_dataloader and gs.end_of_dataloader) or gs.remainder <= 0:
            return features, labels
        remainder = gs.remainder
    except Exception:  # accelerate missing or not initialised: nothing was padded by it
        return features, labels
    B = features.shape[0]
    keep = max(0, min(B, remainder - rank * B))
    return features[:keep], labels[:keep]


# ---------------------------------------------------------------------------- hooks
def _in_backward() -> bool:
    """Inside autograd's backward: activation checkpointing re-running a forward to recompute it. Its
    hooks must not count the tokens a second time. (Under the passes' ``no_grad`` and the Trainer's
    eval loop nothing is recomputed: checkpointing recomputes only in backward.)"""
    try:
        return torch._C._current_graph_task_id() != -1
    except AttributeError:  # pragma: no cover - older torch
        return False


class StatisticsSink:
    """Folds each batch's (features, labels) into ``statistics[name]`` (pass 1; created lazily, d from the
    first batch). Checks of labels and finiteness are deferred to :meth:`check` (no host sync per batch)."""

    def __init__(
        self, num_classes: int, *, covariance: bool = False, ignore_index: int = -100, statistics=None, device=None
    ):
        self.num_classes, self.covariance, self.ignore_index = num_classes, covariance, ignore_index
        self.device = device  # None: each module's statistics follow its features' device
        self.statistics: dict[str, CollapseStatistics] = dict(statistics or {})

    def update(self, name, module, h, y, logits) -> None:
        st = self.statistics.get(name)
        if st is None:
            st = CollapseStatistics(
                self.num_classes,
                h.shape[-1],
                covariance=self.covariance,
                ignore_index=self.ignore_index,
                device=self.device,
            )
            self.statistics[name] = st
        st.defer_checks = True  # checked by check() / finish_pass, not once per batch
        st.update(h, y)

    def check(self) -> None:
        for st in self.statistics.values():
            st.check()


class NC4Sink:
    """Counts NC4 agreement / NCC accuracy per module (pass 2) into ``counters[name]``
    (``NC4Counter``s built by the caller from the pass-1 statistics)."""

    wants_logits = True

    def __init__(self, counters: Mapping[str, NC4Counter]):
        self.counters: dict[str, NC4Counter] = dict(counters)

    def update(self, name, module, h, y, logits) -> None:
        if name in self.counters:
            self.counters[name].update(h, y, logits)

    def check(self) -> None:
        return None


class FeatureHooks:
    """Installs the hooks and feeds each batch's features and labels into one sink.

    One forward pre-hook on the top model reads the batch's ``labels`` / ``input_ids`` /
    ``attention_mask``; one forward hook per measured module takes the module's *input* (its feature),
    aligns labels (``task``), drops Accelerate's padding duplicates, cuts at the token budget
    (``remaining``) and hands ``(name, module, h (N, d), y (N,), logits)`` to ``sink`` (a
    :class:`StatisticsSink` or an :class:`NC4Sink`). Hooks act only while the model is in eval mode and
    ``enabled`` is true, and never keep features beyond the current batch. ``batch_tokens`` counts the
    labelled tokens of the first module (a device tensor; no host sync).
    """

    def __init__(
        self,
        model,
        modules: ModulesArg = None,
        sink=None,
        *,
        task: str = "causal_lm",
        pooling: str = "last",
        num_classes: Optional[int] = None,
        drop_padded_duplicates: bool = True,
    ):
        self.model = unwrap_model(model)
        self.modules = resolve_modules(self.model, modules)
        self.task, self.pooling = task, pooling
        self.num_classes = _num_classes(self.model, self.modules, num_classes)
        cfg = getattr(self.model, "config", None)
        self.pad_token_id = getattr(cfg, "pad_token_id", None)
        self.sink = sink
        self.remaining = None  # labelled tokens left in the budget: an int or a device tensor
        self.drop_padded_duplicates = drop_padded_duplicates
        self.enabled = True
        self._batch: Optional[dict] = None
        self._handles = []
        self.batch_tokens = 0

    @property
    def ignore_index(self) -> int:
        return getattr(self.sink, "ignore_index", -100)

    # -- install / remove
    def __enter__(self) -> FeatureHooks:
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def install(self) -> None:
        if self._handles:
            return
        self._handles.append(self.model.register_forward_pre_hook(self._top_hook, with_kwargs=True))
        self._handles.append(self.model.register_forward_hook(self._top_done))
        for i, (name, mod) in enumerate(self.modules.items()):
            self._handles.append(mod.register_forward_hook(self._make_hook(name, i == 0), with_kwargs=True))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._batch = None

    def check(self) -> None:
        """Raise the label / finiteness errors the sink deferred (one host sync per module)."""
        if self.sink is not None:
            self.sink.check()

    # -- hooks
    def _active(self) -> bool:
        return self.enabled and self.sink is not None and not self.model.training and not _in_backward()

    def _top_hook(self, module, args, kwargs):
        if not self._active():
            return None
        batch = {k: kwargs.get(k) for k in ("labels", "input_ids", "attention_mask")}
        if batch["input_ids"] is None and args and isinstance(args[0], torch.Tensor):
            batch["input_ids"] = args[0]
        self._batch = batch
        return None

    def _top_done(self, module, args, output):
        self._batch = None  # labels belong to this forward only
        return None

    def _features_labels(self, args, kwargs):
        h = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
        if not isinstance(h, torch.Tensor):
            raise UserValueError("the hooked module received no tensor input")
        h = _full(h)  # tensor parallel: a DTensor input (replicated: no communication; every TP rank is here)
        h, y = align_labels(
            h.detach(),
            self._batch,
            self.task,
            ignore_index=self.ignore_index,
            pad_token_id=self.pad_token_id,
            pooling=self.pooling,
        )
        if self.drop_padded_duplicates:
            h, y = _keep_real_samples(h, y)
        return h, y.to(h.device)

    def _logits(self, module, output, y):
        """The model's logits when the hooked module is the linear head (NC4 then needs no copy of W)."""
        if not getattr(self.sink, "wants_logits", False) or not isinstance(module, torch.nn.Linear):
            return None
        if not isinstance(output, torch.Tensor) or output.shape[-1] != self.num_classes:
            return None
        if self.task == "sequence_classification" and output.dim() == 3:
            return None  # pooled after the head: the weights predict instead
        logits = _full(output.detach())
        if self.drop_padded_duplicates:
            logits, _ = _keep_real_samples(logits, y)
        return logits.reshape(-1, logits.shape[-1])

    def _budget(self, h, y, first):
        """Cut the batch at the token budget (in order) and count tokens on the first module."""
        if self.remaining is None and not first:
            return h, y
        y = y.reshape(-1)
        h = h.reshape(-1, h.shape[-1])
        valid = y != self.ignore_index  # (N,)
        if self.remaining is not None:  # an int or a device tensor: masked either way, no host sync
            over = valid.cumsum(0) > self.remaining
            y = y.masked_fill(over, self.ignore_index)
            valid = valid & ~over
        if first:  # a device tensor: read by the pass every N batches, not here
            self.batch_tokens = self.batch_tokens + valid.sum()
        return h, y

    def _make_hook(self, name, first):
        def hook(module, args, kwargs, output):
            if not self._active() or self._batch is None:  # not inside the model's own forward
                return None
            h, y = self._features_labels(args, kwargs)
            logits = self._logits(module, output, y)
            h, y = self._budget(h, y, first)
            self.sink.update(name, module, h, y, logits)
            return None

        return hook
