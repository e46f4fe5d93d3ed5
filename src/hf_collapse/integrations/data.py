"""Text into token blocks: tokenizers, GPT-style packing, document iterators over text files and Hub datasets.

Packing (``pack_texts``) follows GPT/TinyStories practice: every text is tokenized, followed by the
end-of-text token, all are concatenated, and the stream is cut into chunks of ``block_size``
tokens; the ragged tail is dropped. Labels are the inputs (the model shifts them). ``token_blocks``
cuts a document stream at an exact budget of labelled tokens (what ``hf-collapse measure`` uses).
The built-in synthetic corpus is :mod:`hf_collapse.study.corpus`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Optional

import torch

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"
DEFAULT_HUB_DATASET = "roneneldan/TinyStories"

# ---------------------------------------------------------------------------------------------
# tokenizers


def load_tokenizer(name_or_path: str):
    """``AutoTokenizer.from_pretrained`` with a pad token (the eos token) set, as packing needs none but collators do."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# ---------------------------------------------------------------------------------------------
# packing


def pack_token_ids(sequences: Iterable[Sequence[int]], block_size: int, eos_id: Optional[int],
                   max_blocks: Optional[int] = None) -> torch.Tensor:
    """GPT-style packing: concatenate ``seq + [eos]`` for every sequence, cut into rows of ``block_size``.

    Returns a LongTensor ``(N, block_size)``; the ragged tail (< block_size tokens) is dropped.
    ``eos_id=None`` concatenates without separators. Stops after ``max_blocks`` rows if given.
    """
    if not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size must be an int >= 2, got {block_size!r}")
    stream: list[int] = []
    limit = None if max_blocks is None else max_blocks * block_size
    for seq in sequences:
        stream.extend(int(t) for t in seq)
        if eos_id is not None:
            stream.append(int(eos_id))
        if limit is not None and len(stream) >= limit:
            break
    n = len(stream) // block_size
    if max_blocks is not None:
        n = min(n, max_blocks)
    if n == 0:
        raise ValueError(f"the texts hold {len(stream)} tokens, fewer than one block of {block_size}")
    return torch.tensor(stream[: n * block_size], dtype=torch.long).view(n, block_size)  # (N, T)


def pack_texts(texts: Sequence[str], tokenizer, block_size: int, max_blocks: Optional[int] = None,
               batch_size: int = 1000) -> torch.Tensor:
    """Tokenize ``texts`` (no special tokens added) and pack them with the tokenizer's eos token: ``(N, T)``."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token to separate packed texts")

    def batches():
        for i in range(0, len(texts), batch_size):
            yield from tokenizer(list(texts[i:i + batch_size]), add_special_tokens=False)["input_ids"]

    return pack_token_ids(batches(), block_size, tokenizer.eos_token_id, max_blocks=max_blocks)


class PackedDataset(torch.utils.data.Dataset):
    """Rows of a packed ``(N, T)`` tensor as ``{"input_ids", "labels"}`` examples for ``Trainer``."""

    def __init__(self, blocks: torch.Tensor):
        if not isinstance(blocks, torch.Tensor) or blocks.dim() != 2:
            raise TypeError("PackedDataset expects a (N, T) LongTensor from pack_texts / pack_token_ids")
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i):
        row = self.blocks[i]
        return {"input_ids": row, "labels": row.clone()}


# ---------------------------------------------------------------------------------------------
# loaders


def read_stories(path: str | os.PathLike, separator: str = EOS, max_stories: Optional[int] = None) -> list[str]:
    """Stories from a TinyStories-format text file: stories separated by lines holding ``separator``.

    A file without any separator line (e.g. the TinyStories validation text) is returned as one
    text, so packing adds no end-of-text tokens inside it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no text file at {path!r}")
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    stories, current = [], []
    for line in raw.splitlines():
        if line.strip() == separator:
            stories.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    stories.append("\n".join(current).strip())
    stories = [s for s in stories if s]
    if max_stories is not None:
        stories = stories[:max_stories]
    if not stories:
        raise ValueError(f"{path!r} holds no text")
    return stories


def load_hub_stories(dataset_name: str = DEFAULT_HUB_DATASET, split: str = "train", text_column: str = "text",
                     max_stories: Optional[int] = None, **kwargs) -> list[str]:
    """Texts of a Hugging Face Hub dataset (default TinyStories) via ``datasets.load_dataset``.

    With ``max_stories`` the split is streamed and only that many stories are read.
    """
    import datasets

    if max_stories is not None:
        ds = datasets.load_dataset(dataset_name, split=split, streaming=True, **kwargs)
        out = []
        for ex in ds:
            if len(out) >= max_stories:
                break
            out.append(ex[text_column])
        return out
    ds = datasets.load_dataset(dataset_name, split=split, **kwargs)
    if text_column not in ds.column_names:
        raise ValueError(f"dataset {dataset_name!r} has no column {text_column!r} (columns: {ds.column_names})")
    return list(ds[text_column])


