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
on CPU. hf_collapse never creates or destroys the Trainer's process group, and starts no thread: a
script launched with several processes should end with ``torch.distributed.destroy_process_group()``
(a gloo group left open at interpreter exit can abort with "terminate called without an active
exception").

How the statistics are collected: the hooks of :mod:`hf_collapse.integrations.hooks` ride the evaluation loop the
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

import dataclasses
import logging
import os
from typing import Optional

from transformers import Trainer, TrainerCallback

from ..core.distributed import finish_pass, group_size, scope_for
from ..core.errors import UserTypeError, UserValueError
from .folder import COLLAPSE_DIR, STATISTICS_FILE, write_report
from .hooks import FeatureHooks, StatisticsSink
from .passes import CollapseReport, collect_statistics, finish_measurement
from .settings import CollapseArguments

logger = logging.getLogger(__name__)

STATISTICS_IN_CHECKPOINT = os.path.join(COLLAPSE_DIR, STATISTICS_FILE)


def _install_hooks(model, cargs: CollapseArguments) -> FeatureHooks:
    """Statistics hooks that ride the Trainer's evaluation loop (no extra forward pass)."""
    hooks = FeatureHooks(model, cargs.modules, task=cargs.collapse_task, pooling=cargs.collapse_pooling)
    hooks.sink = StatisticsSink(
        hooks.num_classes, covariance=cargs.collapse_covariance, device=cargs.collapse_statistics_device
    )
    hooks.install()
    return hooks


def _finish(model, hooks: FeatureHooks, cargs: CollapseArguments, nc4_loader) -> CollapseReport:
    """Reduce the statistics the hooks collected, run the NC4 pass, measure (every process, same numbers)."""
    stats = finish_pass(
        hooks.sink.statistics,
        list(hooks.modules),
        hooks.num_classes,
        covariance=cargs.collapse_covariance,
        what="the evaluation",
    )
    stats = next(iter(stats.values())) if len(stats) == 1 else stats
    return finish_measurement(model, stats, cargs, nc4_loader)


def save_report_statistics(report: CollapseReport, folder: str, step: Optional[int] = None, model=None) -> None:
    """Write the report's measurements into ``folder/collapse/``: the primary module as the default
    measurement, layer-wise ones as ``collapse/<layer>/`` (``load_measured(..., name=layer)``). The
    record carries the training step; with ``model`` it records the weights hash (hashed once)."""
    write_report(folder, dataclasses.replace(report, record=report.record.replace(step=step)), model=model)


def _wrapped(trainer):
    """The model as the Trainer runs it: FSDP1's wrapper included, so that the head's FSDP unit can be
    gathered (``read_head``); the DeepSpeed engine is left out (ZeRO-3 is gathered per parameter)."""
    wrapped = getattr(trainer, "model_wrapped", None)
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    except ImportError:  # pragma: no cover
        return trainer.model
    return wrapped if isinstance(wrapped, FSDP) else trainer.model


def _warn_fsdp_dropped(trainer) -> None:
    """``TrainingArguments(fsdp=...)`` on a machine without an accelerator is dropped by transformers /
    accelerate to plain data parallelism without a log line: say it once."""
    fsdp = getattr(trainer.args, "fsdp", None)
    main = getattr(trainer, "is_world_process_zero", lambda: True)()
    if fsdp and not getattr(trainer, "is_fsdp_enabled", False) and main:
        logger.warning(
            "TrainingArguments(fsdp=%r) is not in effect (no FSDP plugin: on a CPU machine transformers and "
            "accelerate fall back to plain data parallelism); the model is not sharded and the collapse "
            "measures are those of an unsharded run",
            fsdp,
        )


def trainer_scope(trainer):
    """Context for a measurement inside ``trainer``: reduce over the processes the Trainer distributes
    over; ``core.distributed.local_only`` (one warning) when torch.distributed's group is another one."""
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

    def __init__(
        self,
        *args,
        collapse_args: Optional[CollapseArguments] = None,
        collapse_dataset=None,
        nc4_dataset=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if collapse_args is not None and not isinstance(collapse_args, CollapseArguments):
            raise UserTypeError(f"collapse_args must be CollapseArguments, got {type(collapse_args).__name__}")
        self.collapse_args = collapse_args or CollapseArguments()
        self.collapse_dataset = collapse_dataset
        self.nc4_dataset = nc4_dataset
        self.collapse_report: Optional[CollapseReport] = None
        self._collapse_eval = False
        # statistics into each checkpoint through the public on_save hook (runs right after the
        # checkpoint folder is written), not by overriding the private Trainer._save_checkpoint
        self.add_callback(_SaveReportOnCheckpoint(self))
        _warn_fsdp_dropped(self)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        if isinstance(eval_dataset, dict) or (eval_dataset is None and isinstance(self.eval_dataset, dict)):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)  # recurses per dataset
        self._collapse_eval = self.collapse_args.collapse
        try:
            with trainer_scope(self):  # the hooks in the eval loop and the reduce follow the Trainer's processes
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self._collapse_eval = False

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ):
        if not self._collapse_eval:
            return super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        cargs = self.collapse_args
        ride = self.collapse_dataset is None and cargs.collapse_max_tokens is None
        hooks = _install_hooks(self.model, cargs) if ride else None
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        finally:
            if hooks is not None:
                hooks.remove()
        nc4_loader = self.get_eval_dataloader(self.nc4_dataset) if self.nc4_dataset is not None else dataloader
        if ride:
            report = _finish(_wrapped(self), hooks, cargs, nc4_loader)
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
        data = (
            dataset
            if dataset is not None
            else (self.collapse_dataset if self.collapse_dataset is not None else self.eval_dataset)
        )
        if data is None:
            raise UserValueError("measure_collapse needs a dataset: pass one or give the trainer an eval_dataset")
        loader = self.get_eval_dataloader(data)
        stats = collect_statistics(
            _wrapped(self), loader, cargs, progress=self.is_world_process_zero() and not self.args.disable_tqdm
        )
        if _nc4_loader is None:
            nc4_data = (
                nc4_dataset
                if nc4_dataset is not None
                else (self.nc4_dataset if self.nc4_dataset is not None else self.eval_dataset)
            )
            _nc4_loader = self.get_eval_dataloader(nc4_data) if nc4_data is not None else None
        report = finish_measurement(_wrapped(self), stats, cargs, _nc4_loader)
        self.collapse_report = report
        return report

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False):
        """``Trainer.save_model`` plus the latest collapse statistics: the folder is a measured model
        folder, so ``push_to_hub`` publishes weights and statistics in one commit."""
        super().save_model(output_dir, _internal_call)
        if (
            self.collapse_report is not None
            and self.collapse_args.collapse_save_statistics
            and self.is_world_process_zero()
        ):
            save_report_statistics(
                self.collapse_report, output_dir or self.args.output_dir, self.state.global_step, model=self.model
            )

    def create_model_card(
        self,
        language=None,
        license=None,
        tags=None,
        model_name=None,
        finetuned_from=None,
        tasks=None,
        dataset_tags=None,
        dataset=None,
        dataset_args=None,
        **kwargs,
    ):
        """The hf_collapse card (NC table, ``model-index`` with every measure, figure) when the output
        folder holds collapse statistics; the stock ``Trainer`` card otherwise."""
        if not self.is_world_process_zero():
            return
        folder = self.args.output_dir
        if not os.path.isfile(os.path.join(folder, STATISTICS_IN_CHECKPOINT)):
            return super().create_model_card(
                language=language,
                license=license,
                tags=tags,
                model_name=model_name,
                finetuned_from=finetuned_from,
                tasks=tasks,
                dataset_tags=dataset_tags,
                dataset=dataset,
                dataset_args=dataset_args,
            )
        from .model_card import write_model_card

        info = {
            "language": language,
            "license": license,
            "model_name": model_name,
            "base_model": finetuned_from,
            "dataset": dataset if isinstance(dataset, str) else None,
            "datasets": list(dataset_tags)
            if isinstance(dataset_tags, (list, tuple))
            else ([dataset_tags] if dataset_tags else None),
            "tags": [tags] if isinstance(tags, str) else tags,
        }
        write_model_card(
            folder, trainer=self, repo_id=self.hub_model_id, **{k: v for k, v in info.items() if v is not None}
        )


