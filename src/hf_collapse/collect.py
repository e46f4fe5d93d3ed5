"""Collect class statistics from a model's forward passes with hooks.

The features of NC are the classifier's input. ``FeatureCollector`` captures them with forward
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

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

import torch

from .checkpoint import fingerprint, read_checkpoint, write_checkpoint
from .distributed import dist_info, reducing
from .measures import MEASURE_KEYS, CollapseResult, measure_collapse
from .statistics import CollapseStatistics

logger = logging.getLogger(__name__)

TASKS = ("causal_lm", "token_classification", "sequence_classification")
ModulesArg = Union[None, str, torch.nn.Module, Sequence[Union[str, torch.nn.Module]]]


# ---------------------------------------------------------------------------- model helpers
def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP / DataParallel / FSDP / DeepSpeed / torch.compile wrappers (Accelerate's unwrap)."""
    if isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a loaded torch.nn.Module, got the path or name {os.fspath(model)!r}: "
                        "load it first, e.g. AutoModelForCausalLM.from_pretrained(...)")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
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
            raise ValueError(
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
                raise ValueError(
                    f"{type(model).__name__} has no submodule {m!r}; expected a name from model.named_modules()"
                ) from None
            out[m] = mod
        elif isinstance(m, torch.nn.Module):
            if m not in names:
                raise ValueError(f"module {type(m).__name__} is not part of the model")
            out[names[m]] = m
        else:
            raise TypeError(f"modules must be names or nn.Modules, got {type(m).__name__}")
    if not out:
        raise ValueError("modules is empty: name at least one module")
    return out


def _full(t: torch.Tensor) -> torch.Tensor:
    """A sharded DTensor (FSDP2 / tensor parallel) gathered to the full tensor (a collective)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def classifier_of(module: torch.nn.Module) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(weight (C, d), bias (C,) or None) of a linear head, or (None, None) for other modules."""
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor) and w.dim() == 2 and isinstance(module, torch.nn.Linear):
        b = getattr(module, "bias", None)
        return _full(w.detach()), (_full(b.detach()) if isinstance(b, torch.Tensor) else None)
    return None, None


