"""`erase push DIR --repo-id NAME`: upload an exported folder to the Hugging Face Hub."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="a folder written by `erase export`")
    parser.add_argument("--repo-id", required=True, metavar="NAME", help="NAME or OWNER/NAME on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, metavar="REV", help="branch to push to (created if missing; default main)")
    parser.add_argument("--endpoint", default=None, metavar="URL", help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")


def run(args: argparse.Namespace) -> int:
    from erase.export.hub import push_folder

    result = push_folder(args.folder, args.repo_id, private=args.private, revision=args.revision, endpoint=args.endpoint)
    print(f"pushed {args.folder} to {result.url}")
    print(f"  commit: {result.commit_url}")
    return 0
