"""``hf-collapse push FOLDER REPO_ID``: publish a measured model folder to the Hub in one commit."""

from __future__ import annotations

import argparse
import sys

_NETWORK_MODULES = ("huggingface_hub", "httpx", "httpx2", "httpcore", "requests", "urllib3")


def run(args) -> int:
    from ..integrations.hub import push_measured

    try:
        info = push_measured(args.folder, args.repo_id, private=args.private, token=args.token,
                             revision=args.revision, commit_message=args.commit_message)
    except Exception as e:  # Hub/network errors: one line (local files are untouched); others propagate
        if type(e).__module__.split(".")[0] not in _NETWORK_MODULES or isinstance(e, (ValueError, FileNotFoundError)):
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"hf-collapse push: could not push {args.folder} to {args.repo_id}: {first}", file=sys.stderr)
        return 1
    print(info.commit_url)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push", help="push a measured model folder (weights, tokenizer, collapse/ statistics, card) to the Hub",
        description="Push a measured model folder to a Hub model repo in one commit, creating the repo if "
                    "needed. The Hub is the one HF_ENDPOINT names (default huggingface.co).")
    p.add_argument("folder", help="measured model folder (from `hf-collapse measure --output-dir`)")
    p.add_argument("repo_id", help="target repo, e.g. username/model-measured")
    p.add_argument("--private", action="store_true", help="create the repo private (if it does not exist)")
    p.add_argument("--revision", default=None, help="branch to commit to (created if missing; default main)")
    p.add_argument("--commit-message", default=None,
                   help="commit message (default names the model and what was measured)")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    p.set_defaults(func=run)
