"""Text into token blocks: the one data pipeline of ``hf-collapse measure``, the study and ``train_clm.py``.

The pipeline, the way ``run_clm.py`` users know it, on ``datasets``::

    text files / Hub dataset  --load_text_dataset-->   Dataset (one document per row, column "text")
                              --tokenize_dataset-->    Dataset (column "input_ids", Arrow cache, num_proc)
                              --TokenBlocks-->         blocks of block_size tokens, read memory-mapped

- Text files are split into documents on ``<|endoftext|>`` lines when the file has one, else on blank
  lines; the file is read line by line into the Arrow cache (``Dataset.from_generator``), never whole.
- Tokenization is ``Dataset.map(batched=True, num_proc=...)`` with a fingerprint of (data, tokenizer,
  options): a second run on the same data and tokenizer loads the cached Arrow file instead of
  tokenizing again. Tokens are stored as uint16 when the vocabulary fits (GPT-2: 50,257), else int32.
- ``TokenBlocks`` cuts the concatenated token stream into consecutive blocks of ``block_size`` tokens,
  reading only the block it is asked for from the memory-mapped cache: memory does not grow with
  the corpus. With a budget ``max_tokens`` of *labelled* tokens (a block of n tokens has n - 1) the
  stream ends exactly where the budget is reached, before any batching, so 1 and N processes measure
  the same tokens. ``--streaming`` uses ``StreamingTokenBlocks`` over an ``IterableDataset``: the
  same blocks, without materialising the split.

Two packing conventions, options of the same pipeline:

- measuring (default): a BOS token in front of every document when the tokenizer has one; the last,
  shorter block is kept (its labels count).
- GPT/TinyStories training (``eos=True, bos=False, drop_last=True``): every document followed by the
  end-of-text token, the ragged tail dropped; examples carry ``labels`` (the model shifts them).

The built-in synthetic corpus is :mod:`hf_collapse.study.corpus`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Optional

from ..core.errors import UserFileNotFoundError, UserValueError
from .blocks import StreamingTokenBlocks, TokenBlocks, TokenStream, budget_end, check_block_args, collate  # noqa: F401  (re-exported: the pipeline's public names live here)

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"
DEFAULT_HUB_DATASET = "roneneldan/TinyStories"
PIPELINE_VERSION = "1"  # part of every cache fingerprint: bump when the tokenized layout changes


# ---------------------------------------------------------------------------------------------
# tokenizers


def load_tokenizer(name_or_path: str):
    """``AutoTokenizer.from_pretrained`` with a pad token (the eos token) set, as packing needs none but collators do."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tokenizer_digest(tokenizer) -> str:
    """sha256 of what decides the token ids: class, vocabulary, merges, normaliser, special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:  # a slow tokenizer: its vocabulary
        text = repr(sorted(tokenizer.get_vocab().items()))
    text = f"{type(tokenizer).__name__}|{tokenizer.bos_token_id}|{tokenizer.eos_token_id}|{text}"
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# documents


def _file_format(path: str) -> str:
    """``"eos"`` when the file has a ``<|endoftext|>`` line, else ``"blank"``; streams the file.

    Raises FileNotFoundError for a missing file and ValueError for one without any text.
    """
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"no text file at {path!r}")
    has_text = has_eos = False
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                s = line.strip()
                if s == EOS:
                    has_eos = True
                elif s:
                    has_text = True
                if has_eos and has_text:
                    break
    except UnicodeDecodeError as e:
        raise UserValueError(f"{path!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not has_text:
        raise UserValueError(f"{path!r} holds no text (empty file?): no labelled token to measure")
    return "eos" if has_eos else "blank"


def split_documents(lines: Iterable[str], fmt: str = "eos") -> Iterator[str]:
    """Documents of a line stream: separated by ``<|endoftext|>`` lines (``fmt="eos"``) or by blank
    lines (``fmt="blank"``); stripped, empty ones skipped. O(one document) memory."""
    if fmt not in ("eos", "blank"):
        raise UserValueError(f"fmt must be 'eos' or 'blank', got {fmt!r}")
    current: list[str] = []
    for line in lines:
        line = line.rstrip("\r\n")
        if (line.strip() == EOS) if fmt == "eos" else (not line.strip()):
            doc = "\n".join(current).strip()
            if doc:
                yield doc
            current = []
        else:
            current.append(line)
    doc = "\n".join(current).strip()
    if doc:
        yield doc


def iter_documents(path: str | os.PathLike) -> Iterator[str]:
    """Documents of a text file (``<|endoftext|>`` lines if present, else blank lines), streamed."""
    path = os.fspath(path)
    fmt = _file_format(path)
    with open(path, encoding="utf-8") as f:
        yield from split_documents(f, fmt)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str) -> str:
    """sha256 of a file's bytes (memoised on path, size and mtime)."""
    st = os.stat(path)
    return _file_sha256(os.path.abspath(path), st.st_size, st.st_mtime_ns)


