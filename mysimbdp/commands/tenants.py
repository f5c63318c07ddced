"""``mysimbdp tenants``: check profiles, issue tokens."""

from __future__ import annotations

import argparse
import re

from mysimbdp.auth import hash_token, new_token
from mysimbdp.errors import TenantProfileError
from mysimbdp.tenants import load_profile, load_profiles


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
    provision.set_defaults(func=provision_tenant)


def check_profiles(args: argparse.Namespace) -> int:
    settings = args.settings_loader()
    profiles, errors = load_profiles(settings.tenants_dir)
    for tid in sorted(profiles):
        print(f"ok       {tid}")
    for err in errors:
        print(f"invalid  {err.path}: {err.key}: {err.problem}")
    return 1 if errors else 0


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
    line = f'token_sha256 = "{hash_token(token)}"'
    pattern = re.compile(r"^token_sha256\s*=.*$", re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(line, text, count=1)
    else:  # top-level keys must come before the first [section]
        head, sep, rest = text.partition("\n[")
        text = f"{head.rstrip()}\n{line}\n{sep.lstrip()}{rest}" if sep else f"{text.rstrip()}\n{line}\n"
    path.write_text(text, encoding="utf-8")
    load_profile(path)
    print(token)
    return 0


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
                                        settings.stream.exchange, args.tenant, password))
    if password is None:
        print(f"permissions of broker user {result.user} applied in vhost {result.vhost!r}")
    else:
        print(tenant_amqp_url(settings.amqp_url, result.user, password))
    return 0
