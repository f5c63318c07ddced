"""Tenant isolation on the broker: each tenant's user publishes only with its own routing keys."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import aio_pika
import pytest
from aiormq.exceptions import ChannelAccessRefused

from mysimbdp.cli import main
from mysimbdp.client.publisher import PublishRefused, publish_records
from mysimbdp.config import Settings
from mysimbdp.errors import BrokerUserConflict
from mysimbdp.events import EventBus
from mysimbdp.logs import write_event
from mysimbdp.stream.broker_admin import BrokerAdmin
from mysimbdp.stream.provision import (
    broker_user,
    installation_tag,
    provision_user,
    tenant_amqp_url,
    vhost_of,
)
from mysimbdp.stream.topology import dead_name, declare_tenant, queue_name
from mysimbdp.tenants import StreamProfile
from tests.conftest import AMQP_BASE, MANAGEMENT_URL
from tests.plugins.stream_support import write_profile

EXCHANGE = "mysimbdp.ingest"

EVENTS = EventBus(write_event).emitter("stream")


@pytest.fixture
async def cleanup_users() -> AsyncIterator[list[str]]:
    """Tenant ids whose broker users are deleted after the test (users are not per vhost)."""
    tenants: list[str] = []
    yield tenants
    async with BrokerAdmin(MANAGEMENT_URL) as admin:
        for tenant in tenants:
            await admin.delete_user(broker_user(tenant))


class _OtherInstallation:
    """Another installation on the same broker: its own vhost, users made without our tag."""

    def __init__(self, vhost: str) -> None:
        self.vhost = vhost
        self.users: list[str] = []

    async def create_user(self, user: str, password: str, tags: list[str] | None = None) -> dict[str, Any]:
        """Create ``user`` as another installation would (permissions in its vhost); its state after."""
        self.users.append(user)
        async with BrokerAdmin(MANAGEMENT_URL) as admin:
            await admin.put_user(user, password, tags or [])
            await admin.set_permissions(self.vhost, user, configure="^$", write="^other\\.ingest$", read="^$")
        return await _user_state(user)

    def amqp_url(self, user: str, password: str) -> str:
        """The AMQP URL of ``user`` in this installation's vhost."""
        return tenant_amqp_url(f"{AMQP_BASE}/{quote(self.vhost, safe='')}", user, password)


@pytest.fixture
async def other_installation() -> AsyncIterator[_OtherInstallation]:
    """Another installation in a vhost of its own; its users are deleted after the test."""
    other = _OtherInstallation(f"mysimbdp-test-other-{uuid.uuid4().hex[:8]}")
    async with BrokerAdmin(MANAGEMENT_URL) as admin:
        await admin.create_vhost(other.vhost)
    yield other
    async with BrokerAdmin(MANAGEMENT_URL) as admin:
        for user in other.users:
            await admin.delete_user(user)
        await admin.delete_vhost(other.vhost)


async def _user_state(user: str) -> dict[str, Any]:
    """Everything the broker knows about ``user``: record (password hash, tags), permissions, topic permissions."""
    async with BrokerAdmin(MANAGEMENT_URL) as admin:
        name = quote(user, safe="")
        return {"user": await admin.user(user),
                "permissions": await admin.request("GET", f"/users/{name}/permissions"),
                "topic": await admin.request("GET", f"/users/{name}/topic-permissions")}