def _generate_documents(paths: list[str], formats: list[str], digests: list[str]):
    """Rows ``{"text": document}`` of the files, in order (``digests`` only key the cache)."""
    for path, fmt in zip(paths, formats):
        with open(path, encoding="utf-8") as f:
            for doc in split_documents(f, fmt):
                yield {"text": doc}


def check_cache_dir(cache_dir: Optional[str]) -> Optional[str]:
    """Create ``cache_dir`` if needed and make sure it is writable; ValueError in one line if not."""
    if cache_dir is None:
        import datasets

        target = datasets.config.HF_DATASETS_CACHE
    else:
        target = cache_dir
    target = os.fspath(target)
    try:
        os.makedirs(target, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UserValueError(
            f"cannot write the datasets cache directory {target!r}: {e.strerror or e} "
            f"(choose another with --cache-dir or HF_DATASETS_CACHE)"
        ) from None
    return cache_dir


def load_text_dataset(
    files: Optional[str | os.PathLike | Sequence] = None,
    *,
    dataset: Optional[str] = None,
    config: Optional[str] = None,
    split: str = "train",
    text_column: str = "text",
    streaming: bool = False,
    cache_dir: Optional[str] = None,
):
    """Documents as a ``datasets.Dataset`` (or ``IterableDataset`` when ``streaming``), text in ``text_column``.

    ``files``: one or more local text files (documents split on ``<|endoftext|>`` lines, else blank
    lines; the column is ``"text"``). ``dataset``: a Hub id or local dataset folder for
    ``datasets.load_dataset`` (one document per row). Errors are one-line ValueError/FileNotFoundError.
    """
    import datasets

    if (files is None) == (dataset is None):
        raise UserValueError("give either files or dataset")
    check_cache_dir(cache_dir)
    if files is not None:
        paths = [os.fspath(p) for p in ([files] if isinstance(files, (str, os.PathLike)) else files)]
        formats = [_file_format(p) for p in paths]  # FileNotFoundError / empty file first, before datasets
        kwargs = {"paths": paths, "formats": formats, "digests": [file_digest(p) for p in paths]}
        features = datasets.Features({"text": datasets.Value("string")})
        if streaming:
            return datasets.IterableDataset.from_generator(_generate_documents, features=features, gen_kwargs=kwargs)
        fp = hashlib.sha256(repr((PIPELINE_VERSION, formats, kwargs["digests"])).encode()).hexdigest()[:32]
        try:
            return datasets.Dataset.from_generator(
                _generate_documents, features=features, gen_kwargs=kwargs, cache_dir=cache_dir, fingerprint=fp
            )
        except OSError as e:
            raise UserValueError(f"could not write {paths} into the datasets cache: {e}") from None
    try:
        ds = datasets.load_dataset(dataset, config, split=split, streaming=streaming, cache_dir=cache_dir)
    except Exception as e:  # network, missing split, unreadable files, ... -> one clear line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserValueError(
            f"could not load dataset {dataset!r} (config {config!r}, split {split!r}): {msg}"
        ) from None
    cols = ds.column_names
    if cols is None:  # a streamed dataset whose features are unknown until the first row
        first = next(iter(ds), None)
        cols = [] if first is None else list(first)
    if text_column not in cols:
        raise UserValueError(
            f"dataset {dataset!r} split {split!r} has no column {text_column!r}; columns: {cols}; "
            f"choose one with --text-column"
        )
    return ds


# ---------------------------------------------------------------------------------------------
# tokenization


class _Tokenize:
    """Batched map function: texts -> token ids (BOS in front / EOS after each document as asked).

    A class (not a closure) so that ``num_proc`` workers can pickle it; empty texts give no row.
    """

    def __init__(self, tokenizer, text_column: str, bos_id: Optional[int], eos_id: Optional[int]):
        self.tokenizer, self.text_column, self.bos_id, self.eos_id = tokenizer, text_column, bos_id, eos_id

    def __call__(self, batch):
        texts = [t for t in batch[self.text_column] if isinstance(t, str) and t.strip()]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        pre = [] if self.bos_id is None else [self.bos_id]
        post = [] if self.eos_id is None else [self.eos_id]
        return {"input_ids": [pre + x + post for x in ids]}


