"""Token blocks: a token stream cut into consecutive blocks of ``block_size`` tokens, with an exact budget.

The block stage of the pipeline in :mod:`hf_collapse.integrations.data` (import from there). Block ``i``
is stream tokens ``[i * T, min((i + 1) * T, end))``; ``end`` is the stream's end or the position where
the budget of ``max_tokens`` *labelled* tokens is reached (a block of n tokens has n - 1 labels).
``TokenBlocks`` reads a cached (memory-mapped) tokenized ``Dataset`` with random access;
``StreamingTokenBlocks`` yields the same blocks from an ``IterableDataset``.
"""

from __future__ import annotations

import bisect
import mmap
from typing import Optional

import numpy as np
import torch

from ..core.errors import UserValueError


def budget_end(max_tokens: Optional[int], block_size: int) -> Optional[int]:
    """Stream position after which no token is used: blocks of ``block_size`` tokens hold
    ``block_size - 1`` labels each, so ``max_tokens`` labels need ``q`` full blocks and one of ``r + 1``."""
    if max_tokens is None:
        return None
    q, r = divmod(int(max_tokens), block_size - 1)
    return q * block_size + (r + 1 if r else 0)


def check_block_args(block_size, max_tokens):
    """ValueError unless ``block_size`` is an int >= 2 and ``max_tokens`` a positive int or None."""
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 2:
        raise UserValueError(f"block_size (--block-size) must be an int >= 2, got {block_size!r}")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise UserValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")


def _own_mapping(ds, column: str):
    """The dataset's cache files under mappings of our own: (mmaps, ChunkedArray of ``column``), or
    None when the dataset does not live in cache files (in memory) or its rows are not theirs in order."""
    import pyarrow as pa

    files = [f["filename"] for f in ds.cache_files]
    if not files or not hasattr(mmap, "MADV_DONTNEED"):
        return None
    maps, chunks, rows = [], [], 0
    for path in files:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        table = pa.ipc.open_stream(pa.py_buffer(mm)).read_all()  # zero-copy over the mapping
        if column not in table.column_names:
            return None
        maps.append(mm)
        chunks += table.column(column).chunks
        rows += table.num_rows
    return (maps, chunks) if rows == len(ds) else None


