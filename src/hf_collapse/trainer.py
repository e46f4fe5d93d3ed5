"""Neural collapse at every evaluation of a ``transformers.Trainer``.

``CollapseTrainer`` (a drop-in ``Trainer``) and ``CollapseCallback`` (for a stock ``Trainer`` or a
subclass such as TRL's) add ``eval_nc1_cdnv``, ``eval_nc4_agreement``, ... to what ``evaluate()``
returns *and* logs, reduced over the processes the Trainer distributes over, so they reach every
``report_to`` integration and ``state.log_history`` beside ``eval_loss``.

Which processes are reduced over: exactly those the Trainer itself shards the eval data over
(``trainer.accelerator.num_processes``, i.e. ``args.world_size`` / ``parallel_mode``). A process group
the Trainer does not use is ignored, with one warning: under ``accelerate launch --multi_gpu`` on a CPU
machine without ``use_cpu=True``, transformers reports ``parallel_mode != DISTRIBUTED`` and every
process trains and evaluates a full copy; each process then measures its own copy (the numbers of a
1-process run) instead of summing the copies. Pass ``use_cpu=True`` for real data-parallel training
on CPU. hf_collapse never creates or destroys the Trainer's process group: a script launched with
several processes should end with ``torch.distributed.destroy_process_group()`` (an open gloo group
at interpreter exit can abort with "terminate called without an active exception").

How the statistics are collected: the hooks of ``hf_collapse.collect`` ride the evaluation loop the
Trainer runs anyway (no extra forward pass), counting the samples ``gather_for_metrics`` keeps
(Accelerate's ``even_batches`` padding is dropped). Then, per evaluation: one all-reduce of the
statistics, optionally an NC4 pass (held-out ``nc4_dataset``, default: the eval data again), and the
measures, computed on every process from the same reduced statistics. With
``collapse_max_tokens`` or a separate ``collapse_dataset`` the statistics come from a dedicated
pass instead.

Where the metrics enter the logs:

- ``CollapseTrainer`` overrides ``evaluation_loop`` and adds them to ``output.metrics`` before
  ``evaluate()`` calls ``Trainer.log`` (so ``metric_for_best_model="eval_nc1_cdnv"`` works too).
- ``CollapseCallback`` cannot reach ``evaluation_loop``: ``on_evaluate`` runs after ``log``. It
  computes the metrics in ``on_log`` of the evaluation (the logs dict *is* ``evaluate()``'s return
  value) and writes them into that dict and into ``state.log_history[-1]``. Callbacks run in list
  order, so integrations added before it would miss them: ``CollapseCallback(...).attach(trainer)``
  registers it *first*. Passing it in ``callbacks=[...]`` works for the return value and log
  history but not for integrations (a warning says so).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import Trainer, TrainerCallback

from .collect import CollapseReport, FeatureCollector, collect_nc4, collect_statistics, measure_statistics
from .distributed import group_size, scope_for

logger = logging.getLogger(__name__)

STATISTICS_IN_CHECKPOINT = os.path.join("collapse", "statistics.safetensors")


@dataclass
class CollapseArguments:
    """Settings of the collapse measurement (``HfArgumentParser``-ready: every field is a flag)."""

    collapse: bool = field(default=True, metadata={"help": "Measure neural collapse at every evaluation."})
    collapse_measures: Optional[list[str]] = field(
        default=None, metadata={"help": "Measure keys to log (default: all), e.g. nc1_cdnv nc4_agreement."})
    collapse_modules: Optional[list[str]] = field(
        default=None, metadata={"help": "Modules whose input is measured (default: the output embeddings). "
                                        "Several give layer-wise NC with keys like eval_<layer>_nc1_cdnv."})
    collapse_task: str = field(default="causal_lm", metadata={
        "help": "How labels align with features: causal_lm, token_classification or sequence_classification."})
    collapse_k: float = field(default=2.0, metadata={"help": "CDNV power k (paper: 2)."})
    collapse_tile_size: int = field(default=1024, metadata={"help": "Tile edge of the pairwise sweep."})
    collapse_dtype: str = field(default="float32", metadata={"help": "float32 or float64 for tiles and NC4."})
    collapse_max_tokens: Optional[int] = field(
        default=None, metadata={"help": "Token budget of the statistics pass (a dedicated pass, not the eval loop)."})
    collapse_nc4: bool = field(default=True, metadata={
        "help": "Run the NC4 pass (on nc4_dataset, else the eval data) for nc4_agreement and ncc_accuracy."})
    collapse_nc4_max_tokens: Optional[int] = field(default=None, metadata={"help": "Token budget of the NC4 pass."})
    collapse_save_statistics: bool = field(
        default=True, metadata={"help": "Save the latest statistics into each checkpoint under collapse/."})
    collapse_per_class: bool = field(default=False, metadata={"help": "Keep per-class outputs in the report."})
    collapse_covariance: bool = field(default=False, metadata={"help": "Accumulate the d x d covariance too."})
    collapse_pooling: str = field(default="last", metadata={
        "help": "sequence_classification with a per-token head: 'last' non-pad token or 'first' token."})

    def __post_init__(self):
        if self.collapse_dtype not in ("float32", "float64"):
            raise ValueError(f"collapse_dtype must be 'float32' or 'float64', got {self.collapse_dtype!r}")
        if self.collapse_task not in ("causal_lm", "token_classification", "sequence_classification"):
            raise ValueError(f"collapse_task must be causal_lm, token_classification or sequence_classification, "
                             f"got {self.collapse_task!r}")
        if isinstance(self.collapse_modules, str):
            self.collapse_modules = [self.collapse_modules]
        if isinstance(self.collapse_measures, str):
            self.collapse_measures = [self.collapse_measures]
        if self.collapse_measures:
            from .measures import MEASURE_KEYS

            bad = [m for m in self.collapse_measures if m not in MEASURE_KEYS]
            if bad:
                raise ValueError(f"unknown collapse_measures {bad}; expected keys of {list(MEASURE_KEYS)}")

    def select(self, metrics: dict) -> dict:
        """Keep the chosen measures (all when ``collapse_measures`` is empty)."""
        if not self.collapse_measures:
            return metrics
        return {k: v for k, v in metrics.items() if any(k.endswith(m) for m in self.collapse_measures)}

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float64 if self.collapse_dtype == "float64" else torch.float32

    @property
    def modules(self):
        return self.collapse_modules or None


def _finish(model, stats_or_collector, cargs: CollapseArguments, nc4_loader, progress=False) -> CollapseReport:
    """Reduce pass-1 statistics, run the NC4 pass, measure (every process, same numbers)."""
    if isinstance(stats_or_collector, FeatureCollector):
        stats = stats_or_collector.statistics
        names = list(stats_or_collector.modules)
        from .collect import _agree_dim
        from .statistics import CollapseStatistics

        for name in names:  # a process whose eval shard was all padding still joins the reduce
            dim = _agree_dim(stats[name].dim if name in stats else None)
            if name not in stats:
                stats[name] = CollapseStatistics(stats_or_collector.num_classes, dim,
                                                 covariance=cargs.collapse_covariance)
            stats[name].reduce()
        stats = {n: stats[n] for n in names}
        for n, s in stats.items():
            if s.num_tokens == 0:
                raise ValueError(f"no labelled token reached {n!r} during evaluation")
        stats = stats[names[0]] if len(names) == 1 else stats
    else:
        stats = stats_or_collector
    nc4 = None
    if cargs.collapse_nc4 and nc4_loader is not None:
        nc4 = collect_nc4(model, nc4_loader, stats, modules=cargs.modules, task=cargs.collapse_task,
                          max_tokens=cargs.collapse_nc4_max_tokens, dtype=cargs.torch_dtype, progress=progress,
                          pooling=cargs.collapse_pooling)
    settings = {"task": cargs.collapse_task, "k": cargs.collapse_k, "max_tokens": cargs.collapse_max_tokens,
                "tile_size": cargs.collapse_tile_size, "dtype": cargs.collapse_dtype}
    return measure_statistics(model, stats, modules=cargs.modules, nc4=nc4, k=cargs.collapse_k,
                              per_class=cargs.collapse_per_class, tile_size=cargs.collapse_tile_size,
                              dtype=cargs.torch_dtype, settings=settings)


def save_report_statistics(report: CollapseReport, folder: str, step: Optional[int] = None, model=None) -> None:
    """Write the report's statistics into ``folder/collapse/`` (layer-wise ones as ``<layer>.safetensors``).

    With ``model`` the folder becomes a *measured model folder* (``hf_collapse.measured``): the
    statistics header records the weights hash and ``collapse/metrics.json`` is written too.
    """
    from .measured import save_measured

    meta = {"k": str(report.settings.get("k", 2.0))}
    if step is not None:
        meta["global_step"] = str(step)
    if model is not None:
        extra = {k: v for k, v in report.settings.items() if k != "k"}
        save_measured(folder, model=model, statistics=report.statistics, result=report.result,
                      metrics_extra=extra, metadata=meta, card=False, save_model=False)
    else:
        extra = {}
        if report.result.per_class:
            extra = {f"per_class.{k}": v for k, v in report.result.per_class.items()}
        report.statistics.save(os.path.join(folder, STATISTICS_IN_CHECKPOINT), extra_tensors=extra, metadata=meta)
    for name, st in report.all_statistics.items():
        if name != report.primary:
            st.save(os.path.join(folder, "collapse", f"{name}.safetensors"), metadata=meta)


def trainer_scope(trainer):
    """Context for a measurement inside ``trainer``: reduce over the processes the Trainer distributes
    over; ``distributed.local_only`` (one warning) when torch.distributed's group is another one."""
    acc = getattr(trainer, "accelerator", None)
    n = acc.num_processes if acc is not None else trainer.args.world_size
    return scope_for(n, type(trainer).__name__)


