"""This daemon's instance id: configured, or chosen once and kept in ``<var>/instance-id``."""

from __future__ import annotations

from pathlib import Path

import pytest

from mysimbdp.cluster.identity import ID_PATTERN, instance_id
from mysimbdp.config import load_settings
from mysimbdp.errors import ConfigError


def test_the_configured_id_wins(tmp_path: Path) -> None:
    assert instance_id("node-1", tmp_path) == "node-1"
    assert not (tmp_path / "instance-id").exists()


def test_an_id_is_chosen_once_and_kept(tmp_path: Path) -> None:
    first = instance_id(None, tmp_path / "var")
    assert ID_PATTERN.match(first) and "-" in first
    assert (tmp_path / "var" / "instance-id").read_text().strip() == first
    assert instance_id(None, tmp_path / "var") == first  # a restart is the same instance
    assert instance_id(None, tmp_path / "other") != first  # another var directory, another instance


def test_a_damaged_id_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "instance-id").write_text("../../etc\n")
    with pytest.raises(ConfigError, match="remove the file"):
        instance_id(None, tmp_path)


@pytest.mark.parametrize("bad", ["", "-x", "a/b", "a b", "x" * 65])
def test_the_setting_is_checked(tmp_path: Path, bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYSIMBDP_INSTANCE_ID", bad)
    if bad == "":
        assert load_settings(tmp_path).instance_id is None  # empty is unset
        return
    with pytest.raises(ConfigError, match="INSTANCE_ID"):
        load_settings(tmp_path)
