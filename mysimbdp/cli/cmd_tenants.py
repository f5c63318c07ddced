"""``mysimbdp tenants``: check profiles, issue tokens."""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
import tomllib
from pathlib import Path

from mysimbdp.apps.plugins import installed_app_names
from mysimbdp.errors import TenantProfileError
from mysimbdp.http.tokens import hash_token, new_token
from mysimbdp.tenants import TenantProfile, load_profile, load_profiles


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("tenants", help="check and list tenant profiles, issue tokens, provision broker users")
    tsub = p.add_subparsers(dest="tenants_command", metavar="ACTION", required=True)
    check = tsub.add_parser("check", help="validate every profile in <config>/tenants/")
    check.set_defaults(func=check_profiles)
    token = tsub.add_parser("token", help="generate a new API token for a tenant, store its hash, print it once")
    token.add_argument("tenant")
    token.set_defaults(func=issue_token)
    lst = tsub.add_parser("list", help="list the configured tenants")
    lst.set_defaults(func=list_tenants)
    provision = tsub.add_parser(
        "provision", help="create the tenant's RabbitMQ user with a new password, print its AMQP URL once")
    provision.add_argument("tenant")
    provision.add_argument("--keep-password", action="store_true",
                           help="only (re)apply the user's permissions, keep its password")
    provision.add_argument("--adopt", action="store_true",
                           help="take over an existing user of the tenant's name that this installation did not tag "
                           "as its own (one made before users were tagged); without it such a user is left alone")
    provision.set_defaults(func=provision_tenant)


def check_profiles(args: argparse.Namespace) -> int:
    """Every profile valid (exit 1 if one is not); a warning for each app a profile names that
    is not installed (its files and messages would be rejected until it is)."""
    settings = args.settings_loader()
    profiles, errors = load_profiles(settings.tenants_dir)
    installed = installed_app_names(settings.extra_apps)
    for tid in sorted(profiles):
        missing = [(section, app) for section, app in apps_named(profiles[tid]) if app not in installed]
        if not missing:
            print(f"ok       {tid}")
        for section, app in missing:
            print(f"warn     {tid}: {section} names app {app!r}, which is not installed (`mysimbdp apps` "
                  "lists those that are); until it is installed and the daemon restarted, files for it are "
                  "rejected (no_app) and a stream using it does not start")
    for err in errors:
        print(f"invalid  {err.path}: {err.key}: {err.problem}")
    return 1 if errors else 0


def apps_named(profile: TenantProfile) -> list[tuple[str, str]]:
    """``(section, app)`` for every app ``profile`` names."""
    named: list[tuple[str, str]] = []
    if profile.batch is not None:
        named.append(("[batch]", profile.batch.app))
        named += [(f"[batch] route {r.pattern!r}", r.app) for r in profile.batch.routes]
    if profile.stream is not None:
        named.append(("[stream]", profile.stream.app))
        named += [(f"[stream] type {t!r}", app) for t, app in sorted(profile.stream.apps.items())]
    return named


def list_tenants(args: argparse.Namespace) -> int:
    settings = args.settings_loader()
    profiles, _ = load_profiles(settings.tenants_dir)
    for tid, p in sorted(profiles.items()):
        kinds = [k for k in ("batch", "stream") if getattr(p, k) is not None]
        print(f"{tid:<32} {'+'.join(kinds) or '-':<14} {p.name}")
    return 0


def issue_token(args: argparse.Namespace) -> int:
    settings = args.settings_loader()
    path = settings.tenants_dir / f"{args.tenant}.toml"
    if not path.is_file():
        raise TenantProfileError(str(path), "(file)", "no such tenant profile; create it first")
    load_profile(path)  # refuse to touch an invalid profile
    token = new_token()
    text = path.read_text(encoding="utf-8")
    updated = with_token_hash(text, hash_token(token))
    if updated is None:
        raise TenantProfileError(str(path), "token_sha256", "found no place for it among the "
                                 "top-level keys; put them all above the first [section] and run "
                                 "the command again (the profile was not changed)")
    _replace(path, updated)
    load_profile(path)
    print(token)
    return 0


_HEADER = re.compile(r"[ \t]*\[")  # a [table] or [[array of tables]] line, maybe indented
_TOKEN = re.compile(r"^[ \t]*token_sha256[ \t]*=.*$", re.MULTILINE)


def with_token_hash(text: str, digest: str) -> str | None:
    """``text`` (a valid profile) with its top-level ``token_sha256`` set to ``digest``.

    The rest of the text, comments included, is kept as it is: an existing ``token_sha256``
    line is replaced, else the line goes after the top-level keys (before the first table
    header and the comments right above it). Each candidate is parsed back and taken only
    if it holds exactly the profile with the new hash, so a ``[`` inside a multi-line string
    or array is never taken for a header. None if no candidate is right.
    """
    want = {**tomllib.loads(text), "token_sha256": digest}
    line = f'token_sha256 = "{digest}"'
    candidates = [text[:m.start()] + line + text[m.end():] for m in _TOKEN.finditer(text)]
    lines = text.splitlines(keepends=True)
    for i, current in enumerate(lines):
        if not _HEADER.match(current):
            continue
        while i > 0 and lines[i - 1].lstrip().startswith("#"):  # the header's own comments
            i -= 1
        head, rest = "".join(lines[:i]).rstrip(), "".join(lines[i:])
        candidates.append(f"{head}\n{line}\n\n{rest}" if head else f"{line}\n\n{rest}")
    candidates.append(f"{text.rstrip()}\n{line}\n" if text.strip() else f"{line}\n")
    for candidate in candidates:
        try:
            if tomllib.loads(candidate) == want:
                return candidate
        except tomllib.TOMLDecodeError:
            continue
    return None


def _replace(path: Path, text: str) -> None:
    """Write ``path`` atomically (the daemon's hot reload never reads half a profile)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
    tmp.replace(path)


def provision_tenant(args: argparse.Namespace) -> int:
    """Create or update the tenant's broker user and permissions (see docs/stream.md)."""
    import asyncio

    from mysimbdp.stream.provision import provision_user, tenant_amqp_url

    settings = args.settings_loader()
    path = settings.tenants_dir / f"{args.tenant}.toml"
    if not path.is_file():
        raise TenantProfileError(str(path), "(file)", "no such tenant profile; create it first")
    if load_profile(path).stream is None:
        raise TenantProfileError(str(path), "stream", "the tenant has no [stream] section; add one first")
    password = None if args.keep_password else new_token()
    result = asyncio.run(provision_user(settings.stream.management_url, settings.amqp_url,
                                        settings.stream.exchange, args.tenant, password,
                                        user_prefix=settings.stream.user_prefix, adopt=args.adopt))
    if result.adopted:
        print(f"broker user {result.user} adopted: tagged as this installation's (vhost {result.vhost!r})",
              file=sys.stderr)
    if password is None:
        print(f"permissions of broker user {result.user} applied in vhost {result.vhost!r}")
    else:
        print(tenant_amqp_url(settings.amqp_url, result.user, password))
    return 0
