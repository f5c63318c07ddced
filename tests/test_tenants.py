"""Tenant profiles: validation with key and reason; the registry's hot reload while running."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mysimbdp.batch.lifecycle import route_for
from mysimbdp.cli import main
from mysimbdp.errors import TenantProfileError
from mysimbdp.events import EventBus
from mysimbdp.logs import write_event
from mysimbdp.tenants import TenantChange, TenantRegistry, load_profile, load_profiles

GOOD = '''id = "acme"
name = "Acme"
token_sha256 = "{sha}"
[batch]
app = "flights"
formats = ["csv", "csv.gz", "jsonl"]
max_file_bytes = 104857600
max_staged_files = 20
max_concurrent_files = 2
storage_quota_bytes = 10737418240
[[batch.routes]]
pattern = "big-*.csv"
app = "heavy"
max_concurrent_files = 1
timeout_s = 7200
'''.replace("{sha}", "ab" * 32)


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_a_complete_profile(tmp_path: Path) -> None:
    profile = load_profile(_write(tmp_path, "acme.toml", GOOD))
    assert profile.batch is not None and profile.batch.formats == ("csv", "csv.gz", "jsonl")
    assert profile.batch.max_error_rate == 0.10
    route = route_for(profile.batch, "big-2024.csv")
    assert route is not None and (route.app, route.max_concurrent_files, route.timeout_s) == ("heavy", 1, 7200)
    assert route_for(profile.batch, "small.csv") is None


@pytest.mark.parametrize(("name", "text", "key", "words"), [
    ("acme.toml", GOOD.replace('id = "acme"', 'id = "Acme!"'), "id", "must match"),
    ("other.toml", GOOD, "id", "file is named"),
    ("acme.toml", GOOD.replace("max_staged_files = 20", "max_staged_files = 0"), "batch.max_staged_files", "greater"),
    ("acme.toml", GOOD.replace('formats = ["csv", "csv.gz", "jsonl"]', 'formats = ["xml"]'), "batch.formats.0", "csv"),
    ("acme.toml", GOOD.replace("max_file_bytes", "max_file_byte"), "batch.max_file_byte", "not permitted"),
    ("acme.toml", GOOD.replace("ab" * 32, "nothex"), "token_sha256", "sha256"),
    ("acme.toml", GOOD + "[[[", "(file)", ""),
    ("acme.toml", GOOD.replace('app = "flights"\n', ""), "batch.app", "required"),
])
def test_invalid_profiles_name_the_key_and_reason(tmp_path: Path, name: str, text: str, key: str, words: str) -> None:
    with pytest.raises(TenantProfileError) as err:
        load_profile(_write(tmp_path, name, text))
    assert err.value.key == key
    assert words.lower() in err.value.problem.lower()
    assert name in str(err.value)


def test_example_profiles_are_valid() -> None:
    profiles, errors = load_profiles(Path(__file__).resolve().parent.parent / "config" / "tenants")
    assert errors == []
    assert {"flights", "weather"} <= set(profiles)
    assert profiles["flights"].batch is not None and profiles["flights"].batch.app == "flights"


def test_tenants_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path / "tenants", "acme.toml", GOOD)
    _write(tmp_path / "tenants", "bad.toml", 'id = "bad"\n[batch]\nmax_concurrent_files = 0\n')
    with pytest.raises(SystemExit) as exit_:
        main(["--config-dir", str(tmp_path), "tenants", "check"])
    out = capsys.readouterr().out
    assert exit_.value.code == 1
    assert "bad.toml: batch.app" in out
    # acme is valid; its route names an app this environment does not have
    assert "warn     acme: [batch] route 'big-*.csv' names app 'heavy'" in out


async def _wait(changes: list[TenantChange], n: int) -> None:
    for _ in range(200):
        if len(changes) >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {n} changes, got {changes}")


async def test_registry_hot_reload_onboard_edit_invalid_offboard(tmp_path: Path) -> None:
    folder = tmp_path / "tenants"
    stop = asyncio.Event()
    registry = TenantRegistry(folder, stop, bus=EventBus(write_event))
    changes: list[TenantChange] = []

    async def listener(change: TenantChange) -> None:
        changes.append(change)

    registry.add_listener(listener)
    _write(folder, "acme.toml", GOOD)
    await registry.start()
    try:
        await _wait(changes, 1)
        assert (changes[0].kind, changes[0].tenant) == ("added", "acme"), "existing tenants replay as added"
        await asyncio.sleep(0.5)  # the file watcher sets itself up in the background

        _write(folder, "beta.toml", 'id = "beta"\n[batch]\napp = "weather"\n')
        await _wait(changes, 2)
        assert (changes[1].kind, changes[1].tenant) == ("added", "beta")

        _write(folder, "beta.toml", 'id = "beta"\n[batch]\napp = "weather"\nmax_file_bytes = 10\n')
        await _wait(changes, 3)
        assert changes[2].kind == "changed" and changes[2].new is not None and changes[2].new.batch is not None
        assert changes[2].new.batch.max_file_bytes == 10

        _write(folder, "beta.toml", 'id = "beta"\n[batch]\napp = "weather"\nmax_file_bytes = -1\n')
        for _ in range(100):
            if registry.errors:
                break
            await asyncio.sleep(0.05)
        [(path, err)] = registry.errors.items()
        assert path.endswith("beta.toml") and err.key == "batch.max_file_bytes"
        beta = registry.get("beta")
        assert beta is not None and beta.batch is not None and beta.batch.max_file_bytes == 10, \
            "an invalid edit keeps the last valid profile"
        assert registry.get("acme") is not None, "other tenants keep running"

        (folder / "beta.toml").unlink()
        await _wait(changes, 4)
        assert (changes[3].kind, changes[3].tenant) == ("removed", "beta")
        assert [t.id for t in registry.all()] == ["acme"] and registry.errors == {}
    finally:
        stop.set()
        await registry.stop()


async def test_rescan_finds_a_profile_without_file_events(tmp_path: Path) -> None:
    """A profile written while no watcher runs is still picked up by the periodic rescan."""
    folder = tmp_path / "tenants"
    folder.mkdir()
    stop = asyncio.Event()
    registry = TenantRegistry(folder, stop, rescan_interval_s=0.2, bus=EventBus(write_event))
    registry._watch = _no_watch  # type: ignore[method-assign]  # only the rescan may find it
    await registry.start()
    try:
        _write(folder, "late.toml", 'id = "late"\n[batch]\napp = "weather"\n')
        for _ in range(50):
            if "late" in registry:
                break
            await asyncio.sleep(0.1)
        assert "late" in registry
    finally:
        stop.set()
        await registry.stop()


async def _no_watch() -> None:
    await asyncio.Event().wait()


def test_write_profile_round_trips(tmp_path: Path) -> None:
    from mysimbdp.tenants import dumps_profile, write_profile

    data = {"id": "acme", "name": 'Acme "quoted"', "token_sha256": None,
            "batch": {"app": "weather", "formats": ["csv", "jsonl"], "max_file_bytes": 10, "max_error_rate": 0.5,
                      "routes": [{"pattern": "big-*", "app": "flights", "timeout_s": 5.0}]},
            "stream": {"app": "weather_stream", "autostart": False, "apps": {"alerts": "flights_stream"}}}
    path = write_profile(tmp_path, data)
    profile = load_profile(path)
    assert profile.name == 'Acme "quoted"'
    assert profile.batch is not None and profile.batch.formats == ("csv", "jsonl")
    assert profile.batch.routes[0].app == "flights"
    assert profile.stream is not None and profile.stream.autostart is False
    assert profile.stream.apps == {"alerts": "flights_stream"}
    assert "[stream.apps]" in dumps_profile(data)


def test_the_folder_signature_changes_with_every_profile_change_and_only_then(tmp_path: Path) -> None:
    """The periodic rescan reads the profiles again only when the signature changed: adding,
    rewriting (even to the same size), replacing and removing a profile each change it."""
    import os

    from mysimbdp.tenants import folder_signature

    empty = folder_signature(tmp_path)
    assert empty == frozenset() and folder_signature(tmp_path / "missing") == frozenset()
    (tmp_path / "a.toml").write_text('id = "a"\n')
    (tmp_path / "notes.txt").write_text("not a profile")
    added = folder_signature(tmp_path)
    assert added != empty and folder_signature(tmp_path) == added
    (tmp_path / "notes.txt").write_text("still not a profile, longer")
    assert folder_signature(tmp_path) == added
    st = (tmp_path / "a.toml").stat()
    (tmp_path / "a.toml").write_text('id = "b"\n')  # same size
    os.utime(tmp_path / "a.toml", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    rewritten = folder_signature(tmp_path)
    assert rewritten != added
    (tmp_path / "b.tmp").write_text('id = "b"\n')
    os.replace(tmp_path / "b.tmp", tmp_path / "a.toml")  # a new inode under the same name
    replaced = folder_signature(tmp_path)
    assert replaced != rewritten
    (tmp_path / "a.toml").unlink()
    assert folder_signature(tmp_path) == empty
