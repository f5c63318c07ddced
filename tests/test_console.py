"""The web console in a real browser: Debian's Chromium driven by Playwright, against a real
daemon, store and broker. A tenant follows a 300,000-row file to committed; a tenant sees only
its own tenant, in the page and in every response the page receives; an operator scales a
stream from the page; the rejects browser shows raw records and filters by reason; the page
reconnects and catches up after the daemon restarts. Screenshots of each page, at desktop and
phone width, go to ``$MYSIMBDP_SCREENSHOTS`` (default: the test's temporary folder)."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, Response, async_playwright, expect
from pymongo import AsyncMongoClient

from mysimbdp import tenants
from mysimbdp.config import Settings
from mysimbdp.http.tokens import hash_token
from tests.batch_support import drop, wait_outcome
from tests.conftest import ADMIN_TOKEN
from tests.harness.wait import await_until
from tests.test_intake import APP_MODULE

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
APPS = {"upload_rows": APP_MODULE, "stream_echo": "tests.plugins.stream_echo"}


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.fail("Chromium is missing: `make test` installs Debian's chromium package "
                    "(MYSIMBDP_SETUP_TEST_TOOLS=1 bash scripts/setup.sh)")
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        await chromium.close()


def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MYSIMBDP_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def screenshot(page: Page, folder: Path, name: str) -> None:
    """The page at desktop width, then at phone width."""
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        await page.set_viewport_size(size)
        await page.screenshot(path=str(folder / f"{name}-{label}.png"), full_page=True)
    await page.set_viewport_size(DESKTOP)


def profile(settings: Settings, tenant: str, **sections: Any) -> str:
    token = f"token-{tenant}"
    tenants.write_profile(settings.tenants_dir, {"id": tenant, "token_sha256": hash_token(token), **sections})
    return token


async def sign_in(page: Page, url: str, token: str) -> None:
    await page.goto(f"{url}/console")
    await page.get_by_label("Your tenant token, or the admin token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#live")).to_have_text("live", timeout=15_000)


def rows_csv(n: int, bad: frozenset[int] = frozenset()) -> bytes:
    lines = [f"{i},name{i},x" if i in bad else f"{i},name{i}" for i in range(1, n + 1)]
    return ("id,name\n" + "\n".join(lines) + "\n").encode()


async def test_a_tenant_follows_its_file_to_committed_and_sees_why_a_file_is_rejected(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        browser: Browser, mongo: AsyncMongoClient[dict[str, Any]], tmp_path: Path) -> None:
    settings = settings_factory(extra_apps=APPS, batch={"progress_interval_s": 0.3, "stable_after_s": 0.2,
                                                        "rescan_interval_s": 0.5, "write_batch_size": 2000})
    token = profile(settings, tenant_id, batch={"app": "upload_rows", "formats": ["csv"], "max_error_rate": 0.1})
    rd = await start_daemon(settings)
    page = await browser.new_page(viewport=DESKTOP)
    await sign_in(page, rd.url, token)
    await expect(page.locator("#tenant-title")).to_have_text(f"Tenant {tenant_id}")

    drop(settings, tenant_id, "big.csv", rows_csv(300_000))
    bar = page.locator("#files progress")
    await expect(bar).to_have_count(1, timeout=30_000)
    first = float(await bar.get_attribute("value") or 0)
    await await_until(lambda: _advanced(bar, first), 60, "the progress bar to advance", 0.2)
    await expect(page.locator("#files .progress-info")).to_contain_text("records", timeout=5_000)
    await screenshot(page, shots(tmp_path), "tenant-loading")
    committed = page.locator("#files tbody tr", has_text="big.csv")
    await expect(committed.locator("td").nth(1)).to_have_text("committed", timeout=120_000)
    await expect(committed.locator("td").nth(3)).to_have_text("300,000")
    [entry] = await wait_outcome(mongo, tenant_id, "big.csv")
    assert entry["records_written"] == 300_000

    drop(settings, tenant_id, "bad.csv", rows_csv(10, bad=frozenset(range(1, 6))))  # half malformed
    rejected = page.locator("#files tbody tr", has_text="bad.csv")
    await expect(rejected.locator("td").nth(1)).to_have_text("rejected", timeout=30_000)
    await expect(rejected.locator("td").nth(4)).to_contain_text("error_rate: 5 of 10 records")
    await screenshot(page, shots(tmp_path), "tenant-files")


async def _advanced(bar: Any, first: float) -> bool:
    value = await bar.get_attribute("value")
    return value is not None and float(value) > first


async def test_a_tenant_sees_nothing_of_another_tenant(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        browser: Browser, mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    settings = settings_factory(extra_apps=APPS, batch={"stable_after_s": 0.2, "rescan_interval_s": 0.5})
    other = f"{tenant_id}o"
    token = profile(settings, tenant_id, batch={"app": "upload_rows", "formats": ["csv"]})
    profile(settings, other, batch={"app": "upload_rows", "formats": ["csv"]},
            stream={"app": "stream_echo", "min_consumers": 1})
    rd = await start_daemon(settings)
    drop(settings, other, "secret-ledger.csv", rows_csv(5))
    drop(settings, tenant_id, "mine.csv", rows_csv(5))
    await wait_outcome(mongo, other, "secret-ledger.csv")
    await wait_outcome(mongo, tenant_id, "mine.csv")

    page = await browser.new_page(viewport=DESKTOP)
    bodies: list[str] = []

    async def keep(response: Response) -> None:
        if response.url.startswith(rd.url) and "/console/events" not in response.url:
            bodies.append(await response.text())
    page.on("response", keep)
    await sign_in(page, rd.url, token)
    await expect(page.locator("#files tbody tr", has_text="mine.csv")).to_have_count(1)
    # the other tenant's file commits while the page is open: its events never reach this page
    drop(settings, other, "secret-second.csv", rows_csv(7))
    await wait_outcome(mongo, other, "secret-second.csv")
    streamed = await page.evaluate("""async () => {
        const response = await fetch('/console/events');
        const reader = response.body.getReader();
        const text = [];
        const until = Date.now() + 1500;
        while (Date.now() < until) {
            const part = await Promise.race([reader.read(), new Promise(r => setTimeout(() => r(null), 300))]);
            if (part && part.value) text.push(new TextDecoder().decode(part.value));
        }
        reader.cancel();
        return text.join('');
    }""")
    drop(settings, other, "secret-third.csv", rows_csv(9))
    await wait_outcome(mongo, other, "secret-third.csv")
    await page.wait_for_timeout(500)
    seen = "\n".join(bodies) + streamed + await page.content()
    assert bodies, "the page made no request"
    assert other not in seen and "secret" not in seen
    # a forged request for the other tenant's data, with this session: refused
    forged = await page.evaluate(f"""async () => {{
        const answers = [];
        for (const url of ['/tenants/{other}/files', '/tenants/{other}/rejects', '/tenants/{other}/data',
                           '/tenants/{other}/stream', '/tenants/{other}/stats']) {{
            answers.push((await fetch(url)).status);
        }}
        const me = await (await fetch('/console/session')).json();
        const scale = await fetch('/tenants/{other}/stream/consumers', {{method: 'PUT',
            headers: {{'Content-Type': 'application/json', 'X-CSRF-Token': me.csrf}}, body: JSON.stringify({{count: 3}})}});
        answers.push(scale.status);
        const noCsrf = await fetch('/tenants/{tenant_id}/rejects?all=true', {{method: 'DELETE'}});
        answers.push(noCsrf.status);
        return answers;
    }}""")
    assert forged == [403, 403, 403, 403, 403, 403, 403], forged
    assert rd.daemon.stream.consumer_count(other) == 1


async def test_an_operator_scales_a_stream_from_the_page(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        browser: Browser, tmp_path: Path) -> None:
    settings = settings_factory(extra_apps=APPS)
    profile(settings, tenant_id, stream={"app": "stream_echo", "min_consumers": 1, "max_consumers": 4})
    rd = await start_daemon(settings)
    await await_until(lambda: rd.daemon.stream.consumer_count(tenant_id) == 1, 30, "one consumer")
    page = await browser.new_page(viewport=DESKTOP)
    await sign_in(page, rd.url, ADMIN_TOKEN)
    link = page.get_by_role("link", name=tenant_id)
    await expect(link).to_be_visible()
    row = page.locator("#tenants tbody tr", has=link)
    await expect(row.locator("td").nth(6)).to_have_text("1 (1–4)")  # consumers and their bounds
    await expect(page.locator("#instances tbody tr", has_text="(this one)").locator("td").nth(1)).to_have_text("up")
    await screenshot(page, shots(tmp_path), "overview")
    await link.click()
    await expect(page.locator("#stream-status")).to_contain_text("1 consumers (1–4)")
    page.once("dialog", lambda dialog: dialog.accept())
    await page.get_by_label("Consumers").fill("3")
    await page.get_by_role("button", name="Scale").click()
    await await_until(lambda: rd.daemon.stream.consumer_count(tenant_id) == 3, 30, "three consumers")
    await expect(page.locator("#stream-status")).to_contain_text("3 consumers (1–4)", timeout=15_000)
    await expect(page.locator("#timeline")).to_contain_text("consumers 1 → 3", timeout=15_000)
    await expect(page.locator("#profile")).to_contain_text("stream_echo")
    await screenshot(page, shots(tmp_path), "tenant-stream")
    page.once("dialog", lambda dialog: dialog.accept())
    await page.get_by_role("button", name="Stop").click()
    await await_until(lambda: rd.daemon.stream.consumer_count(tenant_id) == 0, 30, "the stream stopped")
    await expect(page.locator("#stream-status")).to_contain_text("0 consumers", timeout=15_000)


async def test_the_rejects_browser_shows_raw_records_and_filters_by_reason(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        browser: Browser, mongo: AsyncMongoClient[dict[str, Any]], tmp_path: Path) -> None:
    settings = settings_factory(extra_apps=APPS, batch={"stable_after_s": 0.2, "rescan_interval_s": 0.5})
    token = profile(settings, tenant_id, batch={"app": "upload_rows", "formats": ["csv"], "max_error_rate": 0.5})
    rd = await start_daemon(settings)
    drop(settings, tenant_id, "some-bad.csv", rows_csv(10, bad=frozenset({3, 7})))
    await wait_outcome(mongo, tenant_id, "some-bad.csv")
    await mongo[f"tenant_{tenant_id}"]["_rejects"].insert_one({
        "_id": "stream:m1", "source": "stream", "kind": "malformed", "reason": "the message body is not valid JSON",
        "tenant": tenant_id, "message_id": "m1", "raw": "{not json"})
    page = await browser.new_page(viewport=DESKTOP)
    await sign_in(page, rd.url, token)
    rows = page.locator("#rejects tbody tr")
    await expect(rows).to_have_count(3)
    await rows.filter(has_text="record 3").get_by_role("button").click()
    await expect(page.locator("#reject-detail")).to_contain_text("3,name3,x")
    await page.get_by_label("Reason").select_option("parse")
    await expect(rows).to_have_count(2)
    await expect(rows.filter(has_text="message m1")).to_have_count(0)
    await page.get_by_label("Reason").select_option("malformed")
    await expect(rows).to_have_count(1)
    await rows.first.get_by_role("button").click()
    await expect(page.locator("#reject-detail")).to_contain_text("{not json")
    await screenshot(page, shots(tmp_path), "tenant-rejects")


async def test_the_page_reconnects_after_a_restart_and_catches_up(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        browser: Browser, mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = settings_factory(extra_apps=APPS, http_port=port,
                                batch={"stable_after_s": 0.2, "rescan_interval_s": 0.5})
    token = profile(settings, tenant_id, batch={"app": "upload_rows", "formats": ["csv"]})
    first = await start_daemon(settings)
    page = await browser.new_page(viewport=DESKTOP)
    await sign_in(page, first.url, token)
    first.daemon.request_stop("restart in a test")
    await first.task
    await expect(page.locator("#live")).to_have_text("connection lost: reconnecting…", timeout=15_000)
    drop(settings, tenant_id, "while-down.csv", rows_csv(4))  # loads once the daemon is back
    second = await start_daemon(settings)
    assert second.url == first.url
    await expect(page.locator("#live")).to_have_text("reconnected: caught up", timeout=30_000)
    await wait_outcome(mongo, tenant_id, "while-down.csv")
    row = page.locator("#files tbody tr", has_text="while-down.csv")
    await expect(row.locator("td").nth(1)).to_have_text("committed", timeout=30_000)