async def _declare(amqp_url: str, *tenants: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        for tenant in tenants:
            await declare_tenant(connection, EXCHANGE, tenant, StreamProfile(app="x"), EVENTS)
    finally:
        await connection.close()


async def _depth(amqp_url: str, tenant: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name(tenant), passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await connection.close()


async def test_tenant_a_credentials_are_refused_on_tenant_b_routing_key(
        amqp_url: str, tenant_id: str, cleanup_users: list[str]) -> None:
    a, b = tenant_id + "a", tenant_id + "b"
    cleanup_users += [a, b]
    await _declare(amqp_url, a, b)
    await provision_user(MANAGEMENT_URL, amqp_url, EXCHANGE, a, password="pw-a")
    await provision_user(MANAGEMENT_URL, amqp_url, EXCHANGE, b, password="pw-b")
    url_a = tenant_amqp_url(amqp_url, broker_user(a), "pw-a")

    own = await publish_records(url_a, EXCHANGE, a, [{"n": 1}, {"n": 2}])
    typed = await publish_records(url_a, EXCHANGE, f"{a}.readings", [{"n": 3}])
    assert (own.confirmed, typed.confirmed) == (2, 1)
    with pytest.raises(PublishRefused, match="ACCESS_REFUSED|access_refused|refused"):
        await publish_records(url_a, EXCHANGE, b, [{"n": 666}])
    with pytest.raises(PublishRefused):
        await publish_records(url_a, EXCHANGE, f"{b}.readings", [{"n": 667}])
    await asyncio.sleep(0.2)
    assert await _depth(amqp_url, a) == 3
    assert await _depth(amqp_url, b) == 0


async def _publish_refused(url: str, exchange: str, key: str) -> str:
    """Publish one message as ``url``'s user; the broker's refusal (it closes the channel)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        ex = channel.default_exchange if exchange == "" else await channel.get_exchange(exchange, ensure=False)
        with pytest.raises(ChannelAccessRefused) as refused:
            await ex.publish(aio_pika.Message(b'{"n": 666}', message_id="intruder"), key, timeout=10)
        return str(refused.value)
    finally:
        await connection.close()


async def test_tenant_a_cannot_reach_tenant_b_queue_around_the_ingest_exchange(
        amqp_url: str, tenant_id: str, cleanup_users: list[str]) -> None:
    """The default exchange routes by queue name (``mysimbdp.<B>``) and B's dead-letter exchange
    fans out to B's dead-letter queue: A's user may write to neither."""
    a, b = tenant_id + "a", tenant_id + "b"
    cleanup_users += [a, b]
    await _declare(amqp_url, a, b)
    await provision_user(MANAGEMENT_URL, amqp_url, EXCHANGE, a, password="pw-a")
    url_a = tenant_amqp_url(amqp_url, broker_user(a), "pw-a")

    reason = await _publish_refused(url_a, "", queue_name(b))
    assert "ACCESS_REFUSED" in reason and "amq.default" in reason
    reason = await _publish_refused(url_a, dead_name(b), "")
    assert "ACCESS_REFUSED" in reason and dead_name(b) in reason
    assert (await publish_records(url_a, EXCHANGE, a, [{"n": 1}])).confirmed == 1  # its own key still works
    await asyncio.sleep(0.2)
    assert await _depth(amqp_url, b) == 0
    assert await _depth(amqp_url, a) == 1


async def test_daemon_creates_passwordless_users_and_provision_keeps_permissions(
        amqp_url: str, tenant_id: str, cleanup_users: list[str]) -> None:
    cleanup_users.append(tenant_id)
    first = await provision_user(MANAGEMENT_URL, amqp_url, EXCHANGE, tenant_id)
    assert first.created and not first.password_set
    async with BrokerAdmin(MANAGEMENT_URL) as admin:
        user = await admin.user(broker_user(tenant_id))
        assert user is not None and user["password_hash"] == ""
        assert BrokerAdmin.tags_of(user) == [installation_tag(vhost_of(amqp_url))]
        topic = await admin.request("GET", f"/users/{broker_user(tenant_id)}/topic-permissions")
    assert topic and topic[0]["exchange"] == EXCHANGE and tenant_id in topic[0]["write"]
    again = await provision_user(MANAGEMENT_URL, amqp_url, EXCHANGE, tenant_id)
    assert not again.created and not again.adopted


async def test_cli_provision_prints_a_working_amqp_url(
        settings_factory: Callable[..., Settings], amqp_url: str, tenant_id: str, cleanup_users: list[str],
        capsys: pytest.CaptureFixture[str]) -> None:
    cleanup_users.append(tenant_id)
    settings = settings_factory()
    write_profile(settings, tenant_id)
    await _declare(amqp_url, tenant_id)
    env: dict[str, Any] = {"MYSIMBDP_AMQP_URL": amqp_url,
                           "MYSIMBDP_STREAM__MANAGEMENT_URL": MANAGEMENT_URL}

    def cli() -> int:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            with pytest.raises(SystemExit) as info:
                main(["--config-dir", str(settings.config_dir), "tenants", "provision", tenant_id])
            return int(info.value.code or 0)

    assert await asyncio.to_thread(cli) == 0
    url = capsys.readouterr().out.strip().splitlines()[-1]  # (earlier lines: this test's own logs)
    assert url.startswith("amqp://") and broker_user(tenant_id) in url and "guest" not in url
    result = await publish_records(url, EXCHANGE, tenant_id, [{"ok": True}])
    assert result.confirmed == 1


def _cli(settings: Settings, amqp_url: str, *args: str, **env: str) -> int:
    """Run ``mysimbdp --config-dir ... ARGS`` with the test broker (and ``env``); its exit code."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MYSIMBDP_AMQP_URL", amqp_url)
        mp.setenv("MYSIMBDP_STREAM__MANAGEMENT_URL", MANAGEMENT_URL)
        for key, value in env.items():
            mp.setenv(key, value)
        with pytest.raises(SystemExit) as info:
            main(["--config-dir", str(settings.config_dir), *args])
        return int(info.value.code or 0)


async def test_provision_leaves_a_user_of_another_installation_alone(
        settings_factory: Callable[..., Settings], amqp_url: str, tenant_id: str,
        other_installation: _OtherInstallation, capsys: pytest.CaptureFixture[str]) -> None:
    """A same-named user that another installation made keeps its password, tags and permissions;
    the command says why it refused and what to do; a prefix of our own then works beside it."""
    settings = settings_factory()
    write_profile(settings, tenant_id)
    await _declare(amqp_url, tenant_id)
    name = broker_user(tenant_id)
    before = await other_installation.create_user(name, "theirs", tags=["theirs"])
    capsys.readouterr()

    for args in (["tenants", "provision", tenant_id], ["tenants", "provision", tenant_id, "--keep-password"]):
        assert await asyncio.to_thread(_cli, settings, amqp_url, *args) == 1
        err = capsys.readouterr().err
        assert f"broker user {name!r} exists but this installation did not create it" in err
        assert installation_tag(vhost_of(amqp_url)) in err and "left as they were" in err
        assert "MYSIMBDP_STREAM__USER_PREFIX" in err and "--adopt" in err
        assert await _user_state(name) == before
    with pytest.raises(BrokerUserConflict):  # the daemon's onboarding (no password) refuses alike
        await provision_user(MANAGEMENT_URL, amqp_url, EXCHANGE, tenant_id)
    assert await _user_state(name) == before
    connection = await aio_pika.connect(other_installation.amqp_url(name, "theirs"))  # its password still works
    await connection.close()

    ours = f"site2-{tenant_id}"
    other_installation.users.append(ours)  # (deleted after the test with the other's users)
    assert await asyncio.to_thread(_cli, settings, amqp_url, "tenants", "provision", tenant_id,
                                   MYSIMBDP_STREAM__USER_PREFIX="site2-") == 0
    url = capsys.readouterr().out.strip().splitlines()[-1]
    assert quote(ours, safe="") in url
    assert (await publish_records(url, EXCHANGE, tenant_id, [{"ok": True}])).confirmed == 1
    assert await _user_state(name) == before


async def test_adopt_tags_an_untagged_user_and_keeps_its_password(
        amqp_url: str, tenant_id: str, other_installation: _OtherInstallation) -> None:
    """A user made before users were tagged: ``--adopt`` tags it (keeping its tags and password) and
    applies the permissions; a user with management rights is never adopted."""
    name = broker_user(tenant_id)
    before = await other_installation.create_user(name, "old-password", tags=["legacy"])
    await _declare(amqp_url, tenant_id)

    result = await provision_user(MANAGEMENT_URL, amqp_url, EXCHANGE, tenant_id, adopt=True)
    assert result.adopted and not result.created and not result.password_set
    after = await _user_state(name)
    mark = installation_tag(vhost_of(amqp_url))
    assert after["user"]["password_hash"] == before["user"]["password_hash"]
    assert BrokerAdmin.tags_of(after["user"]) == ["legacy", mark]
    assert any(p["vhost"] == vhost_of(amqp_url) for p in after["permissions"])
    url = tenant_amqp_url(amqp_url, name, "old-password")
    assert (await publish_records(url, EXCHANGE, tenant_id, [{"ok": True}])).confirmed == 1
    again = await provision_user(MANAGEMENT_URL, amqp_url, EXCHANGE, tenant_id)  # now it is ours
    assert not again.adopted and BrokerAdmin.tags_of((await _user_state(name))["user"]) == ["legacy", mark]

    admin_user = broker_user(tenant_id + "x")
    admin_before = await other_installation.create_user(admin_user, "root", tags=["administrator"])
    with pytest.raises(BrokerUserConflict, match="management API"):
        await provision_user(MANAGEMENT_URL, amqp_url, EXCHANGE, tenant_id + "x", password="new", adopt=True)
    assert await _user_state(admin_user) == admin_before
