"""The paper's study, one model at a time: configure, train and measure a GPT-Neo causal LM.

``gpt_neo_config`` follows appendix B (Table 2): GPT-Neo with attention layers alternating
global / local (window 256), ``gelu_new``, no dropout, 16 heads, tied input/output embeddings
(GPT-Neo's default), ``hidden_size`` = width d and ``num_layers`` = depth L. Appendix C: linear
learning-rate schedule without warm-up, bf16 mixed precision (here: when the hardware has it), weight
decay 0.0005 or 0.1, the data shuffling seed as the only difference between replicas.

``train_one`` trains one model with the Hugging Face ``Trainer`` on packed stories, evaluates it
(``eval_loss``) and writes a *measured model folder* (``hf_collapse.measured.save_measured``) plus
``run.json`` (the study configuration, ``eval_loss``, parameter count):

    <output_dir>/<name>/
        config.json, model.safetensors, tokenizer files, README.md
        run.json                                               study configuration + eval_loss + sizes
        collapse/metrics.json                                  every measure + eval_loss (flat JSON)
        collapse/statistics.safetensors                        class statistics + per_class.<key> tensors

Measurement follows the paper: class statistics of the top-layer features (the input of the LM
head, after the final layer norm) over the training tokens, NC4 agreement on validation tokens
(through the trainer's dataloaders, so it is sharded and reduced under ``accelerate launch``).
Departure: classes whose means coincide (identical contexts in real text) are left out
(``measure_collapse(..., coincident="exclude")``, counted in ``num_classes_coincident``).

Names: ``TinyStories-{L}x{d}_{E}{D}{S}``, as the paper's ``TinyStories-12x1024_10L``: E the epochs,
D the weight decay (``L`` = 0.0005, ``H`` = 0.1, else ``W`` + the value), S the seed (left out for 0),
then ``d<data seed>`` when the data order has its own seed (``data_seed``, seed replicas).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch

from ..core.errors import UserValueError
from ..core.io import atomic_write_text
from ..integrations.data import (
    DEFAULT_HUB_DATASET,
    TokenBlocks,
    blocks_from_texts,
    load_text_dataset,
    load_tokenizer,
    tokenize_dataset,
)
from ..integrations.hub import save_measured
from ..integrations.measurement_data import load_hub_stories
from .corpus import generate_stories, train_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class StudyArguments:
    """One run of the study (``HfArgumentParser`` turns the fields into ``--flags``)."""

    width: int = field(default=64, metadata={"help": "hidden size d (paper: 64..1024)"})
    depth: int = field(
        default=2, metadata={"help": "number of layers L, alternating global/local attention (paper: 1..12)"}
    )
    epochs: float = field(default=1, metadata={"help": "training epochs (paper: 1, 3, 10)"})
    weight_decay: float = field(default=0.0005, metadata={"help": "AdamW weight decay (paper: 0.0005 or 0.1)"})
    seed: int = field(
        default=0, metadata={"help": "seed of initialisation (and of data shuffling unless data_seed is set)"}
    )
    data_seed: Optional[int] = field(
        default=None,
        metadata={"help": "seed of the data shuffling only (default: seed); Table 1's replicas differ only in it"},
    )
    learning_rate: float = field(default=5e-4, metadata={"help": "peak learning rate"})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "schedule (paper: linear, no warm-up)"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "share of steps in [0, 1) used for warm-up (paper: 0)"})
    batch_size: int = field(default=16, metadata={"help": "per-device batch size (paper Table 3: 4-16)"})
    block_size: int = field(default=256, metadata={"help": "tokens per packed training sequence T"})
    num_heads: int = field(default=16, metadata={"help": "attention heads (paper: 16; must divide width)"})
    window_size: int = field(default=256, metadata={"help": "local attention window (paper: 256)"})
    dataset_name: str = field(default=DEFAULT_HUB_DATASET, metadata={"help": "Hub dataset (used without --train-file)"})
    train_file: Optional[str] = field(default=None, metadata={"help": "local TinyStories-format training text"})
    validation_file: Optional[str] = field(default=None, metadata={"help": "local validation text"})
    tokenizer: str = field(
        default="EleutherAI/gpt-neo-125M", metadata={"help": "tokenizer name or folder (GPT-Neo/GPT-2 BPE)"}
    )
    builtin_stories: int = field(
        default=0,
        metadata={"help": "if > 0: use this many built-in procedural stories and a BPE tokenizer trained on them"},
    )
    builtin_vocab_size: int = field(
        default=512, metadata={"help": "vocabulary of the tokenizer trained on the built-in stories"}
    )
    max_train_stories: Optional[int] = field(default=None, metadata={"help": "use only the first N training stories"})
    max_eval_stories: Optional[int] = field(default=None, metadata={"help": "use only the first N validation stories"})
    max_eval_blocks: Optional[int] = field(default=None, metadata={"help": "cap on packed validation sequences"})
    measure_max_tokens: Optional[int] = field(
        default=None, metadata={"help": "token budget of the statistics pass (default: all training tokens)"}
    )
    nc4_max_tokens: Optional[int] = field(
        default=100_000, metadata={"help": "token budget of the NC4 pass on validation data"}
    )
    output_dir: str = field(default="runs", metadata={"help": "folder that receives one sub-folder per run"})
    run_name: Optional[str] = field(
        default=None,
        metadata={
            "help": "run folder name (default: the paper's TinyStories-LxD_<epochs><decay>, decay L = 0.0005, H = 0.1)"
        },
    )
    bf16: Optional[bool] = field(
        default=None, metadata={"help": "bf16 mixed precision (default: when the GPU supports it)"}
    )
    logging_steps: int = field(default=50, metadata={"help": "log the training loss every N steps"})
    eval_strategy: str = field(
        default="epoch", metadata={"help": "when to evaluate (and log NC metrics): epoch, steps or no"}
    )
    progress: bool = field(default=False, metadata={"help": "show tqdm progress bars and print the training logs"})


def run_name(
    width: int, depth: int, epochs: float, weight_decay: float, seed: int = 0, data_seed: Optional[int] = None
) -> str:
    """``TinyStories-{L}x{d}_{E}{D}{S}``: D = L (0.0005), H (0.1) or W<value>; S left out for seed 0;
    ``d<data_seed>`` appended when the data order has its own seed (seed replicas)."""
    decay = {0.0005: "L", 0.1: "H"}.get(weight_decay, f"W{weight_decay:g}")
    e = f"{epochs:g}"
    data = f"d{data_seed}" if data_seed is not None and data_seed != seed else ""
    return f"TinyStories-{depth}x{width}_{e}{decay}{seed if seed else ''}{data}"


def gpt_neo_config(
    width: int,
    depth: int,
    vocab_size: int,
    *,
    num_heads: int = 16,
    window_size: int = 256,
    max_position_embeddings: int = 2048,
    bos_token_id: Optional[int] = None,
    eos_token_id: Optional[int] = None,
    **overrides,
):
    """Appendix B's GPT-Neo configuration at width d and depth L (alternating global/local attention)."""
    from transformers import GPTNeoConfig

    for name, v in (("width", width), ("depth", depth), ("vocab_size", vocab_size), ("num_heads", num_heads)):
        if not isinstance(v, int) or v < 1:
            raise UserValueError(f"{name} must be a positive int, got {v!r}")
    if width % num_heads:
        raise UserValueError(f"num_heads ({num_heads}) must divide the width ({width})")
    eos = vocab_size - 1 if eos_token_id is None else eos_token_id
    kinds = ["global", "local"]
    # attention_types is GPT-Neo's run-length form: [[["global", "local"], L // 2]] (+ a final global if L is odd)
    types = [[kinds, depth // 2]] if depth // 2 else []
    if depth % 2:
        types.append([["global"], 1])
    return GPTNeoConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        num_layers=depth,
        attention_types=types,
        num_heads=num_heads,
        window_size=window_size,
        max_position_embeddings=max_position_embeddings,
        activation_function="gelu_new",
        attention_dropout=0.0,
        embed_dropout=0.0,
        resid_dropout=0.0,
        intermediate_size=None,
        layer_norm_epsilon=1e-5,
        initializer_range=0.02,
        use_cache=False,
        bos_token_id=eos if bos_token_id is None else bos_token_id,
        eos_token_id=eos,
        tie_word_embeddings=True,
        **overrides,
    )


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class StudyData:
    """Tokenizer and packed train / validation blocks (``TokenBlocks`` of ``{"input_ids", "labels"}``
    examples, GPT-style: EOS after every story, ragged tail dropped), shared by the runs of a grid."""

    tokenizer: object
    train: TokenBlocks
    validation: TokenBlocks
    source: str


def _first(ds, n: Optional[int]):
    return ds if n is None else ds.select(range(min(n, len(ds))))


def prepare_data(args: StudyArguments) -> StudyData:
    """Built-in stories (``builtin_stories > 0``), local files (``train_file``) or the Hub dataset, packed
    by the pipeline of :mod:`hf_collapse.integrations.data` (files and whole Hub splits are tokenized
    into the datasets cache, so the runs of a grid and later grids reuse the tokens)."""
    pack = dict(bos=False, eos=True, drop_last=True, examples=True)
    # validation budget: max_eval_blocks full blocks of T tokens hold that many x (T - 1) labels
    val_budget = None if args.max_eval_blocks is None else args.max_eval_blocks * (args.block_size - 1)
    if args.builtin_stories > 0:
        train_texts = generate_stories(args.builtin_stories, seed=0)
        val_texts = generate_stories(max(args.builtin_stories // 10, 50), seed=1)  # disjoint seed
        tokenizer = train_tokenizer(train_texts, vocab_size=args.builtin_vocab_size)
        source = f"built-in procedural stories ({args.builtin_stories} train / {len(val_texts)} validation)"
        train = blocks_from_texts(train_texts, tokenizer, args.block_size, **pack)
        val = blocks_from_texts(val_texts, tokenizer, args.block_size, max_tokens=val_budget, **pack)
    elif args.train_file:
        train_docs = _first(load_text_dataset(args.train_file), args.max_train_stories)
        if args.validation_file:
            val_docs = _first(load_text_dataset(args.validation_file), args.max_eval_stories)
        else:  # hold out the last 10% of the stories
            cut = max(1, len(train_docs) // 10)
            train_docs, val_docs = (
                train_docs.select(range(len(train_docs) - cut)),
                train_docs.select(range(len(train_docs) - cut, len(train_docs))),
            )
        tokenizer = load_tokenizer(args.tokenizer)
        source = f"{args.train_file} ({len(train_docs)} stories)"
        train = TokenBlocks(
            tokenize_dataset(train_docs, tokenizer, bos=False, eos=True), args.block_size, drop_last=True, examples=True
        )
        val = TokenBlocks(
            tokenize_dataset(val_docs, tokenizer, bos=False, eos=True),
            args.block_size,
            max_tokens=val_budget,
            drop_last=True,
            examples=True,
        )
    else:
        train_texts = load_hub_stories(args.dataset_name, "train", max_stories=args.max_train_stories)
        val_texts = load_hub_stories(args.dataset_name, "validation", max_stories=args.max_eval_stories)
        tokenizer = load_tokenizer(args.tokenizer)
        source = f"{args.dataset_name} ({len(train_texts)} stories)"
        train = blocks_from_texts(train_texts, tokenizer, args.block_size, **pack)
        val = blocks_from_texts(val_texts, tokenizer, args.block_size, max_tokens=val_budget, **pack)
    for name, blocks in (("training", train), ("validation", val)):
        if len(blocks) == 0:
            raise UserValueError(f"the {name} texts hold fewer tokens than one block of {args.block_size}")
    logger.info(
        "data: %s -> %d x %d train, %d x %d validation tokens",
        source,
        len(train),
        args.block_size,
        len(val),
        args.block_size,
    )
    return StudyData(tokenizer, train, val, source)


# ---------------------------------------------------------------------------------------------
# measuring


def _measure_final(trainer, args: StudyArguments, data: StudyData, name: str):
    """The saved measurement: statistics over training tokens, NC4 on validation tokens (per-class kept).

    Goes through the trainer's prepared (sharded) dataloaders, so under ``accelerate launch`` no
    token is counted twice. Classes with coincident means are left out by ``measure_statistics``
    (counted in ``num_classes_coincident``).
    """
    from ..integrations.passes import measure_model, settings_record
    from ..integrations.trainer import trainer_scope

    model = trainer.model
    progress = trainer.is_world_process_zero() and args.progress
    model.eval()
    # the run's own measurement settings (k, tile, dtype, modules), with this measurement's budgets
    cfg = trainer.collapse_args.replace(
        collapse_task="causal_lm",
        collapse_max_tokens=args.measure_max_tokens,
        collapse_nc4_max_tokens=args.nc4_max_tokens,
        collapse_per_class=True,
    )
    record = settings_record(cfg, model_name=name, data=data.source, step=trainer.state.global_step)
    with trainer_scope(trainer):  # reduce over the Trainer's processes only
        return measure_model(
            model,
            trainer.get_eval_dataloader(data.train),
            trainer.get_eval_dataloader(data.validation),
            cfg,
            record=record,
            progress=progress,
        )


# ---------------------------------------------------------------------------------------------
# training

PROGRESS_EVERY = 60.0  # seconds between two progress lines


def progress_lines(name: str, every: float = PROGRESS_EVERY):
    """A ``TrainerCallback`` printing one flushed line to stderr at the first step, then every ``every``
    seconds and at the end: step, epoch, latest training loss, time spent and left; during an evaluation
    (with its collapse passes) the batch reached, every ``every`` seconds, and its loss at the end.
    Unlike tqdm bars it reads well when the output goes to a file (a batch job's log)."""
    import time

    from transformers import TrainerCallback

    def say(text: str) -> None:
        print(f"{name}: {text}", file=sys.stderr, flush=True)

    class ProgressLines(TrainerCallback):
        def __init__(self):
            self.start = self.last = None
            self.loss = None
            self.eval_batches = 0
            self.eval_start = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.monotonic()
            self.last = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.loss = logs["loss"]

        def on_step_end(self, args, state, control, **kwargs):
            now = time.monotonic()
            if self.last is not None and now - self.last < every and state.global_step < state.max_steps:
                return
            self.last = now
            spent = now - self.start
            left = spent / state.global_step * (state.max_steps - state.global_step) if state.global_step else 0.0
            loss = f", loss {self.loss:.3f}" if self.loss is not None else ""
            say(
                f"step {state.global_step}/{state.max_steps} (epoch {state.epoch or 0:.2f}){loss}, "
                f"{_minutes(spent)} spent, about {_minutes(left)} left"
            )

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            now = time.monotonic()
            if self.eval_batches == 0:
                self.eval_start = self.last = now
                say(f"evaluating at step {state.global_step} (loss, then the collapse passes) ...")
            self.eval_batches += 1
            if now - self.last >= every:
                self.last = now
                total = len(eval_dataloader) if eval_dataloader is not None else "?"
                say(f"evaluating: batch {self.eval_batches}/{total}, {_minutes(now - self.eval_start)} spent")

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            took = time.monotonic() - self.eval_start if self.eval_start is not None else 0.0
            loss = (metrics or {}).get("eval_loss")
            say(
                f"evaluated at step {state.global_step}"
                + (f": eval_loss {loss:.4f}" if loss is not None else "")
                + f" ({_minutes(took)}, collapse passes included)"
            )
            self.eval_batches, self.eval_start = 0, None

    return ProgressLines()


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _bf16_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def train_one(
    args: StudyArguments,
    data: Optional[StudyData] = None,
    *,
    collapse_args=None,
    report_to="none",
    training_overrides: Optional[dict] = None,
    progress_every: Optional[float] = PROGRESS_EVERY,
) -> dict:
    """Train, evaluate, measure and save one model; returns its row (config, ``eval_loss``, measures).

    Without ``args.progress`` (tqdm bars), a progress line goes to stderr every ``progress_every``
    seconds (None: none; the demo prints its own).

    Training uses ``CollapseTrainer``: every evaluation (``eval_strategy``, and the final one) logs
    ``eval_nc*`` metrics of the validation data beside ``eval_loss`` (``collapse_args``:
    ``CollapseArguments``). The saved measurement is the paper's: statistics over the training
    tokens (``measure_max_tokens``), NC4 on validation tokens. ``training_overrides`` go to
    ``TrainingArguments`` (e.g. ``max_steps``).
    """
    from transformers import GPTNeoForCausalLM, PrinterCallback, TrainingArguments, set_seed

    from ..integrations.trainer import CollapseTrainer

    data = data if data is not None else prepare_data(args)
    name = args.run_name or run_name(args.width, args.depth, args.epochs, args.weight_decay, args.seed, args.data_seed)
    data_seed = args.seed if args.data_seed is None else args.data_seed
    folder = Path(args.output_dir) / name
    set_seed(args.seed)
    tok = data.tokenizer
    config = gpt_neo_config(
        args.width,
        args.depth,
        len(tok),
        num_heads=args.num_heads,
        window_size=args.window_size,
        max_position_embeddings=max(args.block_size, 128),
        eos_token_id=tok.eos_token_id,
    )
    model = GPTNeoForCausalLM(config)
    bf16 = _bf16_available() if args.bf16 is None else args.bf16
    targs = TrainingArguments(
        output_dir=str(folder / "checkpoints"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type=args.lr_scheduler_type,
        warmup_steps=args.warmup_ratio,
        weight_decay=args.weight_decay,
        seed=args.seed,
        data_seed=data_seed,
        bf16=bf16,
        eval_strategy=args.eval_strategy,
        save_strategy="no",
        logging_steps=args.logging_steps,
        report_to=report_to,
        disable_tqdm=not args.progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        **(training_overrides or {}),
    )
    trainer = CollapseTrainer(
        model=model, args=targs, train_dataset=data.train, eval_dataset=data.validation, collapse_args=collapse_args
    )
    if not args.progress:  # no bars, no per-log dicts: one progress line now and then (terminal or file)
        trainer.remove_callback(PrinterCallback)
        if trainer.is_world_process_zero() and progress_every is not None:
            trainer.add_callback(progress_lines(name, progress_every))
    train_out = trainer.train()
    try:
        final_eval = trainer.evaluate()
    except ValueError as e:  # NC of a (tiny) validation set undefined, e.g. fewer than 2 distinct classes
        logger.warning("NC metrics of the final evaluation failed (%s); evaluating the loss only", e)
        trainer.collapse_args = replace(trainer.collapse_args, collapse=False)
        final_eval = trainer.evaluate()
    eval_loss = float(final_eval["eval_loss"])
    model = trainer.model
    if progress_every is not None and trainer.is_world_process_zero():
        print(f"{name}: measuring the trained model (statistics, then NC4) ...", file=sys.stderr, flush=True)
    report = _measure_final(trainer, args, data, name)
    result = report.result
    num_parameters = sum(p.numel() for p in model.parameters())
    info = {
        "name": name,
        "width": args.width,
        "depth": args.depth,
        "epochs": args.epochs,
        "weight_decay": args.weight_decay,
        "seed": args.seed,
        "data_seed": data_seed,
        "num_parameters": num_parameters,
        "eval_loss": eval_loss,
        "train_loss": float(train_out.training_loss),
        "train_tokens": data.train.num_tokens,
        "data": data.source,
        "arguments": asdict(args),
        "final_eval": {k: float(v) for k, v in final_eval.items() if isinstance(v, (int, float))},
        "log_history": trainer.state.log_history,
    }
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # save_strategy="no": only an empty folder
    if trainer.is_world_process_zero():
        save_measured(folder, report, model=model, tokenizer=tok, extra_metrics={"eval_loss": eval_loss})
        atomic_write_text(folder / "run.json", json.dumps(info, indent=2))
    return {
        **{
            k: info[k]
            for k in ("name", "width", "depth", "epochs", "weight_decay", "seed", "data_seed", "num_parameters")
        },
        "val_loss": eval_loss,
        "path": str(folder),
        **{k: float(v) for k, v in result.items()},
    }