class CollapseTrainer(Trainer):
    """``Trainer`` whose ``evaluate()`` also returns and logs the NC measures.

    Args (keywords, beside the ``Trainer`` ones):
        collapse_args: ``CollapseArguments`` (default settings if None).
        collapse_dataset: data for the statistics (default: the eval dataset, riding the eval loop).
        nc4_dataset: held-out data for NC4 (default: the eval dataset).

    ``trainer.collapse_report`` holds the latest ``CollapseReport``; ``trainer.measure_collapse()``
    measures on demand. Statistics are reduced over the processes the Trainer distributes over
    only; see the module docstring for a process group it does not use (measured locally, one warning).
    """

    def __init__(self, *args, collapse_args: Optional[CollapseArguments] = None, collapse_dataset=None,
                 nc4_dataset=None, **kwargs):
        super().__init__(*args, **kwargs)
        if collapse_args is not None and not isinstance(collapse_args, CollapseArguments):
            raise TypeError(f"collapse_args must be CollapseArguments, got {type(collapse_args).__name__}")
        self.collapse_args = collapse_args or CollapseArguments()
        self.collapse_dataset = collapse_dataset
        self.nc4_dataset = nc4_dataset
        self.collapse_report: Optional[CollapseReport] = None
        self._collapse_eval = False

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        if isinstance(eval_dataset, dict) or (eval_dataset is None and isinstance(self.eval_dataset, dict)):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)  # recurses per dataset
        self._collapse_eval = self.collapse_args.collapse
        try:
            with trainer_scope(self):  # the hooks in the eval loop and the reduce follow the Trainer's processes
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self._collapse_eval = False

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval"):
        if not self._collapse_eval:
            return super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                           metric_key_prefix)
        cargs = self.collapse_args
        ride = self.collapse_dataset is None and cargs.collapse_max_tokens is None
        collector = None
        if ride:
            collector = FeatureCollector(self.model, cargs.modules, task=cargs.collapse_task,
                                         covariance=cargs.collapse_covariance, pooling=cargs.collapse_pooling)
            collector.install()
        try:
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)
        finally:
            if collector is not None:
                collector.remove()
        nc4_loader = self.get_eval_dataloader(self.nc4_dataset) if self.nc4_dataset is not None else dataloader
        if ride:
            report = _finish(self.model, collector, cargs, nc4_loader)
        else:
            report = self.measure_collapse(nc4_dataset=self.nc4_dataset, _nc4_loader=nc4_loader)
        self.collapse_report = report
        output.metrics.update(cargs.select(report.metrics(metric_key_prefix)))
        return output

    def measure_collapse(self, dataset=None, nc4_dataset=None, *, _nc4_loader=None) -> CollapseReport:
        """Measure now: statistics on ``dataset`` (default: collapse_dataset, else eval_dataset),
        NC4 on ``nc4_dataset`` (default: the trainer's nc4 dataset, else eval_dataset)."""
        with trainer_scope(self):
            return self._measure_collapse(dataset, nc4_dataset, _nc4_loader)

    def _measure_collapse(self, dataset, nc4_dataset, _nc4_loader) -> CollapseReport:
        cargs = self.collapse_args
        data = dataset if dataset is not None else (self.collapse_dataset if self.collapse_dataset is not None
                                                    else self.eval_dataset)
        if data is None:
            raise ValueError("measure_collapse needs a dataset: pass one or give the trainer an eval_dataset")
        loader = self.get_eval_dataloader(data)
        stats = collect_statistics(self.model, loader, modules=cargs.modules, task=cargs.collapse_task,
                                   max_tokens=cargs.collapse_max_tokens, covariance=cargs.collapse_covariance,
                                   pooling=cargs.collapse_pooling, progress=self.is_world_process_zero()
                                   and not self.args.disable_tqdm)
        if _nc4_loader is None:
            nc4_data = nc4_dataset if nc4_dataset is not None else (self.nc4_dataset if self.nc4_dataset is not None
                                                                    else self.eval_dataset)
            _nc4_loader = self.get_eval_dataloader(nc4_data) if nc4_data is not None else None
        report = _finish(self.model, stats, cargs, _nc4_loader)
        self.collapse_report = report
        return report

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if (self.collapse_report is not None and self.collapse_args.collapse_save_statistics
                and self.is_world_process_zero()):
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            save_report_statistics(self.collapse_report, folder, self.state.global_step, model=self.model)

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False):
        """``Trainer.save_model`` plus the latest collapse statistics: the folder is a measured model
        folder, so ``push_to_hub`` publishes weights and statistics in one commit."""
        super().save_model(output_dir, _internal_call)
        if (self.collapse_report is not None and self.collapse_args.collapse_save_statistics
                and self.is_world_process_zero()):
            save_report_statistics(self.collapse_report, output_dir or self.args.output_dir, self.state.global_step,
                                   model=self.model)

    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                          tasks=None, dataset_tags=None, dataset=None, dataset_args=None, **kwargs):
        """The hf_collapse card (NC table, ``model-index`` with every measure, figure) when the output
        folder holds collapse statistics; the stock ``Trainer`` card otherwise."""
        if not self.is_world_process_zero():
            return
        folder = self.args.output_dir
        if not os.path.isfile(os.path.join(folder, STATISTICS_IN_CHECKPOINT)):
            return super().create_model_card(language=language, license=license, tags=tags, model_name=model_name,
                                             finetuned_from=finetuned_from, tasks=tasks, dataset_tags=dataset_tags,
                                             dataset=dataset, dataset_args=dataset_args)
        from .hub import write_model_card

        info = {"language": language, "license": license, "model_name": model_name, "base_model": finetuned_from,
                "dataset": dataset if isinstance(dataset, str) else None,
                "datasets": list(dataset_tags) if isinstance(dataset_tags, (list, tuple)) else
                ([dataset_tags] if dataset_tags else None),
                "tags": [tags] if isinstance(tags, str) else tags}
        write_model_card(folder, trainer=self, repo_id=self.hub_model_id,
                         **{k: v for k, v in info.items() if v is not None})


