"""``mysimbdp new-app``: the scaffold is an installable distribution whose app follows the contract."""

from __future__ import annotations

import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from mysimbdp import Reject
from mysimbdp.apps import App
from mysimbdp.apps.plugins import get_plugin_manager
from mysimbdp.cli import main


def test_new_app_scaffolds_a_working_batch_app(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["new-app", "sensors", "--dir", str(tmp_path)])
    assert exit_.value.code == 0
    root = tmp_path / "mysimbdp-sensors"
    assert "created" in capsys.readouterr().out
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["mysimbdp"] == {"sensors": "mysimbdp_sensors.batch"}

    monkeypatch.syspath_prepend(str(root))
    pm = get_plugin_manager({"sensors": "mysimbdp_sensors.batch"}, load_entry_points=False)
    app = App(pm, "sensors").require("batch")
    ctx = SimpleNamespace(file="s.csv")
    doc = app.call("mysimbdp_batch_wrangle", record={"time": "2024-05-01T10:00:00Z", "v": "3", "e": ""}, context=ctx)
    assert doc == {"time": datetime(2024, 5, 1, 10, tzinfo=UTC), "v": "3", "source_file": "s.csv"}
    with pytest.raises(Reject):
        app.call("mysimbdp_batch_wrangle", record={"v": "1"}, context=ctx)
    assert app.call("mysimbdp_batch_target", tenant="t").collection == "records"
    sys.modules.pop("mysimbdp_sensors.batch", None)
    sys.modules.pop("mysimbdp_sensors", None)


@pytest.mark.parametrize("name", ["Bad", "1x", "a-b", "x" * 40])
def test_new_app_refuses_bad_names(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["new-app", name, "--dir", str(tmp_path)])
    assert exit_.value.code == 1
    assert "is not valid" in capsys.readouterr().err


def test_new_app_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mysimbdp-taken").mkdir()
    with pytest.raises(SystemExit) as exit_:
        main(["new-app", "taken", "--dir", str(tmp_path)])
    assert exit_.value.code == 1 and "already exists" in capsys.readouterr().err


def _scaffold(tmp_path: Path, name: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, App]:
    with pytest.raises(SystemExit) as exit_:
        main(["new-app", name, "--kind", kind, "--dir", str(tmp_path)])
    assert exit_.value.code == 0
    root = tmp_path / f"mysimbdp-{name.replace('_', '-')}"
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    [(entry, module)] = meta["project"]["entry-points"]["mysimbdp"].items()
    assert entry == name
    monkeypatch.syspath_prepend(str(root))
    pm = get_plugin_manager({name: module}, load_entry_points=False)
    return root, App(pm, name)


def _forget(name: str) -> None:
    for module in [m for m in sys.modules if m == f"mysimbdp_{name}" or m.startswith(f"mysimbdp_{name}.")]:
        sys.modules.pop(module)


def test_new_app_scaffolds_a_working_stream_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, app = _scaffold(tmp_path, "meters", "stream", monkeypatch)
    app.require("stream")
    assert not (root / "mysimbdp_meters" / "batch.py").exists()
    message = SimpleNamespace(tenant="t", routing_key="t", message_id="m1", timestamp=None, index=0)
    doc = app.call("mysimbdp_stream_wrangle", record={"time": "2024-05-01T10:00:00Z", "v": 3, "n": None},
                   message=message)
    assert doc == {"time": datetime(2024, 5, 1, 10, tzinfo=UTC), "v": 3}
    with pytest.raises(Reject):
        app.call("mysimbdp_stream_wrangle", record={"v": 1}, message=message)
    assert app.call("mysimbdp_stream_target", tenant="t").collection == "events"
    readme = (root / "README.md").read_text()
    assert "[stream]" in readme and "[batch]" not in readme and "mysimbdp publish" in readme
    _forget("meters")


def test_new_app_scaffolds_an_app_of_both_kinds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, app = _scaffold(tmp_path, "both_ways", "both", monkeypatch)
    app.require("batch")
    app.require("stream")
    assert app.call("mysimbdp_batch_target", tenant="t").collection == "records"
    assert app.call("mysimbdp_stream_target", tenant="t").collection == "events"
    readme = (root / "README.md").read_text()
    assert "[batch]" in readme and "[stream]" in readme
    _forget("both_ways")