class TokenStream:
    """The ``input_ids`` of a tokenized ``Dataset``, concatenated, as a random-access stream.

    Holds numpy views of the Arrow chunks and their start offsets: O(number of chunks) memory. A
    dataset in the cache is read through mappings of its files that drop their pages from this
    process every ``release_bytes`` read (``madvise(MADV_DONTNEED)``; the page cache keeps them), so
    the resident memory of a pass does not grow with the tokens read either.
    """

    def __init__(self, ds, column: str = "input_ids", release_bytes: int = 8 << 20):
        if getattr(ds, "_indices", None) is not None:  # select/shuffle: write the rows in order first
            ds = ds.flatten_indices()
        self.dataset, self.column, self.release_bytes = ds, column, release_bytes
        own = _own_mapping(ds, column)
        self._maps, arrow_chunks = own if own is not None else ([], ds.data.column(column).chunks)
        self._unreleased = 0
        self.chunks: list[np.ndarray] = []
        for chunk in arrow_chunks:
            flat = chunk.flatten()  # respects the chunk's slice; zero-copy
            if len(flat):
                self.chunks.append(flat.to_numpy(zero_copy_only=False))
        self.starts = [0]
        for c in self.chunks:
            self.starts.append(self.starts[-1] + len(c))

    def __getstate__(self):  # mappings do not pickle: rebuild them from the dataset
        return {"ds": self.dataset, "column": self.column, "release_bytes": self.release_bytes}

    def __setstate__(self, state):
        self.__init__(state["ds"], state["column"], state["release_bytes"])

    def __len__(self) -> int:
        return self.starts[-1]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the stream (a copy, int64)."""
        out = np.empty(max(0, stop - start), dtype=np.int64)
        i = bisect.bisect_right(self.starts, start) - 1
        pos = start
        while pos < stop:
            c = self.chunks[i]
            a = pos - self.starts[i]
            b = min(len(c), stop - self.starts[i])
            out[pos - start : pos - start + b - a] = c[a:b]
            self._unreleased += (b - a) * c.itemsize
            pos += b - a
            i += 1
        if self._maps and self._unreleased > self.release_bytes:
            for mm in self._maps:
                mm.madvise(mmap.MADV_DONTNEED)
            self._unreleased = 0
        return out


class _Blocks:
    """What both block datasets share: the item format and the exact-budget cut."""

    def _setup(self, block_size, max_tokens, drop_last, examples):
        check_block_args(block_size, max_tokens)
        self.block_size, self.max_tokens, self.drop_last, self.examples = block_size, max_tokens, drop_last, examples

    def _item(self, ids: np.ndarray):
        row = torch.from_numpy(ids)  # (n,) int64
        return {"input_ids": row, "labels": row.clone()} if self.examples else row


class TokenBlocks(_Blocks, torch.utils.data.Dataset):
    """Consecutive blocks of ``block_size`` tokens of a tokenized dataset (map-style, random access).

    Block ``i`` is stream tokens ``[i * T, min((i + 1) * T, end))`` where ``end`` is the stream's end
    or the exact budget of ``max_tokens`` labelled tokens, whichever comes first. The last block may
    be shorter (``collate`` pads it) unless ``drop_last``; a last block of one token has no label and
    is dropped. Items are 1-D LongTensors, or ``{"input_ids", "labels"}`` with ``examples=True``.
    """

    def __init__(
        self,
        tokens,
        block_size: int,
        *,
        max_tokens: Optional[int] = None,
        drop_last: bool = False,
        examples: bool = False,
    ):
        self._setup(block_size, max_tokens, drop_last, examples)
        self.stream = tokens if isinstance(tokens, TokenStream) else TokenStream(tokens)
        total = len(self.stream)
        cut = budget_end(max_tokens, block_size)
        self.end = total if cut is None else min(total, cut)
        T = block_size
        n = self.end // T if drop_last else -(-self.end // T)
        if n and not drop_last and self.end - (n - 1) * T < 2:
            n -= 1  # a trailing single token has no next token
        self.end = min(self.end, n * T)
        self.num_blocks = n
        self.available_tokens = total  # tokens in the whole stream (before any budget)

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, i):
        if not -self.num_blocks <= i < self.num_blocks:
            raise IndexError(f"block {i} out of range ({self.num_blocks} blocks)")
        i %= self.num_blocks
        T = self.block_size
        return self._item(self.stream.read(i * T, min((i + 1) * T, self.end)))

    @property
    def num_tokens(self) -> int:
        """Tokens in the blocks."""
        return self.end

    @property
    def num_labelled(self) -> int:
        """Labelled tokens (positions with a next token in the same block)."""
        return self.num_tokens - len(self)

    def to_tensor(self) -> torch.Tensor:
        """All blocks stacked ``(N, T)`` (equal lengths only, e.g. ``drop_last``); small data only."""
        if len(self) == 0:
            raise UserValueError("no block to stack")
        rows = [self[i]["input_ids"] if self.examples else torch.as_tensor(self[i]) for i in range(len(self))]
        if len({len(r) for r in rows}) != 1:
            raise UserValueError("blocks of different lengths cannot be stacked (use drop_last=True)")
        return torch.stack(rows)  # (N, T)


class StreamingTokenBlocks(_Blocks, torch.utils.data.IterableDataset):
    """The blocks of ``TokenBlocks`` from a tokenized ``datasets.IterableDataset``, without materialising it.

    Same cut (consecutive blocks, exact budget, last shorter block unless ``drop_last``), so the
    streamed and the cached pipeline yield the same blocks. Keeps one block of tokens in memory.
    """

    def __init__(
        self,
        tokenized,
        block_size: int,
        *,
        max_tokens: Optional[int] = None,
        drop_last: bool = False,
        examples: bool = False,
        column: str = "input_ids",
    ):
        self._setup(block_size, max_tokens, drop_last, examples)
        self.tokenized, self.column = tokenized, column

    def __iter__(self):
        T = self.block_size
        cut = budget_end(self.max_tokens, T)
        buf: list[int] = []
        pos = 0  # stream position of buf[0]
        for row in self.tokenized:
            buf.extend(int(t) for t in row[self.column])
            while len(buf) >= T and (cut is None or pos + T <= cut):
                yield self._item(np.asarray(buf[:T], dtype=np.int64))
                del buf[:T]
                pos += T
            if cut is not None and pos + len(buf) >= cut:
                break
        if cut is not None:
            buf = buf[: max(0, cut - pos)]
        if buf and (len(buf) == T or (not self.drop_last and len(buf) >= 2)):
            yield self._item(np.asarray(buf, dtype=np.int64))


def collate(blocks):
    """Right-pad blocks (id lists or 1-D tensors): input_ids (B, T), attention_mask (B, T) with 0 on padding."""
    T = max(len(b) for b in blocks)
    ids = torch.zeros(len(blocks), T, dtype=torch.long)
    mask = torch.zeros(len(blocks), T, dtype=torch.long)
    for i, b in enumerate(blocks):
        ids[i, : len(b)] = torch.as_tensor(b)
        mask[i, : len(b)] = 1
    return {"input_ids": ids, "attention_mask": mask}
