"""The data of a measurement: :class:`DataSpec`, the data flags of ``hf-collapse measure`` and
``hf-collapse sweep`` as one typed object, on the one pipeline of :mod:`hf_collapse.integrations.data`.

The CLI generates its data flags from ``DataSpec``'s fields (``--train-file``, ``--max-tokens``, ...);
the library only ever sees the ``DataSpec``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..core.errors import UserFileNotFoundError, UserValueError
from .data import DEFAULT_HUB_DATASET, TokenBlocks, collate, file_digest, iter_documents, load_text_dataset, text_blocks

WHICH = ("train", "validation")  # the statistics data (pass 1) and the NC4 data (pass 2)


@dataclass(frozen=True)
class DataSpec:
    """Where the text of a measurement comes from, how it is cut into blocks, and the token budgets."""

    train_file: Optional[str] = field(default=None, metadata={"help": "text file for the statistics (pass 1)"})
    validation_file: Optional[str] = field(default=None, metadata={"help": "text file for NC4 (pass 2)"})
    dataset: Optional[str] = field(default=None, metadata={"help": "Hub dataset id (instead of --train-file)"})
    dataset_config: Optional[str] = field(default=None, metadata={"help": "dataset configuration name"})
    split: str = field(default="train", metadata={"help": "split for the statistics"})
    validation_split: Optional[str] = field(default=None, metadata={"help": "split for NC4, e.g. validation"})
    text_column: str = field(default="text", metadata={"help": "column holding the text"})
    streaming: bool = field(
        default=False,
        metadata={"help": "stream the data (an IterableDataset: nothing downloaded or cached, tokenized on the fly)"},
    )
    num_proc: Optional[int] = field(
        default=None,
        metadata={"help": "tokenization workers (default: the cores available, one per 1,000 documents at most)"},
    )
    cache_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": "datasets cache for the tokenized data (default: HF_DATASETS_CACHE, ~/.cache/huggingface/datasets)"
        },
    )
    max_tokens: Optional[int] = field(default=None, metadata={"help": "budget of labelled tokens for the statistics"})
    nc4_max_tokens: Optional[int] = field(default=None, metadata={"help": "budget for NC4 (default: --max-tokens)"})
    block_size: int = field(default=256, metadata={"help": "tokens per sequence"})
    batch_size: int = field(default=8, metadata={"help": "sequences per batch and process"})

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        """ValueError for a missing or contradictory data choice, budget, block or batch size;
        FileNotFoundError for a missing text file. Reads no data."""
        if not self.train_file and not self.dataset:
            raise UserValueError("give the measurement data: --train-file FILE or --dataset NAME")
        if self.train_file and self.dataset:
            raise UserValueError("give either --train-file or --dataset, not both")
        for flag, value in (("--max-tokens", self.max_tokens), ("--nc4-max-tokens", self.nc4_max_tokens)):
            if value is not None and value < 1:
                raise UserValueError(f"{flag} must be positive, got {value}")
        for flag, path in (("--train-file", self.train_file), ("--validation-file", self.validation_file)):
            if path and os.path.isdir(path):
                raise UserValueError(f"{flag} {path!r} is a directory; expected a text file")
            if path and not os.path.isfile(path):
                raise UserFileNotFoundError(f"no text file at {path!r} ({flag})")
        if self.block_size < 2:
            raise UserValueError(f"--block-size must be at least 2, got {self.block_size}")
        if self.batch_size < 1:
            raise UserValueError(f"--batch-size must be positive, got {self.batch_size}")
        if self.num_proc is not None and self.num_proc < 1:
            raise UserValueError(f"--num-proc must be positive, got {self.num_proc}")

    # ------------------------------------------------------------------ the two data
    def _source(self, which: str) -> tuple[Optional[str], Optional[str]]:
        """(file, split) of the statistics (``"train"``) or NC4 (``"validation"``) data."""
        if which not in WHICH:
            raise UserValueError(f"which must be one of {WHICH}, got {which!r}")
        if which == "train":
            return self.train_file, (self.split if self.dataset else None)
        return self.validation_file, (self.validation_split if self.dataset else None)

    def has(self, which: str) -> bool:
        path, split = self._source(which)
        return bool(path or split)

    def budget(self, which: str) -> Optional[int]:
        """Token budget of the statistics pass, or of the NC4 pass (``nc4_max_tokens``, else ``max_tokens``)."""
        if which == "train":
            return self.max_tokens
        return self.nc4_max_tokens if self.nc4_max_tokens is not None else self.max_tokens

    def describe(self, which: str) -> Optional[str]:
        """What the data are, as recorded in measured folders: a file's name and sha256, or a Hub
        dataset id, split and config (None when there are none). Hashes the file: call once per run."""
        path, split = self._source(which)
        if path:
            return f"file:{os.path.basename(path)} sha256:{file_digest(path)}"
        if split:
            return f"dataset:{self.dataset} split:{split}" + (
                f" config:{self.dataset_config}" if self.dataset_config else ""
            )
        return None

    def documents(self, which: str):
        """Document iterator of the data; None when there are none."""
        path, split = self._source(which)
        if path:
            return iter_documents(path)
        if split:
            return iter_dataset_documents(self.dataset, self.dataset_config, split, self.text_column, self.streaming)
        return None

    def blocks(self, tokenizer, which: str):
        """Token blocks (``TokenBlocks``, or ``StreamingTokenBlocks`` when streaming) of the data, cut to
        the budget; None when there are none. ValueError when the data hold no labelled token."""
        path, split = self._source(which)
        common = dict(
            max_tokens=self.budget(which), num_proc=self.num_proc, cache_dir=self.cache_dir, streaming=self.streaming
        )
        if path:
            blocks = text_blocks(tokenizer, self.block_size, files=path, **common)
        elif split:
            blocks = text_blocks(
                tokenizer,
                self.block_size,
                dataset=self.dataset,
                config=self.dataset_config,
                split=split,
                text_column=self.text_column,
                **common,
            )
        else:
            return None
        if isinstance(blocks, TokenBlocks) and len(blocks) == 0:
            raise UserValueError(f"the {which} data hold no labelled token (empty text?)")
        return blocks

    def shortfall(self, blocks, which: str) -> Optional[str]:
        """The note to print when the data hold fewer labelled tokens than the budget (all are measured)."""
        budget = self.budget(which)
        if budget is None or not isinstance(blocks, TokenBlocks) or blocks.num_labelled >= budget:
            return None
        return (
            f"the {which} data hold {blocks.num_labelled:,} labelled tokens, fewer than the budget of "
            f"{budget:,}: measuring all of them"
        )

    def loader(self, blocks, prepare=None):
        """A DataLoader over token blocks (``collate`` pads them); ``prepare`` (e.g. an Accelerator's
        ``prepare_data_loader``) shards it over processes. None for None."""
        if blocks is None:
            return None
        dl = torch.utils.data.DataLoader(blocks, batch_size=self.batch_size, collate_fn=collate)
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
