"""What ``deploy/`` ships for the metrics ecosystem: the Prometheus alert rules pass ``promtool
check rules`` and their unit tests (``promtool test rules``); every query of the Grafana
dashboard is valid PromQL; and every metric the rules and the dashboard name is one a real
daemon's ``/metrics`` exposes (a renamed metric breaks this test, not an operator's alert)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mysimbdp import tenants
from mysimbdp.config import Settings
from tests.plugins.stream_support import ECHO_APPS

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "mysimbdp.json"
#: what Prometheus itself provides, not the daemon
_PROMETHEUS_OWN = {"up"}
_FUNCTIONS = {"sum", "max", "min", "rate", "increase", "deriv", "histogram_quantile", "by", "and", "or", "count",
              "avg", "le", "tenant", "source", "reason", "rule", "direction", "instance", "job", "component"}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is missing: `make test` installs Debian's prometheus package, which has it "
                    "(MYSIMBDP_SETUP_TEST_TOOLS=1 bash scripts/setup.sh)")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every target of the dashboard, Grafana's variables filled in."""
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "5m").replace("$tenant", ".*")
            yield panel["title"], expr


def rule_queries() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule["alert"], rule["expr"]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (identifiers that are no function, keyword or label)."""
    no_strings = re.sub(r'"[^"]*"', '""', expr)
    no_labels = re.sub(r"\{[^}]*\}", "", no_strings)
    no_ranges = re.sub(r"\[[^\]]*\]", "", no_labels)
    no_groupings = re.sub(r"\b(by|without)\s*\([^)]*\)", "", no_ranges)
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", no_groupings))
    return names - _FUNCTIONS


def test_the_alert_rules_are_valid_and_their_unit_tests_pass() -> None:
    checked = promtool("check", "rules", RULES.name, cwd=RULES.parent)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 10 rules found" in checked.stdout
    tested = promtool("test", "rules", "alerts_test.yml", cwd=RULES.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["tenant"]["multi"] and variables["tenant"]["includeAll"]
    queries = list(dashboard_queries())
    assert len(queries) >= 15
    # promtool parses PromQL when it checks rules: one recording rule per dashboard query
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{n}", "expr": expr} for n, (_, expr) in enumerate(queries)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", path.name, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_query_with_a_typo_fails_the_check(tmp_path: Path) -> None:
    """The check above can fail: promtool refuses a query that is not PromQL."""
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"record": "x:y", "expr": "sum by (tenant (rate(mysimbdp_records_written_total[5m]))"}]}]}))
    assert promtool("check", "rules", path.name, cwd=tmp_path).returncode != 0


@pytest.fixture
def scraped(settings_factory: Callable[..., Settings], tenant_id: str) -> Settings:
    settings = settings_factory(extra_apps=ECHO_APPS)
    tenants.write_profile(settings.tenants_dir, {"id": tenant_id, "batch": {"app": "stream_echo"},
                                                 "stream": {"app": "stream_echo", "max_consumers": 3}})
    return settings


async def test_every_metric_the_rules_and_the_dashboard_read_is_exposed(
        start_daemon: Callable[..., Any], scraped: Settings, tenant_id: str, http: aiohttp.ClientSession) -> None:
    rd = await start_daemon(scraped)
    async with http.get(f"{rd.url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    exposed: set[str] = set()
    for family in text_string_to_metric_families(text):
        exposed.add(family.name)
        if family.type == "counter":
            exposed.add(f"{family.name}_total")
        if family.type == "histogram":
            exposed |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        exposed |= {sample.name for sample in family.samples}
    read = {name: where for where, expr in (*rule_queries(), *dashboard_queries()) for name in metric_names(expr)}
    missing = {name: where for name, where in read.items() if name not in exposed | _PROMETHEUS_OWN}
    assert not missing, f"metrics read by deploy/ but not exposed by the daemon: {missing}"
    assert len(read) >= 15, sorted(read)
    # the series the tenant variable lists, and the bounds the consumers alert compares with
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("mysimbdp_tenant_configured", (("tenant", tenant_id),))] == 1
    assert samples[("mysimbdp_stream_consumers_max", (("tenant", tenant_id),))] == 3
    assert samples[("mysimbdp_stream_consumers_min", (("tenant", tenant_id),))] == 1
