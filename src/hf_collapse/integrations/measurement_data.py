"""The data of a measurement: the data flags of ``hf-collapse measure`` and ``hf-collapse sweep`` on the
one pipeline of :mod:`hf_collapse.integrations.data`.

``opts`` is any object with the attributes of those flags: train_file, validation_file, dataset,
dataset_config, split, validation_split, text_column, streaming, max_tokens, nc4_max_tokens,
block_size, batch_size, and optionally num_proc and cache_dir (an ``argparse.Namespace`` of either
command).
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from .data import (
    DEFAULT_HUB_DATASET,
    StreamingTokenBlocks,
    TokenBlocks,
    collate,
    iter_documents,
    load_text_dataset,
    text_blocks,
)


def measurement_documents(opts, which: str):
    """Document iterator of the ``"train"`` (statistics) or ``"validation"`` (NC4) data; None when
    no NC4 data were given."""
    if which == "train":
        if opts.train_file:
            return iter_documents(opts.train_file)
        return iter_dataset_documents(opts.dataset, opts.dataset_config, opts.split, opts.text_column, opts.streaming)
    if opts.validation_file:
        return iter_documents(opts.validation_file)
    if opts.dataset and opts.validation_split:
        return iter_dataset_documents(
            opts.dataset, opts.dataset_config, opts.validation_split, opts.text_column, opts.streaming
        )
    return None


def describe_measurement_data(opts, which: str) -> str:
    """What the data are, as recorded in measured folders: a file's name and sha256, or a Hub
    dataset id, config and split ("" when there are none)."""
    from .folder import file_sha256

    path = opts.train_file if which == "train" else opts.validation_file
    if path:
        return f"file:{os.path.basename(path)} sha256:{file_sha256(path)}"
    split = opts.split if which == "train" else opts.validation_split
    if opts.dataset and split:
        return (
            f"dataset:{opts.dataset}" + (f"/{opts.dataset_config}" if opts.dataset_config else "") + f" split:{split}"
        )
    return ""


def check_measurement_data(opts) -> None:
    """ValueError for a missing or contradictory data choice or budget."""
    if not opts.train_file and not opts.dataset:
        raise ValueError("give the measurement data: --train-file FILE or --dataset NAME")
    if opts.train_file and opts.dataset:
        raise ValueError("give either --train-file or --dataset, not both")
    if opts.max_tokens is not None and opts.max_tokens < 1:
        raise ValueError(f"--max-tokens must be positive, got {opts.max_tokens}")


def check_measurement_files(opts) -> None:
    """FileNotFoundError for a missing text file, ValueError for a bad block or batch size or worker count."""
    for flag, path in (("--train-file", opts.train_file), ("--validation-file", opts.validation_file)):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"no text file at {path!r} ({flag})")
    if opts.block_size < 2:
        raise ValueError(f"--block-size must be at least 2, got {opts.block_size}")
    if opts.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {opts.batch_size}")
    num_proc = getattr(opts, "num_proc", None)
    if num_proc is not None and num_proc < 1:
        raise ValueError(f"--num-proc must be positive, got {num_proc}")


def nc4_budget(opts) -> Optional[int]:
    """Token budget of the NC4 pass: ``nc4_max_tokens``, else ``max_tokens``."""
    return opts.nc4_max_tokens if opts.nc4_max_tokens is not None else opts.max_tokens


def measurement_blocks(opts, tokenizer, which: str):
    """Token blocks (``TokenBlocks``, or ``StreamingTokenBlocks`` with ``opts.streaming``) of the
    statistics (``"train"``) or NC4 (``"validation"``) data, cut to the budget; None when there are no
    NC4 data. ValueError when the data hold no labelled token."""
    budget = opts.max_tokens if which == "train" else nc4_budget(opts)
    common = dict(
        max_tokens=budget,
        num_proc=getattr(opts, "num_proc", None),
        cache_dir=getattr(opts, "cache_dir", None),
        streaming=bool(opts.streaming),
    )
    split = opts.split if which == "train" else opts.validation_split
    path = opts.train_file if which == "train" else opts.validation_file
    if path:
        blocks = text_blocks(tokenizer, opts.block_size, files=path, **common)
    elif opts.dataset and split:
        blocks = text_blocks(
            tokenizer,
            opts.block_size,
            dataset=opts.dataset,
            config=opts.dataset_config,
            split=split,
            text_column=opts.text_column,
            **common,
        )
    else:
        return None
    if isinstance(blocks, TokenBlocks) and len(blocks) == 0:
        raise ValueError(f"the {which} data hold no labelled token (empty text?)")
    return blocks


def budget_shortfall(blocks, which: str, budget: Optional[int]) -> Optional[str]:
    """The note to print when the data hold fewer labelled tokens than the budget (all are measured)."""
    if budget is None or not isinstance(blocks, TokenBlocks) or blocks.num_labelled >= budget:
        return None
    return (
        f"the {which} data hold {blocks.num_labelled:,} labelled tokens, fewer than the budget of "
        f"{budget:,}: measuring all of them"
    )


def blocks_loader(blocks, batch_size: int, prepare=None):
    """A DataLoader over token blocks (``collate`` pads them); ``prepare`` (e.g. an Accelerator's
    ``prepare_data_loader``) shards it over processes. None for None; a list of id lists also works."""
    if blocks is None:
        return None
    if not isinstance(blocks, (TokenBlocks, StreamingTokenBlocks)):
        blocks = TokenBlocks(blocks)
    dl = torch.utils.data.DataLoader(blocks, batch_size=batch_size, collate_fn=collate)
    return prepare(dl) if prepare is not None else dl


# ---------------------------------------------------------------------------------------------
# Hub datasets


def load_hub_stories(
    dataset_name: str = DEFAULT_HUB_DATASET,
    split: str = "train",
    text_column: str = "text",
    max_stories: Optional[int] = None,
    **kwargs,
) -> list[str]:
    """Texts of a Hub dataset (default TinyStories); with ``max_stories`` the split is streamed."""
    ds = load_text_dataset(
        dataset=dataset_name, split=split, text_column=text_column, streaming=max_stories is not None, **kwargs
    )
    if max_stories is not None:
        ds = ds.take(max_stories)
    return [t for t in (row[text_column] for row in ds) if isinstance(t, str) and t.strip()]


def iter_dataset_documents(name, config, split, text_column, streaming=False):
    """Texts of a dataset split, streamed row by row (non-empty ones)."""
    ds = load_text_dataset(dataset=name, config=config, split=split, text_column=text_column, streaming=streaming)
    for row in ds:
        t = row[text_column]
        if isinstance(t, str) and t.strip():
            yield t
