"""Per-tenant RabbitMQ users: who may publish what (through the management API).

Tenant ``<id>`` publishes as broker user ``<user_prefix><id>`` (``mysimbdp-<id>`` by
default). Its permissions in the platform's vhost: no configure, write only on the ingest
exchange, no read; and a topic permission on that exchange that allows only routing keys
``<id>`` and ``<id>.<type>``. So a tenant's credentials cannot put messages into another
tenant's queue.

The daemon creates missing users on onboarding *without a password* (nobody can log in
as them yet) and (re)applies the permissions; ``mysimbdp tenants provision <id>`` sets a
fresh random password and prints the tenant's AMQP URL once. No password is stored by the
platform: only RabbitMQ keeps its (salted) hash.

Users are global on a broker, vhosts are not: an installation is known on the broker by its
vhost (two installations in one vhost would share every queue). Each user an installation
creates carries the tag ``mysimbdp:<vhost>``, and provisioning touches no existing user
without it: :class:`mysimbdp.errors.BrokerUserConflict`, the user left as it was, unless
the operator *adopts* it (a user made before users were tagged).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from mysimbdp.errors import BrokerUserConflict
from mysimbdp.stream.broker_admin import BrokerAdmin
from mysimbdp.stream.topology import routing_key_regex

__all__ = ["DEFAULT_USER_PREFIX", "broker_user", "installation_tag", "vhost_of", "tenant_amqp_url", "Provisioned",
           "provision_user"]

#: The prefix of broker user names when ``stream.user_prefix`` is not set (the names users had before).
DEFAULT_USER_PREFIX = "mysimbdp-"

#: Tags that give a user rights in the management API: never on a tenant's user.
_MANAGEMENT_TAGS = frozenset({"administrator", "monitoring", "policymaker", "management", "impersonator"})


def broker_user(tenant: str, prefix: str = DEFAULT_USER_PREFIX) -> str:
    """The tenant's RabbitMQ user name."""
    return f"{prefix}{tenant}"


def installation_tag(vhost: str) -> str:
    """The user tag that marks the broker users made by the installation in ``vhost``."""
    return f"mysimbdp:{vhost}"


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
    adopted: bool = False


async def provision_user(management_url: str, amqp_url: str, exchange: str, tenant: str,
                         password: str | None = None, *, user_prefix: str = DEFAULT_USER_PREFIX,
                         adopt: bool = False) -> Provisioned:
    """Create (if missing) the tenant's broker user and apply its permissions.

    With ``password`` the user's password is (re)set; without, an existing password is kept
    and a new user gets none. A new user is tagged :func:`installation_tag`. An existing user
    without that tag was not made by this installation: it is left as it was and
    :class:`BrokerUserConflict` says what to do, unless ``adopt`` (the operator vouches that
    it is this installation's): then it gets the tag, keeping its other tags, and is
    provisioned like the installation's own. Raises :class:`mysimbdp.errors.BrokerUnavailable`
    when the management API refuses or cannot be reached.

    The management API cannot create a user only if it is missing: a user of the same name
    made by someone else between the look-up and the creation would be taken over.
    """
    user, vhost = broker_user(tenant, user_prefix), vhost_of(amqp_url)
    mark = installation_tag(vhost)
    async with BrokerAdmin(management_url) as admin:
        existing = await admin.user(user)
        tags = BrokerAdmin.tags_of(existing) if existing is not None else [mark]
        adopted = existing is not None and mark not in tags
        if adopted:
            _check_adoptable(user, tenant, user_prefix, mark, tags, adopt)
            tags.append(mark)
        if password is not None:
            await admin.put_user(user, password, tags)
        elif existing is None:
            await admin.put_user_without_password(user, tags)
        elif adopted:
            await admin.put_user_tags(existing, tags)
        await admin.set_permissions(vhost, user, configure="^$", write=f"^{re.escape(exchange)}$", read="^$")
        await admin.set_topic_permissions(vhost, user, exchange, write=routing_key_regex(tenant), read="^$")
    return Provisioned(user, vhost, created=existing is None, password_set=password is not None, adopted=adopted)


def _check_adoptable(user: str, tenant: str, prefix: str, mark: str, tags: list[str], adopt: bool) -> None:
    """Raise :class:`BrokerUserConflict` unless the untagged ``user`` may be adopted."""
    left = "its password, tags and permissions were left as they were"
    if not adopt:
        raise BrokerUserConflict(
            f"broker user {user!r} exists but this installation did not create it (it lacks the tag {mark!r}; "
            f"its tags: {', '.join(tags) or 'none'}): {left}. If another installation on this broker uses the "
            f"name, give this installation a user prefix of its own (stream.user_prefix, "
            f"MYSIMBDP_STREAM__USER_PREFIX; now {prefix!r}); if the user is this installation's own from before "
            f"its users were tagged, run 'mysimbdp tenants provision {tenant} --adopt'")
    management = sorted(_MANAGEMENT_TAGS.intersection(tags))
    if management:
        raise BrokerUserConflict(
            f"broker user {user!r} has the tags {', '.join(management)}, which give rights in the management API: "
            f"it cannot be a tenant's user and was not adopted ({left}). Give this installation another user "
            f"prefix (MYSIMBDP_STREAM__USER_PREFIX; now {prefix!r})")
