"""The ``mysimbdp`` tool: help, apps, and the tenant-profile commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mysimbdp.cli import main
from mysimbdp.http.tokens import hash_token
from mysimbdp.tenants import load_profile


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("apps", "tenants"):
        assert command in out


def test_apps_lists_installed_example_apps() -> None:
    out = subprocess.run([sys.executable, "-c", "from mysimbdp.cli import main; main(['apps', '--json'])"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    apps = {a["name"]: a for a in json.loads(out.stdout)}
    assert apps["flights"]["kinds"] == ["batch"]
    assert apps["weather_stream"]["kinds"] == ["stream"]
    assert apps["flights"]["distribution"] == "mysimbdp-flights"
    assert apps["flights"]["version"]


def _profile(dir_: Path, tid: str, body: str = "") -> Path:
    (dir_ / "tenants").mkdir(parents=True, exist_ok=True)
    path = dir_ / "tenants" / f"{tid}.toml"
    path.write_text(f'id = "{tid}"\nname = "T"\n{body}')
    return path


def test_tenants_check_reports_invalid_profiles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _profile(tmp_path, "good", '[batch]\napp = "flights"\n')
    _profile(tmp_path, "bad", '[batch]\napp = "flights"\nmax_file_bytes = -5\n')
    code, out, _ = run(capsys, "--config-dir", str(tmp_path), "tenants", "check")
    assert code == 1
    assert "ok       good" in out
    assert "batch.max_file_bytes" in out and "bad.toml" in out


def test_tenants_check_warns_of_apps_not_installed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid profile naming an app that is not installed: a warning per app, not a failure."""
    _profile(tmp_path, "lost", '[batch]\napp = "nowhere"\n[[batch.routes]]\npattern = "*.jsonl"\n'
             'app = "flights"\n[stream]\napp = "weather_stream"\n[stream.apps]\nalerts = "gone_too"\n')
    code, out, _ = run(capsys, "--config-dir", str(tmp_path), "tenants", "check")
    assert code == 0
    warnings = [line for line in out.splitlines() if line.startswith("warn")]
    assert len(warnings) == 2 and "ok       lost" not in out
    assert "[batch] names app 'nowhere'" in warnings[0] and "[stream] type 'alerts' names app 'gone_too'" in warnings[1]


def test_tenants_token_stores_only_the_hash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _profile(tmp_path, "acme", '[batch]\napp = "x"\n')
    code, out, _ = run(capsys, "--config-dir", str(tmp_path), "tenants", "token", "acme")
    assert code == 0
    token = out.strip()
    assert len(token) >= 40
    assert token not in path.read_text()
    assert load_profile(path).token_sha256 == hash_token(token)
    # a second token replaces the first
    code, out2, _ = run(capsys, "--config-dir", str(tmp_path), "tenants", "token", "acme")
    assert load_profile(path).token_sha256 == hash_token(out2.strip()) != hash_token(token)
    assert path.read_text().count("token_sha256") == 1


def test_tenants_token_unknown_tenant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--config-dir", str(tmp_path), "tenants", "token", "nobody")
    assert code == 1
    assert "no such tenant profile" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("text", [
    # comments are kept; the hash goes above the first section and its comment
    '# owner: team A\nid = "acme"\nname = "T"\n\n# batch settings\n[batch]\napp = "x"\n',
    # an indented header
    'id = "acme"\n  [batch]\n  app = "x"\n',
    # a multi-line string holding a line that looks like a header
    'id = "acme"\nname = """Acme\n[not a section]\n"""\n[batch]\napp = "x"\n',
    # no section at all, no newline at the end
    'id = "acme"',
])
def test_tenants_token_goes_to_the_top_level_and_keeps_the_rest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    import tomllib

    (tmp_path / "tenants").mkdir()
    path = tmp_path / "tenants" / "acme.toml"
    path.write_text(text)
    before = load_profile(path)
    code, out, err = run(capsys, "--config-dir", str(tmp_path), "tenants", "token", "acme")
    assert code == 0, err
    after_text = path.read_text()
    data = tomllib.loads(after_text)
    assert data["token_sha256"] == hash_token(out.strip())
    assert {k: v for k, v in data.items() if k != "token_sha256"} == tomllib.loads(text)
    after = load_profile(path)
    assert after.model_dump(exclude={"token_sha256"}) == before.model_dump(exclude={"token_sha256"})
    for comment in (ln for ln in text.splitlines() if ln.startswith("#")):
        assert comment in after_text.splitlines()
    if "# batch settings" in text:
        assert after_text.index("token_sha256") < after_text.index("# batch settings")
    # a second run replaces the line, nothing else moves
    code, out2, _ = run(capsys, "--config-dir", str(tmp_path), "tenants", "token", "acme")
    assert path.read_text() == after_text.replace(hash_token(out.strip()), hash_token(out2.strip()))


def test_tenants_token_refuses_a_profile_that_starts_with_a_section(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A profile whose first line is a [section] has no top-level id: it is refused, untouched."""
    (tmp_path / "tenants").mkdir()
    path = tmp_path / "tenants" / "acme.toml"
    path.write_text('[batch]\napp = "x"\n')
    code, _, err = run(capsys, "--config-dir", str(tmp_path), "tenants", "token", "acme")
    assert code == 1 and "id" in err
    assert path.read_text() == '[batch]\napp = "x"\n'


def test_the_daemon_freezes_its_start_up_objects_and_collects_young_ones_less_often() -> None:
    """What ``mysimbdpd`` does to the garbage collector before it runs (in a process of its own)."""
    code = ("import gc\nfrom mysimbdp.cli import GC_YOUNG_THRESHOLD, _tune_gc\n"
            "before = gc.get_threshold()\n_tune_gc()\n"
            "print(before[0], gc.get_threshold()[0], GC_YOUNG_THRESHOLD, gc.get_freeze_count() > 1000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "700" and out[1] == out[2] and out[3] == "True"


def test_a_tenants_control_characters_never_reach_the_terminal() -> None:
    from mysimbdp.cli.admin import printable

    assert printable("bad\x1b[2J row\x07") == "bad?[2J row?"
    assert printable("a\nb", keep="\n") == "a\nb"