# ---------------------------------------------------------------------------- text files and datasets -> token blocks
def iter_file_documents(path):
    """Documents of a text file: split on ``<|endoftext|>`` lines if present, else on blank lines."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no text file at {path!r}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    sep = "<|endoftext|>"
    parts = text.split(sep) if sep in text else text.split("\n\n")
    for p in parts:
        p = p.strip()
        if p:
            yield p


def iter_dataset_documents(name, config, split, text_column, streaming=False):
    """The non-empty texts of ``text_column`` of a Hub dataset split; ValueError for a load failure or a missing column."""
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=streaming)
    except Exception as e:  # network, missing split, ... -> one clear line
        raise ValueError(f"could not load dataset {name!r} (config {config!r}, split {split!r}): {e}") from e
    cols = ds.column_names if ds.column_names is not None else list(next(iter(ds)).keys())
    if text_column not in cols:
        raise ValueError(f"dataset {name!r} split {split!r} has no column {text_column!r}; columns: {cols}; "
                         f"choose one with --text-column")
    for row in ds:
        t = row[text_column]
        if isinstance(t, str) and t.strip():
            yield t


def token_blocks(documents, tokenizer, block_size: int, max_tokens):
    """Blocks (lists of ids) of at most ``block_size`` tokens holding exactly ``max_tokens``
    labelled positions (block of n tokens -> n - 1 labels), or all the data when ``max_tokens`` is None."""
    if block_size < 2:
        raise ValueError(f"--block-size must be at least 2, got {block_size}")
    bos = tokenizer.bos_token_id
    blocks, buf, labelled = [], [], 0
    for doc in documents:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        if bos is not None:
            ids = [bos] + ids
        buf.extend(ids)
        while len(buf) >= block_size:
            take = block_size
            if max_tokens is not None:
                take = min(take, max_tokens - labelled + 1)
            blocks.append(buf[:take])
            labelled += take - 1
            buf = buf[take:]
            if max_tokens is not None and labelled >= max_tokens:
                return blocks
    if len(buf) >= 2 and (max_tokens is None or labelled < max_tokens):
        take = len(buf) if max_tokens is None else min(len(buf), max_tokens - labelled + 1)
        blocks.append(buf[:take])
    return blocks


class TokenBlocks(torch.utils.data.Dataset):
    """A list of token-id blocks as a map-style dataset (``collate`` pads them)."""

    def __init__(self, blocks):
        self.blocks = blocks

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        return self.blocks[i]


def collate(blocks):
    """Right-pad a list of id lists: input_ids (B, T), attention_mask (B, T) with 0 on padding."""
    T = max(len(b) for b in blocks)
    ids = torch.zeros(len(blocks), T, dtype=torch.long)
    mask = torch.zeros(len(blocks), T, dtype=torch.long)
    for i, b in enumerate(blocks):
        ids[i, :len(b)] = torch.tensor(b)
        mask[i, :len(b)] = 1
    return {"input_ids": ids, "attention_mask": mask}


# ---------------------------------------------------------------------------------------------
# the data of a measurement (the data flags of ``hf-collapse measure`` and ``hf-collapse sweep``)
#
# ``opts`` is any object with the attributes of those flags: train_file, validation_file, dataset,
# dataset_config, split, validation_split, text_column, streaming, max_tokens, nc4_max_tokens,
# block_size, batch_size (an ``argparse.Namespace`` of either command).


def measurement_documents(opts, which: str):
    """Document iterator of the ``"train"`` (statistics) or ``"validation"`` (NC4) data; None when
    no NC4 data were given."""
    if which == "train":
        if opts.train_file:
            return iter_file_documents(opts.train_file)
        return iter_dataset_documents(opts.dataset, opts.dataset_config, opts.split, opts.text_column, opts.streaming)
    if opts.validation_file:
        return iter_file_documents(opts.validation_file)
    if opts.dataset and opts.validation_split:
        return iter_dataset_documents(opts.dataset, opts.dataset_config, opts.validation_split, opts.text_column,
                                      opts.streaming)
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
        return f"dataset:{opts.dataset}" + (f"/{opts.dataset_config}" if opts.dataset_config else "") + f" split:{split}"
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
    """FileNotFoundError for a missing text file, ValueError for a bad block or batch size."""
    for flag, path in (("--train-file", opts.train_file), ("--validation-file", opts.validation_file)):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"no text file at {path!r} ({flag})")
    if opts.block_size < 2:
        raise ValueError(f"--block-size must be at least 2, got {opts.block_size}")
    if opts.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {opts.batch_size}")


def nc4_budget(opts) -> Optional[int]:
    """Token budget of the NC4 pass: ``nc4_max_tokens``, else ``max_tokens``."""
    return opts.nc4_max_tokens if opts.nc4_max_tokens is not None else opts.max_tokens


def measurement_blocks(opts, tokenizer, which: str) -> Optional[list[list[int]]]:
    """Token blocks of the statistics (``"train"``) or NC4 (``"validation"``) data, cut to the
    budget; None when there are no NC4 data. ValueError when the data hold no labelled token."""
    docs = measurement_documents(opts, which)
    if docs is None:
        return None
    blocks = token_blocks(docs, tokenizer, opts.block_size, opts.max_tokens if which == "train" else nc4_budget(opts))
    if not blocks:
        raise ValueError(f"the {which} data hold no labelled token (empty text?)")
    return blocks


def blocks_loader(blocks, batch_size: int, prepare=None):
    """A DataLoader over token blocks (``collate`` pads them); ``prepare`` (e.g. an Accelerator's
    ``prepare_data_loader``) shards it over processes. None for None."""
    if blocks is None:
        return None
    dl = torch.utils.data.DataLoader(TokenBlocks(blocks), batch_size=batch_size, collate_fn=collate)
    return prepare(dl) if prepare is not None else dl
