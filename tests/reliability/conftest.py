"""Fixtures of the reliability suite: repetitions, private RabbitMQ node and store, results.

``make test`` runs the reduced suite (few repetitions); ``make reliability`` sets
``MYSIMBDP_RELIABILITY=full`` for more repetitions and writes the results JSON that
``report.py`` turns into the table of ``docs/reliability.md``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.faults import RabbitNode, StoreServer, rabbitmq_available
from tests.reliability.results import full_run, write_results

# Failed tests are noted by tests/conftest.py (pytest_runtest_logreport): a hook here would
# only see the tests of this folder, not tests/test_fuzz_*.py, which record rows too.


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the results JSON (only when reliability rows were recorded), failed rows marked."""
    path = write_results()
    if path is not None:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"reliability results: {path}")


@pytest.fixture(scope="session")
def full() -> bool:
    """True under ``make reliability``."""
    return full_run()


@pytest.fixture(scope="session")
def rounds(full: bool) -> int:
    """How many times a fault is injected per test: 2 in ``make test``, 6 in the full suite."""
    return 6 if full else 2


@pytest.fixture
def rabbit_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A private RabbitMQ node (the shared one on 5672 is never stopped)."""
    if not rabbitmq_available():
        pytest.skip("rabbitmq-server is not installed: cannot start a private node")
    node = RabbitNode(Path(tmp_path_factory.mktemp("rabbit")))
    try:
        node.start()
        yield node
    finally:
        node.shutdown()


@pytest.fixture
def store_server(tmp_path: Path) -> Iterator[StoreServer]:
    """A private NX-27017 that the test may SIGKILL and start again."""
    server = StoreServer(tmp_path / "own-store")
    try:
        server.start()
        yield server
    finally:
        server.stop()