@contextlib.contextmanager
def full_parameters(model):
    """Inside: the parameters of an FSDP(1)-wrapped ``model`` are whole on every rank (collective;
    every process must enter). A no-op for other models. Untested here (no GPU, FSDP needs one)."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    except ImportError:  # pragma: no cover
        FSDP = None
    if FSDP is not None and isinstance(model, FSDP):
        with FSDP.summon_full_params(model, writeback=False):
            yield
    else:
        yield


def head_weights(model, name, module, stats: CollapseStatistics):
    """Classifier (W, b) of ``module`` for NC3/NC4, or (None, None) when it is not a classifier of
    the statistics' C classes (an inner ``nn.Linear`` measured for layer-wise NC).

    The output embeddings must match the statistics: a mismatch means statistics of another model.
    """
    w, b = classifier_of(module)
    if w is None:
        return None, None
    if tuple(w.shape) == (stats.num_classes, stats.dim):
        return w, b
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if module is head or w.shape[0] == stats.num_classes:
        raise ValueError(
            f"statistics of shape (C={stats.num_classes}, d={stats.dim}) do not match the classifier {name!r} "
            f"of shape {tuple(w.shape)}: they were collected on another model or module"
        )
    return None, None


def _num_classes(model, modules: Mapping[str, torch.nn.Module], num_classes: Optional[int]) -> int:
    if num_classes is not None:
        return int(num_classes)
    for mod in modules.values():
        w, _ = classifier_of(mod)
        if w is not None:
            return int(w.shape[0])
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    cfg = getattr(model, "config", None)
    for attr in ("num_labels", "vocab_size"):
        if cfg is not None and getattr(cfg, attr, None):
            return int(getattr(cfg, attr))
    raise ValueError("cannot tell the number of classes: pass num_classes=")


# ---------------------------------------------------------------------------- labels
def align_labels(features: torch.Tensor, batch: Mapping, task: str, *, ignore_index: int = -100,
                 pad_token_id: Optional[int] = None, pooling: str = "last"):
    """Return ``(features, labels)`` with labels of shape ``features.shape[:-1]`` (see module doc)."""
    labels = batch.get("labels")
    input_ids = batch.get("input_ids")
    mask = batch.get("attention_mask")
    if task == "causal_lm":
        src = labels if labels is not None else input_ids
        if src is None:
            raise ValueError("causal_lm collection needs 'labels' or 'input_ids' in the batch")
        if src.dim() != 2 or tuple(src.shape) != tuple(features.shape[:2]):
            raise ValueError(
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
        raise ValueError(f"{task} collection needs 'labels' in the batch")
    if task == "token_classification":
        if tuple(labels.shape) != tuple(features.shape[:-1]):
            raise ValueError(f"token_classification: labels {tuple(labels.shape)} do not match features "
                             f"{tuple(features.shape)}")
        return features, labels
    if task == "sequence_classification":
        labels = labels.reshape(-1)
        if features.dim() == 2:
            return features, labels
        if features.dim() != 3 or features.shape[0] != labels.shape[0]:
            raise ValueError(f"sequence_classification: features {tuple(features.shape)} do not match "
                             f"{labels.shape[0]} labels")
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
            raise ValueError(f"pooling must be 'last' or 'first', got {pooling!r}")
        return features[torch.arange(B, device=features.device), pos], labels  # (B, d), (B,)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def _keep_real_samples(features: torch.Tensor, labels: torch.Tensor):
    """Drop the samples Accelerate's ``even_batches`` repeated to pad the last batch.

    Same rule as ``Accelerator.gather_for_metrics``: on the last batch of a prepared dataloader the
    gathered batch (rank 0's rows, then rank 1's, ...) is cut to ``remainder`` rows.
    """
    rank, world = dist_info()
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


# ---------------------------------------------------------------------------- NC4 counter
class NC4Counter:
    """Streaming NC4: counts of (linear prediction == nearest class centre), (NCC == label), samples.

    NCC(h) = argmin_c ||h - mu_c|| over present classes, computed as argmax of <h - mu_bar, M_c> -
    ||M_c||^2 / 2 with M_c = mu_c - mu_bar (paper eq. 12). The linear prediction is the argmax of the
    logits the model computed itself (forward hook output) when the hooked module is the head, so it
    is exactly what the model predicts with; ``weights``/``bias`` are used only if no logits are given.
    """

    def __init__(self, stats: CollapseStatistics, weights=None, bias=None, dtype=torch.float32):
        dev = stats.device
        self.idx = stats.present.nonzero().squeeze(1)  # (K,)
        mu = stats.means[self.idx]  # (K, d)
        self.mu_bar = mu.mean(0)  # (d,)
        self.dtype = dtype
        self.Mc = (mu - self.mu_bar).to(dtype)  # (K, d)
        self.half_sq = 0.5 * self.Mc.pow(2).sum(1)  # (K,)
        self.W = None if weights is None else weights.detach().to(dev, dtype)
        self.b = None if bias is None else bias.detach().to(dev, dtype)
        self.num_classes, self.ignore_index = stats.num_classes, stats.ignore_index
        self.counts = torch.zeros(3, dtype=torch.float64)  # agree, correct, n

    @property
    def has_linear(self) -> bool:
        return self.W is not None or self._saw_logits

    _saw_logits = False

    @torch.no_grad()
    def update(self, h: torch.Tensor, y: torch.Tensor, logits: Optional[torch.Tensor] = None) -> None:
        h, y = h.reshape(-1, h.shape[-1]), y.reshape(-1)
        keep = y != self.ignore_index
        if logits is not None:
            logits = logits.reshape(-1, logits.shape[-1])[keep]
        h, y = h[keep], y[keep]
        if y.numel() == 0:
            return
        if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
            raise ValueError(f"NC4 labels must lie in [0, {self.num_classes}) or equal {self.ignore_index}")
        dev = self.Mc.device
        hc = (h.to(dev, torch.float64) - self.mu_bar).to(self.dtype)  # (N, d)
        ncc = self.idx[torch.addmm(self.half_sq, hc, self.Mc.T, alpha=-1.0).argmin(1)]  # (N,)
        y = y.to(dev)
        if logits is not None:
            self._saw_logits = True
            lin = logits.argmax(-1).to(dev)
        elif self.W is not None:
            z = h.to(dev, self.dtype) @ self.W.T  # (N, C)
            if self.b is not None:
                z += self.b
            lin = z.argmax(1)
        else:
            lin = None
        agree = int((lin == ncc).sum()) if lin is not None else 0
        self.counts += torch.tensor([agree, int((ncc == y).sum()), y.numel()], dtype=torch.float64)

    def reduce(self) -> "NC4Counter":
        import torch.distributed as dist

        if reducing():
            t = self.counts.to(CollapseStatistics._comm_device(None))
            dist.all_reduce(t)
            self.counts = t.cpu()
            flag = torch.tensor([float(self._saw_logits)], device=t.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self._saw_logits = bool(flag.item())
        return self

    def values(self) -> dict[str, float]:
        agree, correct, n = self.counts.tolist()
        if n == 0:
            raise ValueError("the NC4 data hold no labelled sample")
        out = {"ncc_accuracy": correct / n}
        if self.has_linear:
            out["nc4_agreement"] = agree / n
        return out


# ---------------------------------------------------------------------------- hooks
class FeatureCollector:
    """Context manager that installs the hooks and feeds each batch into per-module accumulators.

    ``mode="stats"``: pre-hooks update ``self.statistics[name]`` (created lazily, d from the first
    batch). ``mode="nc4"``: forward hooks update ``self.nc4[name]`` (``NC4Counter``s built by the
    caller). Hooks run only while the model is in eval mode and ``self.enabled`` is true, and never
    keep features beyond the current batch. ``remaining`` (labelled tokens left in the budget) cuts
    the last batch exactly in a single process.
    """

    def __init__(self, model, modules: ModulesArg = None, *, task="causal_lm", num_classes=None,
                 mode="stats", covariance=False, ignore_index=-100, pooling="last", statistics=None,
                 nc4=None, remaining: Optional[int] = None, drop_padded_duplicates=True):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if mode not in ("stats", "nc4"):
            raise ValueError(f"mode must be 'stats' or 'nc4', got {mode!r}")
        self.model = unwrap_model(model)
        self.modules = resolve_modules(self.model, modules)
        self.task, self.mode, self.pooling = task, mode, pooling
        self.num_classes = _num_classes(self.model, self.modules, num_classes)
        self.covariance, self.ignore_index = covariance, ignore_index
        cfg = getattr(self.model, "config", None)
        self.pad_token_id = getattr(cfg, "pad_token_id", None)
        self.statistics: dict[str, CollapseStatistics] = dict(statistics or {})
        self.nc4: dict[str, NC4Counter] = dict(nc4 or {})
        self.remaining = remaining
        self.drop_padded_duplicates = drop_padded_duplicates
        self.enabled = True
        self._batch: Optional[dict] = None
        self._handles = []
        self.batch_tokens = 0  # labelled tokens seen by the first module in the last batch

    # -- install / remove
    def __enter__(self) -> "FeatureCollector":
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
            if self.mode == "stats":
                h = mod.register_forward_pre_hook(self._make_pre_hook(name, i == 0), with_kwargs=True)
            else:
                h = mod.register_forward_hook(self._make_post_hook(name, i == 0), with_kwargs=True)
            self._handles.append(h)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._batch = None

    # -- hooks
    def _active(self) -> bool:
        return self.enabled and not self.model.training

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
            raise ValueError("the hooked module received no tensor input")
        h, y = align_labels(h.detach(), self._batch, self.task, ignore_index=self.ignore_index,
                            pad_token_id=self.pad_token_id, pooling=self.pooling)
        if self.drop_padded_duplicates:
            h, y = _keep_real_samples(h, y)
        return h, y.to(h.device)

    def _budget(self, h, y, first):
        """Cut the batch at the token budget (in order) and count tokens on the first module."""
        if self.remaining is None and not first:
            return h, y
        y = y.reshape(-1)
        h = h.reshape(-1, h.shape[-1])
        valid = y != self.ignore_index
        if self.remaining is not None:
            over = valid.cumsum(0) > self.remaining
            if bool(over.any()):
                y = y.masked_fill(over, self.ignore_index)
                valid = valid & ~over
        if first:
            self.batch_tokens += int(valid.sum())
        return h, y

    def _make_pre_hook(self, name, first):
        def hook(module, args, kwargs):
            if not self._active() or self._batch is None:  # not inside the model's own forward
                return None
            h, y = self._features_labels(args, kwargs)
            h, y = self._budget(h, y, first)
            st = self.statistics.get(name)
            if st is None:
                st = CollapseStatistics(self.num_classes, h.shape[-1], covariance=self.covariance,
                                        ignore_index=self.ignore_index)
                self.statistics[name] = st
            st.update(h, y)
            return None
        return hook

    def _make_post_hook(self, name, first):
        def hook(module, args, kwargs, output):
            if not self._active() or name not in self.nc4 or self._batch is None:
                return None
            h, y = self._features_labels(args, kwargs)
            # the output is the model's logits only when the hooked module is the linear head
            is_head = isinstance(module, torch.nn.Linear)
            logits = output if is_head and isinstance(output, torch.Tensor) and output.shape[-1] == self.num_classes \
                else None
            if logits is not None and self.task == "sequence_classification" and logits.dim() == 3:
                logits = None  # pooled after the head: use the weights instead
            if logits is not None:
                if self.drop_padded_duplicates:
                    logits, _ = _keep_real_samples(logits.detach(), y)
                logits = logits.reshape(-1, logits.shape[-1])
            h, y = self._budget(h, y, first)
            self.nc4[name].update(h, y, logits)
            return None
        return hook


# ---------------------------------------------------------------------------- passes
def _move(batch, device):
    if isinstance(batch, Mapping):
        return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    raise TypeError(f"batches must be dicts of tensors (input_ids, attention_mask, labels), got {type(batch).__name__}")


def _model_device(model) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _global_sum(x: int) -> int:
    import torch.distributed as dist

    if reducing():
        t = torch.tensor([float(x)], device=CollapseStatistics._comm_device(None))
        dist.all_reduce(t)
        return int(t.item())
    return x


def _run_pass(model, dataloader, collector: FeatureCollector, *, max_tokens, max_batches, progress, desc,
              skip_batches=0, on_batch=None, tokens0=0):
    """Drive ``model`` over ``dataloader`` under no_grad + eval mode; hooks do the accumulating."""
    inner = collector.model
    was_training = inner.training
    device = _model_device(inner)
    rank, world = dist_info()
    tokens = tokens0
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        total = None
        try:
            total = len(dataloader)
        except TypeError:
            pass
        if max_batches is not None:
            total = min(total, max_batches) if total is not None else max_batches
        bar = tqdm(total=total, desc=desc, unit="batch", initial=skip_batches)
    inner.eval()
    collector.install()
    batches = 0
    try:
        with torch.no_grad():
            for batch in dataloader:
                if max_batches is not None and batches >= max_batches:
                    break
                if batches < skip_batches:
                    batches += 1
                    continue
                if max_tokens is not None and world == 1:
                    collector.remaining = max_tokens - tokens
                collector.batch_tokens = 0
                model(**_move(batch, device))
                batches += 1
                tokens += _global_sum(collector.batch_tokens) if max_tokens is not None else collector.batch_tokens
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(tokens=tokens)
                if on_batch is not None:
                    on_batch(batches, tokens)
                if max_tokens is not None and tokens >= max_tokens:
                    break
    finally:
        collector.remove()
        collector.remaining = None
        if bar is not None:
            bar.close()
        inner.train(was_training)
        if hasattr(dataloader, "gradient_state") and hasattr(dataloader, "end"):
            # an Accelerate dataloader left early (budget) stays registered as the active one
            dataloader.end()
    return batches, tokens


# ---------------------------------------------------------------------------- public API
def collect_statistics(model, dataloader, *, modules: ModulesArg = None, task: str = "causal_lm",
                       num_classes: Optional[int] = None, max_tokens: Optional[int] = None,
                       max_batches: Optional[int] = None, accelerator=None, progress: bool = True,
                       checkpoint_path=None, checkpoint_every: Optional[int] = None, covariance: bool = False,
                       pooling: str = "last", ignore_index: int = -100, reduce: bool = True,
                       data_fingerprint: Optional[str] = None):
    """Pass 1: accumulate per-class statistics of the classifier inputs over ``dataloader``.

    Args:
        model: a transformers model (or any module whose forward takes the batch as keywords);
            DDP/FSDP/compiled wrappers are unwrapped. Run in eval mode under ``torch.no_grad``.
        dataloader: yields dicts with ``input_ids`` and/or ``labels`` (+ ``attention_mask``). Under
            Accelerate pass the prepared dataloader (each process sees its shard).
        modules: ``None`` (output embeddings), a module name, or a list of names for layer-wise NC.
        task: ``"causal_lm"``, ``"token_classification"`` or ``"sequence_classification"``.
        max_tokens: stop once this many labelled tokens were accumulated (summed over processes).
            In one process the last batch is cut exactly; with several, whole last batches count.
        max_batches: stop after this many batches (per process).
        accelerator: optional ``accelerate.Accelerator``; only used to check the model was prepared
            by it (the reduction uses torch.distributed directly, which Accelerate initialises).
        checkpoint_path, checkpoint_every: save the state every N batches into that folder and
            resume from it; a finished run gives the same numbers as an uninterrupted one.
        reduce: all-reduce over processes at the end (one collective).
        data_fingerprint: identifies the data for checkpoint validation (default: hash of the
            dataloader's length and first batch).

    Returns:
        ``CollapseStatistics`` for one module, or a dict name -> statistics for several.
    """
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
    if checkpoint_every is not None and checkpoint_path is None:
        raise ValueError("checkpoint_every needs checkpoint_path")
    if accelerator is not None:
        model = accelerator.unwrap_model(model)
    collector = FeatureCollector(model, modules, task=task, num_classes=num_classes, covariance=covariance,
                                 pooling=pooling, ignore_index=ignore_index)
    names = list(collector.modules)
    skip, tokens0 = 0, 0
    fp = None
    if checkpoint_path is not None:
        checkpoint_path = os.fspath(checkpoint_path)
        os.makedirs(checkpoint_path, exist_ok=True)
        extra = {"task": task, "modules": names, "max_tokens": max_tokens, "max_batches": max_batches,
                 "data": data_fingerprint, "world": dist_info()[1]}
        fp = fingerprint(collector.model, dataloader if data_fingerprint is None else None, extra=extra)
        found = read_checkpoint(checkpoint_path, fp, names, collector.num_classes)
        if found is not None:
            collector.statistics, skip, tokens0 = found
            logger.info("resuming collection from %s at batch %d (%d tokens)", checkpoint_path, skip, tokens0)

    def on_batch(batches, tokens):
        if checkpoint_every and batches % checkpoint_every == 0:
            write_checkpoint(checkpoint_path, collector.statistics, batches, tokens, fp)

    if max_tokens is None or tokens0 < max_tokens:
        _run_pass(model, dataloader, collector, max_tokens=max_tokens, max_batches=max_batches, progress=progress,
                  desc="NC statistics", skip_batches=skip, tokens0=tokens0,
                  on_batch=on_batch if checkpoint_every else None)
    stats = collector.statistics
    if reduce:
        # every process must own an accumulator for every module, even one that saw no batch
        d = {n: s.dim for n, s in stats.items()}
        for name in names:
            if name not in stats:
                dim = _agree_dim(d.get(name))
                stats[name] = CollapseStatistics(collector.num_classes, dim, covariance=covariance,
                                                 ignore_index=ignore_index)
            else:
                _agree_dim(stats[name].dim)
            stats[name].reduce()
    for name in names:
        if name not in stats or stats[name].num_tokens == 0:
            raise ValueError(
                f"no labelled token was collected at {name!r}: the data are empty, the budget is too small, "
                f"or every label is {ignore_index}/padding"
            )
    ordered = {n: stats[n] for n in names}
    return ordered[names[0]] if len(names) == 1 else ordered


def _agree_dim(dim: Optional[int]) -> int:
    """All processes learn the feature dimension (a process without batches does not know it)."""
    import torch.distributed as dist

    local = -1 if dim is None else int(dim)
    if reducing():
        t = torch.tensor([float(local)], device=CollapseStatistics._comm_device(None))
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        local = int(t.item())
    if local < 1:
        raise ValueError("no labelled token was collected: the data are empty or the budget yields nothing")
    return local


def collect_nc4(model, dataloader, statistics, *, modules: ModulesArg = None, task: str = "causal_lm",
                max_tokens: Optional[int] = None, max_batches: Optional[int] = None, dtype=torch.float32,
                progress: bool = True, pooling: str = "last", reduce: bool = True) -> dict[str, dict[str, float]]:
    """Pass 2: NC4 agreement and nearest-centre accuracy on held-out data against ``statistics``.

    ``statistics`` is what ``collect_statistics`` returned (one or a dict). Returns name ->
    ``{"nc4_agreement", "ncc_accuracy"}`` (``nc4_agreement`` only for a linear head), reduced over
    processes. Costs one extra (tokens x K x d) matmul per batch on top of a forward pass.
    """
    collector = FeatureCollector(model, modules, task=task, mode="nc4", pooling=pooling,
                                 ignore_index=_first(statistics).ignore_index)
    stats = _as_dict(statistics, list(collector.modules))
    for name, mod in collector.modules.items():
        with full_parameters(model):
            w, b = head_weights(collector.model, name, mod, stats[name])
            if task != "sequence_classification":
                w = b = None  # the head's own logits give the linear prediction: no copy of W needed
            elif w is not None:  # pooled after a per-token head: predict with a copy of W
                w, b = w.clone(), (None if b is None else b.clone())
            collector.nc4[name] = NC4Counter(stats[name], w, b, dtype=dtype)
    collector.num_classes = _first(statistics).num_classes
    _run_pass(model, dataloader, collector, max_tokens=max_tokens, max_batches=max_batches, progress=progress,
              desc="NC4")
    out = {}
    for name, counter in collector.nc4.items():
        if reduce:
            counter.reduce()
        out[name] = counter.values()
    return out


def _first(statistics):
    return statistics if isinstance(statistics, CollapseStatistics) else next(iter(statistics.values()))


def _as_dict(statistics, names) -> dict[str, CollapseStatistics]:
    if isinstance(statistics, CollapseStatistics):
        if len(names) != 1:
            raise ValueError(f"one statistics object given for {len(names)} modules")
        return {names[0]: statistics}
    missing = [n for n in names if n not in statistics]
    if missing:
        raise ValueError(f"no statistics for module(s) {missing}")
    return dict(statistics)


def layer_key(name: str) -> str:
    """Metric-key form of a module name: ``transformer.h.1`` -> ``transformer_h_1``."""
    return name.replace(".", "_").replace("/", "_")


@dataclass
class CollapseReport:
    """Statistics and measures of one measurement.

    ``statistics`` / ``result`` belong to the first (primary) module; ``all_statistics`` /
    ``results`` hold every module by name. ``metrics(prefix)`` flattens them for logging: primary
    keys as is (``nc1_cdnv``), other modules as ``<layer>_<key>`` (``transformer_h_1_nc1_cdnv``).
    """

    all_statistics: dict[str, CollapseStatistics]
    results: dict[str, CollapseResult]
    settings: dict = field(default_factory=dict)

    @property
    def primary(self) -> str:
        return next(iter(self.results))

    @property
    def statistics(self) -> CollapseStatistics:
        return self.all_statistics[self.primary]

    @property
    def result(self) -> CollapseResult:
        return self.results[self.primary]

    def metrics(self, prefix: str = "") -> dict[str, float]:
        pre = f"{prefix}_" if prefix else ""
        out = {f"{pre}{k}": v for k, v in self.result.items()}
        for name, res in self.results.items():
            if name != self.primary:
                out.update({f"{pre}{layer_key(name)}_{k}": v for k, v in res.items()})
        return out

    def table(self) -> str:
        lines = []
        for name, res in self.results.items():
            lines.append(f"[{name}]  tokens={self.all_statistics[name].num_tokens}  "
                         f"classes present={int(self.all_statistics[name].present.sum())}")
            lines.append(res.table())
        return "\n".join(lines)


def measure_statistics(model, statistics, *, modules: ModulesArg = None, nc4=None, k: float = 2.0,
                       per_class: bool = False, tile_size: int = 1024, dtype=torch.float32,
                       progress: bool = False, settings=None) -> CollapseReport:
    """Measures from collected statistics, with NC3 weights read from each hooked linear head."""
    inner = unwrap_model(model)
    mods = resolve_modules(inner, modules)
    stats = _as_dict(statistics, list(mods))
    results = {}
    for name, mod in mods.items():
        with full_parameters(model):
            w, b = head_weights(inner, name, mod, stats[name])
            # real text has coincident class means (tokens seen once in one context): an evaluation
            # in the middle of training must not crash on them, so they are left out and counted
            res = measure_collapse(stats[name], weights=w, bias=b, k=k, per_class=per_class,
                                   tile_size=tile_size, dtype=dtype, progress=progress, coincident="exclude")
        if nc4 is not None and name in nc4:
            vals = {**res, **nc4[name]}
            res = CollapseResult({key: float(vals[key]) for key in MEASURE_KEYS if key in vals},
                                 per_class=res.per_class, info=res.info)
        results[name] = res
    return CollapseReport(stats, results, dict(settings or {}))


def measure_model(model, dataloader, nc4_dataloader=None, *, modules: ModulesArg = None, task: str = "causal_lm",
                  num_classes: Optional[int] = None, k: float = 2.0, max_tokens: Optional[int] = None,
                  max_batches: Optional[int] = None, nc4_max_tokens: Optional[int] = None,
                  per_class: bool = False, tile_size: int = 1024, dtype=torch.float32, covariance: bool = False,
                  accelerator=None, progress: bool = True, checkpoint_path=None,
                  checkpoint_every: Optional[int] = None, pooling: str = "last") -> CollapseReport:
    """Both passes and the measures: statistics on ``dataloader``, NC4 on ``nc4_dataloader``.

    Returns a ``CollapseReport`` (``.statistics``, ``.result``, ``.metrics()``). The measures are
    computed on every process from the same reduced statistics.
    """
    stats = collect_statistics(model, dataloader, modules=modules, task=task, num_classes=num_classes,
                               max_tokens=max_tokens, max_batches=max_batches, accelerator=accelerator,
                               progress=progress, checkpoint_path=checkpoint_path,
                               checkpoint_every=checkpoint_every, covariance=covariance, pooling=pooling)
    nc4 = None
    if nc4_dataloader is not None:
        nc4 = collect_nc4(model, nc4_dataloader, stats, modules=modules, task=task, max_tokens=nc4_max_tokens,
                          dtype=dtype, progress=progress, pooling=pooling)
    settings = {"task": task, "k": float(k), "max_tokens": max_tokens, "nc4_max_tokens": nc4_max_tokens,
                "tile_size": tile_size, "dtype": str(dtype).replace("torch.", ""), "covariance": covariance}
    return measure_statistics(model, stats, modules=modules, nc4=nc4, k=k, per_class=per_class,
                              tile_size=tile_size, dtype=dtype, progress=progress, settings=settings)