def _checkpoint_folder(args, state) -> str:
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


class _SaveReportOnCheckpoint(TrainerCallback):
    """Writes a CollapseTrainer's latest report into each checkpoint it saves."""

    def __init__(self, trainer: CollapseTrainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        t = self.trainer
        folder = _checkpoint_folder(args, state)
        if (
            t.collapse_report is not None
            and t.collapse_args.collapse_save_statistics
            and state.is_world_process_zero
            and os.path.isdir(folder)
        ):
            save_report_statistics(t.collapse_report, folder, state.global_step, model=t.model)


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
        self.hooks: Optional[FeatureHooks] = None
        self.collapse_report: Optional[CollapseReport] = None
        self._attached = False
        self._warned = False

    # -- setup
    def attach(self, trainer: Trainer) -> CollapseCallback:
        """Register on ``trainer`` as its first callback and install the hooks; returns self."""
        handler = trainer.callback_handler
        if self in handler.callbacks:
            handler.callbacks.remove(self)
        handler.callbacks.insert(0, self)
        self._attached = True
        self._install(trainer.model, trainer.args)
        return self

    def _install(self, model, args=None):
        if self.hooks is None and model is not None and self.collapse_args.collapse:
            self.hooks = _install_hooks(model, self.collapse_args)
        if self.hooks is not None and args is not None:
            # Accelerate pads the last eval batch only when the Trainer shards over the process group
            self.hooks.drop_padded_duplicates = args.world_size == group_size()

    def remove(self) -> None:
        """Remove the hooks."""
        if self.hooks is not None:
            self.hooks.remove()
            self.hooks = None

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self._install(model, args)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._install(model, args)

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        self._reset()  # predict() forwards are not an evaluation

    def _reset(self):
        if self.hooks is not None:
            self.hooks.sink.statistics.clear()

    # -- metrics
    def on_log(self, args, state, control, logs=None, model=None, eval_dataloader=None, **kwargs):
        if self.hooks is None or logs is None:
            return
        # An evaluation's logs are the only ones with "<prefix>_runtime" besides "train_runtime" (the public
        # keys of transformers.trainer_utils.speed_metrics, stable since 4.x; tested with transformers 5)
        prefix = next((k[: -len("_runtime")] for k in logs if k.endswith("_runtime") and k != "train_runtime"), None)
        if prefix is None:
            return  # a training log
        if not self._attached and not self._warned and state.is_world_process_zero:
            logger.warning(
                "CollapseCallback was not attached with .attach(trainer): report_to integrations "
                "registered before it will not see the NC metrics"
            )
            self._warned = True
        self.hooks.enabled = False  # the NC4 pass must not feed pass-1 statistics
        try:
            with scope_for(args.world_size, type(self).__name__):
                report = _finish(
                    model if model is not None else self.hooks.model, self.hooks, self.collapse_args, eval_dataloader
                )
        finally:
            self._reset()
            self.hooks.enabled = True
        self.collapse_report = report
        metrics = self.collapse_args.select(report.metrics(prefix))
        logs.update(metrics)
        if state.log_history:
            state.log_history[-1].update(metrics)

    def on_save(self, args, state, control, **kwargs):
        if self.collapse_report is None or not self.collapse_args.collapse_save_statistics:
            return
        if state.is_world_process_zero:
            folder = _checkpoint_folder(args, state)
            if os.path.isdir(folder):
                save_report_statistics(self.collapse_report, folder, state.global_step, model=kwargs.get("model"))
