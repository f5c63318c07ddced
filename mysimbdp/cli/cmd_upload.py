"""``mysimbdp upload``: send files to the platform, checking the tenant's constraints first."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from mysimbdp.cli.admin import daemon_url
from mysimbdp.client import uploader as fetch


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "upload", help="upload files to the platform, checking the tenant's constraints first",
        description="Check files against the tenant's batch constraints, skip the ones the platform "
                    "would refuse, upload the rest. Exits 1 if any file was skipped, refused or "
                    "(with --wait) rejected.")
    p.add_argument("--tenant", required=True, help="the tenant id")
    p.add_argument("--token-file", required=True, type=Path,
                   help="file holding the tenant's token (from `mysimbdp tenants token`)")
    p.add_argument("--url", help="the platform (default: http://<http_host>:<http_port> of the settings, "
                   f"as for `mysimbdp stream`; {fetch.DEFAULT_URL} with the default settings)")
    p.add_argument("--jobs", type=_positive, default=4, help="uploads at once (default 4)")
    p.add_argument("--wait", action="store_true",
                   help="follow each file until it is committed or rejected and print the outcome")
    p.add_argument("--wait-timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="with --wait, give up on a file after this long (default 3600)")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="files or directories (default ./client-input-directory/)")
    p.set_defaults(func=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def run(args: argparse.Namespace) -> int:
    token = fetch.read_token(args.token_file)
    paths = fetch.default_paths(args.paths)
    url = args.url or daemon_url(args.settings_loader())
    outcomes = asyncio.run(fetch.run(url, args.tenant, token, paths, jobs=args.jobs,
                                     wait=args.wait, wait_timeout=args.wait_timeout))
    if not outcomes:
        print("nothing to upload", file=sys.stderr)
        return 0
    print()
    print(fetch.summary(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1