class CollapseCallback(TrainerCallback):
    """Gives a stock ``Trainer`` (or any subclass) the NC metrics of ``CollapseTrainer``.

    Use ``CollapseCallback(collapse_args).attach(trainer)`` so that every ``report_to`` integration
    sees the metrics; see the module docstring for why. Hooks are installed when the Trainer is
    built (``on_init_end``) and only act while the model is in eval mode. As for ``CollapseTrainer``,
    statistics are reduced over the Trainer's processes only (``args.world_size``); a process group
    the Trainer does not use is ignored with one warning (each process measures its own data).
    """

    def __init__(self, collapse_args: Optional[CollapseArguments] = None):
        self.collapse_args = collapse_args or CollapseArguments()
        self.collector: Optional[FeatureCollector] = None
        self.collapse_report: Optional[CollapseReport] = None
        self._attached = False
        self._warned = False

    # -- setup
    def attach(self, trainer: Trainer) -> "CollapseCallback":
        """Register on ``trainer`` as its first callback and install the hooks; returns self."""
        handler = trainer.callback_handler
        if self in handler.callbacks:
            handler.callbacks.remove(self)
        handler.callbacks.insert(0, self)
        self._attached = True
        self._install(trainer.model, trainer.args)
        return self

    def _install(self, model, args=None):
        if self.collector is None and model is not None and self.collapse_args.collapse:
            c = self.collapse_args
            self.collector = FeatureCollector(model, c.modules, task=c.collapse_task,
                                              covariance=c.collapse_covariance, pooling=c.collapse_pooling)
            self.collector.install()
        if self.collector is not None and args is not None:
            # Accelerate pads the last eval batch only when the Trainer shards over the process group
            self.collector.drop_padded_duplicates = args.world_size == group_size()

    def remove(self) -> None:
        """Remove the hooks."""
        if self.collector is not None:
            self.collector.remove()
            self.collector = None

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self._install(model, args)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._install(model, args)

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        self._reset()  # predict() forwards are not an evaluation

    def _reset(self):
        if self.collector is not None:
            self.collector.statistics.clear()

    # -- metrics
    def on_log(self, args, state, control, logs=None, model=None, eval_dataloader=None, **kwargs):
        if self.collector is None or logs is None:
            return
        prefix = next((k[: -len("_runtime")] for k in logs if k.endswith("_runtime") and k != "train_runtime"), None)
        if prefix is None:
            return  # a training log
        if not self._attached and not self._warned and state.is_world_process_zero:
            logger.warning("CollapseCallback was not attached with .attach(trainer): report_to integrations "
                           "registered before it will not see the NC metrics")
            self._warned = True
        self.collector.enabled = False  # the NC4 pass must not feed pass-1 statistics
        try:
            with scope_for(args.world_size, type(self).__name__):
                report = _finish(model if model is not None else self.collector.model, self.collector,
                                 self.collapse_args, eval_dataloader)
        finally:
            self._reset()
            self.collector.enabled = True
        self.collapse_report = report
        metrics = self.collapse_args.select(report.metrics(prefix))
        logs.update(metrics)
        if state.log_history:
            state.log_history[-1].update(metrics)

    def on_save(self, args, state, control, **kwargs):
        if self.collapse_report is None or not self.collapse_args.collapse_save_statistics:
            return
        if state.is_world_process_zero:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            if os.path.isdir(folder):
                save_report_statistics(self.collapse_report, folder, state.global_step,
                                       model=kwargs.get("model"))
