"""This daemon's instance id: ``MYSIMBDP_INSTANCE_ID``, or the host name and a random suffix
chosen once and kept in ``<var>/instance-id`` (so a restarted daemon is the same instance and
takes its own unfinished files back at once)."""

from __future__ import annotations

import os
import re
import secrets
import socket
from pathlib import Path

from mysimbdp.errors import ConfigError

__all__ = ["instance_id", "ID_PATTERN", "ID_FILE"]

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ID_FILE = "instance-id"


def instance_id(configured: str | None, var_dir: Path) -> str:
    """The configured id, else the one kept in ``<var>/instance-id`` (made on first use)."""
    if configured:
        return configured
    path = var_dir / ID_FILE
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        kept = ""
    if kept:
        if not ID_PATTERN.match(kept):
            raise ConfigError(str(path), f"{kept[:80]!r} is not an instance id (letters, digits, '.', '_', '-'; "
                              "at most 64); remove the file to have a new one chosen")
        return kept
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:50].strip(".-_") or "mysimbdp"
    new = f"{host}-{secrets.token_hex(3)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{ID_FILE}.{os.getpid()}")
    tmp.write_text(new + "\n")
    os.replace(tmp, path)
    return new
