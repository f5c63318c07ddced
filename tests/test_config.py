"""Settings: defaults, sources, and the one-line error for an invalid setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mysimbdp.config import load_settings
from mysimbdp.errors import ConfigError


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MYSIMBDP_HTTP_PORT", "MYSIMBDP_MONGO_URI", "MYSIMBDP_STAGING_DIR"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings(tmp_path)
    assert s.http_port == 8080
    assert s.http_host == "127.0.0.1"
    assert s.mongo_uri is None
    assert s.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert s.tenants_dir == tmp_path / "tenants"


def test_env_beats_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mysimbdp.toml").write_text('http_port = 9000\nlog_level = "warning"\n[batch]\nwrite_batch_size = 500\n')
    monkeypatch.setenv("MYSIMBDP_HTTP_PORT", "9100")
    s = load_settings(tmp_path)
    assert s.http_port == 9100
    assert s.log_level == "warning"
    assert s.batch.write_batch_size == 500


def test_nested_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYSIMBDP_BATCH__MAX_CONCURRENT_FILES", "7")
    assert load_settings(tmp_path).batch.max_concurrent_files == 7


@pytest.mark.parametrize(("var", "value", "fragment"), [
    ("MYSIMBDP_HTTP_PORT", "not-a-port", "MYSIMBDP_HTTP_PORT"),
    ("MYSIMBDP_HTTP_PORT", "70000", "less than or equal to 65535"),
    ("MYSIMBDP_AMQP_URL", "http://x", "amqp://"),
    ("MYSIMBDP_MONGO_URI", "postgres://x", "mongodb://"),
    ("MYSIMBDP_LOG_LEVEL", "loud", "MYSIMBDP_LOG_LEVEL"),
    ("MYSIMBDP_BATCH", "{", "not valid JSON"),
    ("MYSIMBDP_EXTRA_APPS", "flights=mysimbdp_flights", "not valid JSON"),
])
def test_invalid_setting_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, var: str, value: str, fragment: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path)
    assert var == info.value.setting
    assert fragment in str(info.value)


def test_bad_toml_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "mysimbdp.toml").write_text("http_port = = 3\n")
    with pytest.raises(ConfigError, match="mysimbdp.toml"):
        load_settings(tmp_path)


def test_daemon_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MYSIMBDP_HTTP_PORT": "eighty", "MYSIMBDP_CONFIG_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", "from mysimbdp.cli import daemon_main; daemon_main()"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "MYSIMBDP_HTTP_PORT" in lines[0]
    assert "Traceback" not in proc.stderr
