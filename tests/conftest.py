"""Shared fixtures: the real store (embedded NX-27017 or ``MYSIMBDP_TEST_MONGO_URI``), the real
RabbitMQ (a throw-away vhost per test session), settings in temporary folders, and the daemon
run in-process or as a child process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from mysimbdp.config import Settings, load_settings
from mysimbdp.daemon import Daemon
from mysimbdp.events import Event
from mysimbdp.logs import configure_logging
from mysimbdp.store.mongo import EmbeddedMongo
from mysimbdp.stream.broker_admin import BrokerAdmin
from tests.harness.daemon import Daemon as ChildDaemon
from tests.harness.store import wait_for_ping
from tests.harness.wait import DaemonExited, await_until
from tests.reliability.results import note_report

MANAGEMENT_URL = os.environ.get("MYSIMBDP_TEST_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672")
AMQP_BASE = os.environ.get("MYSIMBDP_TEST_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")
ADMIN_TOKEN = "test-admin-token"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Note failed tests for the reliability results (their rows are marked failed).

    Here, not in ``tests/reliability/conftest.py``: pytest calls a conftest's hook only for
    the tests under its folder, and ``tests/test_fuzz_*.py`` record rows too.
    """
    note_report(report)


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB for the whole session: ``MYSIMBDP_TEST_MONGO_URI`` or an embedded NX-27017."""
    real = os.environ.get("MYSIMBDP_TEST_MONGO_URI")
    if real:
        yield real
        return
    base = tmp_path_factory.mktemp("store")
    server = EmbeddedMongo(base / "data", base / "store.log")
    server.data_dir.mkdir(parents=True)
    proc = subprocess.Popen(server.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_ping(server.uri, proc=proc, log_file=server.log_file)
        yield server.uri
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def rabbit_vhost() -> Iterator[str]:
    """A fresh RabbitMQ vhost for the session (guest may do anything in it); deleted after."""
    vhost = f"mysimbdp-test-{uuid.uuid4().hex[:8]}"

    async def setup() -> None:
        async with BrokerAdmin(MANAGEMENT_URL) as admin:
            await admin.create_vhost(vhost)
            await admin.set_permissions(vhost, "guest", ".*", ".*", ".*")

    async def teardown() -> None:
        # The tenant users the tests provisioned hold permissions here only: remove them too,
        # so that test runs leave nothing behind in the broker.
        async with BrokerAdmin(MANAGEMENT_URL) as admin:
            permissions = await admin.request("GET", f"/vhosts/{quote(vhost, safe='')}/permissions",
                                              ok_missing=True)
            for user in {entry["user"] for entry in permissions or []} - {"guest"}:
                await admin.delete_user(user)
            await admin.delete_vhost(vhost)

    asyncio.run(setup())
    yield vhost
    asyncio.run(teardown())


@pytest.fixture(scope="session")
def amqp_url(rabbit_vhost: str) -> str:
    """The AMQP URL of the session's vhost."""
    return f"{AMQP_BASE}/{quote(rabbit_vhost, safe='')}"


@pytest.fixture
def tenant_id() -> str:
    """A tenant id no other test uses (so tests share the store and the broker safely)."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings_factory(tmp_path: Path, mongo_uri: str, amqp_url: str) -> Callable[..., Settings]:
    """Build settings in ``tmp_path`` against the session's store and broker; overrides win."""
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = dict(
            staging_dir=tmp_path / "staging", var_dir=tmp_path / "var", http_port=0,
            mongo_uri=mongo_uri, amqp_url=amqp_url, admin_token=ADMIN_TOKEN, drain_timeout_s=5.0,
            store_port=0,  # a test's embedded store never takes the port of one an operator runs
            log_level="debug",
            batch={"stable_after_s": 0.2, "rescan_interval_s": 0.5},
            stream={"management_url": MANAGEMENT_URL},
        )
        values.update(overrides)
        config_dir = values.pop("config_dir", tmp_path / "config")
        (Path(config_dir) / "tenants").mkdir(parents=True, exist_ok=True)
        return load_settings(config_dir, **values)
    return make


@pytest.fixture
async def mongo(mongo_uri: str) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    """A client of the session's store for assertions."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    yield client
    await client.close()


@dataclass
class RunningDaemon:
    """An in-process daemon and how to reach it."""

    daemon: Daemon
    task: asyncio.Task[None]
    url: str

    @property
    def settings(self) -> Settings:
        return self.daemon.settings


async def _wait_http(daemon: Daemon, task: asyncio.Task[None], timeout: float = 30.0) -> str:
    try:
        await await_until(lambda: daemon.http._runner is not None and daemon.http.port != 0, timeout,
                          "the daemon's HTTP endpoint", 0.05, alive=lambda: not task.done())
    except DaemonExited:
        task.result()  # the daemon's own error says more than ours
        raise
    return f"http://127.0.0.1:{daemon.http.port}"


@pytest.fixture
def events() -> list[dict[str, Any]]:
    """Every event of the daemons ``start_daemon`` runs in this test, as ``{"event": name, **fields}``
    (a subscriber of each daemon's event bus from before it starts)."""
    return []


@pytest.fixture
async def start_daemon(settings_factory: Callable[..., Settings],
                       events: list[dict[str, Any]]) -> AsyncIterator[Callable[..., Any]]:
    """``await start_daemon(settings=None, pm=None)`` runs a daemon in this event loop; stopped after the test.

    The test fails if a subscriber of a daemon's event bus (the monitor, the metrics, the
    statistics) failed on an event: the platform's own events must never break them.
    """
    running: list[RunningDaemon] = []

    def record(event: Event) -> None:
        events.append({"event": event.NAME, **event.fields()})

    async def start(settings: Settings | None = None, pm: Any = None) -> RunningDaemon:
        settings = settings or settings_factory()
        configure_logging(settings.log_level, settings.log_file, console=False)
        daemon = Daemon(settings, pm=pm)
        daemon.events.subscribe(record, "test")
        task = asyncio.create_task(daemon.run())
        url = await _wait_http(daemon, task)
        rd = RunningDaemon(daemon, task, url)
        running.append(rd)
        return rd

    yield start
    for rd in reversed(running):
        rd.daemon.request_stop("test finished")
        try:
            await asyncio.wait_for(rd.task, 30)
        except Exception:
            rd.task.cancel()
    failed = {name: n for rd in running for name, n in rd.daemon.events.failures.items()}
    assert not failed, f"event bus subscribers failed (see events.subscriber_failed in the log): {failed}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client for the tests."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def spawn_daemon() -> Iterator[Callable[[Settings], ChildDaemon]]:
    """``spawn_daemon(settings)`` starts ``mysimbdpd`` as a child process and waits for ``/health``;
    stopped (SIGTERM, then SIGKILL) after the test."""
    started: list[ChildDaemon] = []

    def spawn(settings: Settings) -> ChildDaemon:
        daemon = ChildDaemon(settings)
        started.append(daemon)
        daemon.start()
        return daemon

    yield spawn
    for daemon in started:
        daemon.stop(20)
