"""``hf-collapse push FOLDER REPO_ID``: publish a measured model folder to the Hub in one commit."""

from __future__ import annotations

import argparse
import sys

_NETWORK_MODULES = ("huggingface_hub", "httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3")


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def network_failure(e: BaseException) -> bool:
    """Whether ``e`` or an exception it was raised from is a Hub / network failure (huggingface_hub
    wraps a dropped upload in a RuntimeError, the connection error is its cause)."""
    for x in _chain(e):
        if type(x).__module__.split(".")[0] in _NETWORK_MODULES or isinstance(x, (ConnectionError, TimeoutError)):
            return True
    return False


def network_reason(e: BaseException, debug: bool = False):
    """One line saying why a Hub / network failure ``e`` happened (its message and that of the error it
    came from); None for anything else (a user error, a bug, or ``--debug``), which the caller re-raises."""
    from ..core.errors import is_user_error

    if is_user_error(e) or not network_failure(e) or debug:
        return None
    chain = list(_chain(e))
    first = lambda x: str(x).strip().splitlines()[0] if str(x).strip() else type(x).__name__  # noqa: E731
    return first(e) + (f" ({type(chain[-1]).__name__}: {first(chain[-1])})" if len(chain) > 1 else "")


def run(args) -> int:
    from ..integrations.hub import push_measured
    from ..integrations.measurements import add_to_collection, push_measurements

    try:
        info = push_measured(
            args.folder,
            args.repo_id,
            private=args.private,
            token=args.token,
            revision=args.revision,
            commit_message=args.commit_message,
        )
        if args.index:
            rows = push_measurements(
                args.folder,
                args.index,
                model_repo=args.repo_id,
                revision=args.revision,
                commit=info.oid,
                token=args.token,
            )
            print(rows.commit_url)
        if args.collection:
            print(add_to_collection(args.collection, args.repo_id, args.index, folder=args.folder, token=args.token))
    except Exception as e:  # Hub/network errors: one line (local files are untouched); others propagate
        why = network_reason(e, getattr(args, "debug", False))
        if why is None:
            raise
        print(f"hf-collapse push: could not push {args.folder} to {args.repo_id}: {why}", file=sys.stderr)
        return 1
    print(info.commit_url)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="push a measured model folder (weights, tokenizer, collapse/ statistics, card) to the Hub",
        description="Push a measured model folder to a Hub model repo in one commit, creating the repo if "
        "needed. The Hub is the one HF_ENDPOINT names (default huggingface.co).",
    )
    p.add_argument("folder", help="measured model folder (from `hf-collapse measure --output-dir`)")
    p.add_argument("repo_id", help="target repo, e.g. username/model-measured")
    p.add_argument("--private", action="store_true", help="create the repo private (if it does not exist)")
    p.add_argument("--revision", default=None, help="branch to commit to (created if missing; default main)")
    p.add_argument(
        "--commit-message", default=None, help="commit message (default names the model and what was measured)"
    )
    p.add_argument(
        "--index",
        default=None,
        metavar="DATASET_REPO",
        help="also write one Parquet row per measurement to this measurements dataset (created if missing)",
    )
    p.add_argument(
        "--collection",
        default=None,
        metavar="NAMESPACE/TITLE",
        help="add the measured repo (and the --index dataset) to this Hub collection (created if missing)",
    )
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    p.set_defaults(func=run)
