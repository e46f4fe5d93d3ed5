"""``hf-collapse tokens``: the tokens with extreme class-mean norms, CDNV or interference, and look-ups
of named tokens, from a measured folder's per-class outputs (see :mod:`hf_collapse.integrations.token_report`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from ..core.errors import UserFileNotFoundError
from ..core.io import atomic_write_text
from ..integrations.model_source import check_model_source, from_pretrained_or_explain
from ..integrations.token_report import format_report, token_report


def _tokenizer(folder: Path, name: Optional[str]):
    from transformers import AutoTokenizer

    if name:  # a mistyped --tokenizer path or id: one line, not a loading traceback
        check_model_source(name, "tokenizer folder", need_config=False)
        return from_pretrained_or_explain(AutoTokenizer.from_pretrained, name, "tokenizer")
    src = str(folder) if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file() else None
    return AutoTokenizer.from_pretrained(src) if src else None


def run(args) -> int:
    folder = Path(args.folder)
    if not folder.exists():
        raise UserFileNotFoundError(f"no measured folder at {folder}")
    tok = _tokenizer(folder if folder.is_dir() else folder.parent, args.tokenizer)
    rep = token_report(folder, tok, top=args.top, lookup=args.lookup or (), min_count=args.min_count)
    if tok is None:
        print("(no tokenizer in the folder and none given with --tokenizer: token texts are left empty)")
    print(format_report(rep))
    if args.json:
        atomic_write_text(args.json, json.dumps(rep, indent=2))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokens",
        help="tokens with extreme norms / CDNV / interference; look up named tokens",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "folder", help="measured model folder (with collapse/statistics.safetensors and per_class.* tensors)"
    )
    p.add_argument("--lookup", nargs="*", metavar="WORD", help="words to look up (e.g. bank spring Lily Tim)")
    p.add_argument("--top", type=int, default=10, help="tokens per list")
    p.add_argument(
        "--min-count",
        type=int,
        default=2,
        help="rank only classes with at least this many tokens (default 2: singletons, whose mean is "
        "one token, are left out; 1 keeps them)",
    )
    p.add_argument("--tokenizer", help="tokenizer name or folder (default: the measured folder's)")
    p.add_argument("--json", help="also write the report as JSON to this file")
    p.set_defaults(func=run)
