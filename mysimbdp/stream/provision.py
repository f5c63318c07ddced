"""Per-tenant RabbitMQ users: who may publish what (through the management API).

Tenant ``<id>`` publishes as broker user ``mysimbdp-<id>``. Its permissions in the
platform's vhost: no configure, write only on the ingest exchange, no read; and a topic
permission on that exchange that allows only routing keys ``<id>`` and ``<id>.<type>``.
So a tenant's credentials cannot put messages into another tenant's queue.

The daemon creates missing users on onboarding *without a password* (nobody can log in
as them yet) and (re)applies the permissions; ``mysimbdp tenants provision <id>`` sets a
fresh random password and prints the tenant's AMQP URL once. No password is stored by the
platform: only RabbitMQ keeps its (salted) hash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from mysimbdp.broker_admin import BrokerAdmin
from mysimbdp.stream.topology import routing_key_regex

__all__ = ["broker_user", "vhost_of", "tenant_amqp_url", "Provisioned", "provision_user"]


def broker_user(tenant: str) -> str:
    """The tenant's RabbitMQ user name."""
    return f"mysimbdp-{tenant}"


def vhost_of(amqp_url: str) -> str:
    """The vhost of an AMQP URL (``/`` when the path is empty)."""
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def tenant_amqp_url(amqp_url: str, user: str, password: str) -> str:
    """``amqp_url`` with the tenant's credentials instead of the platform's."""
    parts = urlsplit(amqp_url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


@dataclass(frozen=True)
class Provisioned:
    """The outcome of :func:`provision_user`."""

    user: str
    vhost: str
    created: bool
    password_set: bool


async def provision_user(management_url: str, amqp_url: str, exchange: str, tenant: str,
                         password: str | None = None) -> Provisioned:
    """Create (if missing) the tenant's broker user and apply its permissions.

    With ``password`` the user's password is (re)set; without, an existing password is kept
    and a new user gets none. Raises :class:`mysimbdp.errors.BrokerUnavailable` when the
    management API refuses or cannot be reached.
    """
    user, vhost = broker_user(tenant), vhost_of(amqp_url)
    async with BrokerAdmin(management_url) as admin:
        existing = await admin.user(user)
        if password is not None:
            await admin.put_user(user, password)
        elif existing is None:
            await admin.put_user_without_password(user)
        await admin.set_permissions(vhost, user, configure="^$", write=f"^{re.escape(exchange)}$", read="^$")
        await admin.set_topic_permissions(vhost, user, exchange, write=routing_key_regex(tenant), read="^$")
    return Provisioned(user, vhost, created=existing is None, password_set=password is not None)
