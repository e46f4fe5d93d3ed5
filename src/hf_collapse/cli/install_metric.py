"""``hf-collapse install-metric``: register the ``neural_collapse`` evaluate metric (see ``integrations.metric``).

hf-collapse install-metric                      # register in $HF_MODULES_CACHE (idempotent)
hf-collapse install-metric --check              # exit 1 unless registered and up to date
hf-collapse install-metric --export DIR         # also write the shipped module folder (a Space, or
                                                # ./neural_collapse: the bare name from that directory)

Registration writes, under $HF_MODULES_CACHE (default $HF_HOME/modules):
evaluate_modules/metrics/evaluate-metric--neural_collapse/<sha256>/neural_collapse.py (+ .json, __init__.py files).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from ..core.errors import UserValueError
from ..integrations import metric as reg


def add_parser(sub) -> None:
    p = sub.add_parser(
        "install-metric",
        help="make evaluate.load('neural_collapse') work offline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--modules-cache",
        default=None,
        help="evaluate's modules cache (default: $HF_MODULES_CACHE, else $HF_HOME/modules)",
    )
    p.add_argument("--check", action="store_true", help="only check; exit 1 when not registered or outdated")
    p.add_argument(
        "--export",
        default=None,
        metavar="DIR",
        help="also copy the shipped metric files (" + ", ".join(reg.SHIPPED_FILES) + ") into DIR",
    )
    p.set_defaults(func=run)


def export_metric(directory) -> list[Path]:
    """Copy the shipped metric folder to ``directory`` byte for byte (e.g. to push an evaluate Space)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in reg.SHIPPED_FILES:
        tmp = out / f".tmp-{name}"
        shutil.copyfile(reg.shipped_metric_dir() / name, tmp)
        os.replace(tmp, out / name)
        written.append(out / name)
    return written


def run(args) -> int:
    cache = args.modules_cache
    where = cache or reg.modules_cache()
    if args.check:
        ok = reg.is_registered(cache)
        print(f"neural_collapse {'is' if ok else 'is NOT'} registered (up to date) in {where}")
        if not ok:
            print(f"{reg.INSTALL_HINT}; without it, evaluate.load('neural_collapse') raises FileNotFoundError")
        return 0 if ok else 1
    try:
        script = reg.register_metric(cache)
    except OSError as e:
        raise UserValueError(f"cannot write evaluate's modules cache {where}: {e}") from e
    print(f"registered {script}")
    if cache is not None and os.path.abspath(cache) != os.path.abspath(reg.modules_cache()):
        print(f"note: evaluate reads HF_MODULES_CACHE={reg.modules_cache()}; export HF_MODULES_CACHE={cache}")
    print("load it with: HF_EVALUATE_OFFLINE=1 python -c \"import evaluate; evaluate.load('neural_collapse')\"")
    if args.export:
        for path in export_metric(args.export):
            print(f"exported {path}")
    return 0