def _token_features(tokenizer):
    import datasets

    # uint16 halves the cache (and the pages read back) for vocabularies up to 65,536 ids
    dtype = "uint16" if len(tokenizer) <= 65536 else "int32"
    return datasets.Features({"input_ids": datasets.List(datasets.Value(dtype))})


def default_num_proc(num_rows: Optional[int]) -> int:
    """Workers for tokenization: the cores available, but one per 1,000 documents at most."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if num_rows is None:
        return cores
    return max(1, min(cores, num_rows // 1000))


def tokenize_dataset(
    ds,
    tokenizer,
    *,
    text_column: str = "text",
    bos: bool = True,
    eos: bool = False,
    num_proc: Optional[int] = None,
    batch_size: int = 1000,
):
    """``ds.map(batched=True, num_proc=...)`` into a dataset with one column ``input_ids`` per document.

    ``bos``: put the tokenizer's BOS token (if it has one) in front of every document; ``eos``: put its
    end-of-text token after every document. A map-style ``ds`` backed by cache files is tokenized
    into the Arrow cache under a fingerprint of (documents, tokenizer, options): the same request
    again loads the cached file. An ``IterableDataset`` is tokenized lazily while iterated.
    """
    import datasets

    bos_id = tokenizer.bos_token_id if bos else None
    eos_id = tokenizer.eos_token_id if eos else None
    if eos and eos_id is None:
        raise UserValueError("the tokenizer has no eos token to separate packed texts")
    fn = _Tokenize(tokenizer, text_column, bos_id, eos_id)
    features = _token_features(tokenizer)
    cols = ds.column_names
    if isinstance(ds, datasets.IterableDataset):
        if cols is None:  # features unknown until read: keep only the text, so the output is input_ids alone
            ds, cols = ds.select_columns([text_column]), [text_column]
        return ds.map(fn, batched=True, batch_size=batch_size, remove_columns=cols, features=features)
    if num_proc is None:
        num_proc = default_num_proc(len(ds))
    num_proc = max(1, min(int(num_proc), len(ds) or 1))
    fp = hashlib.sha256(
        repr(
            (
                PIPELINE_VERSION,
                ds._fingerprint,
                tokenizer_digest(tokenizer),
                text_column,
                bos_id,
                eos_id,
                features["input_ids"].feature.dtype,
            )
        ).encode()
    ).hexdigest()[:32]
    try:
        return ds.map(
            fn,
            batched=True,
            batch_size=batch_size,
            remove_columns=cols,
            features=features,
            num_proc=num_proc if num_proc > 1 else None,
            new_fingerprint=fp,
            desc="tokenizing",
        )
    except OSError as e:
        raise UserValueError(f"could not write the tokenized data into the datasets cache: {e}") from None


def text_blocks(
    tokenizer,
    block_size: int,
    *,
    files=None,
    dataset: Optional[str] = None,
    config=None,
    split: str = "train",
    text_column: str = "text",
    streaming: bool = False,
    max_tokens: Optional[int] = None,
    num_proc: Optional[int] = None,
    cache_dir: Optional[str] = None,
    bos: bool = True,
    eos: bool = False,
    drop_last: bool = False,
    examples: bool = False,
):
    """The whole pipeline: text files or a dataset -> documents -> token ids (cached) -> blocks.

    Returns ``TokenBlocks`` (map-style, cached, memory-mapped) or ``StreamingTokenBlocks`` (``streaming``).
    """
    check_block_args(block_size, max_tokens)
    docs = load_text_dataset(
        files,
        dataset=dataset,
        config=config,
        split=split,
        text_column=text_column,
        streaming=streaming,
        cache_dir=cache_dir,
    )
    tokenized = tokenize_dataset(
        docs, tokenizer, text_column="text" if files is not None else text_column, bos=bos, eos=eos, num_proc=num_proc
    )
    cls = StreamingTokenBlocks if streaming else TokenBlocks
    return cls(tokenized, block_size, max_tokens=max_tokens, drop_last=drop_last, examples=examples)


def blocks_from_texts(
    texts: Sequence[str],
    tokenizer,
    block_size: int,
    *,
    max_tokens: Optional[int] = None,
    bos: bool = True,
    eos: bool = False,
    drop_last: bool = False,
    examples: bool = False,
    num_proc: Optional[int] = 1,
) -> TokenBlocks:
    """The pipeline on texts already in memory (an in-memory ``Dataset``, nothing cached)."""
    import datasets

    ds = datasets.Dataset.from_dict({"text": list(texts)})
    tokenized = tokenize_dataset(ds, tokenizer, bos=bos, eos=eos, num_proc=num_proc)
    return TokenBlocks(tokenized, block_size, max_tokens=max_tokens, drop_last=drop_last, examples=examples)
