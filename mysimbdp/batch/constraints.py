"""A tenant's batch constraints, checked before any parsing: name, format, size, count, quota.

Used at both doors: the staging watcher (files dropped in place) and the upload endpoint
(files sent over HTTP), so that both refuse the same files with the same reason codes.
"""

from __future__ import annotations

from dataclasses import dataclass

from mysimbdp.errors import FileRejected
from mysimbdp.tenants import FORMATS, BatchProfile

__all__ = ["detect_format", "check_name", "check_file", "Usage", "REASON_CODES"]

#: Every reason code a file can be refused with, and what it means.
REASON_CODES = {
    "bad_name": "the file name is not allowed",
    "format": "the file's format is not one the tenant's profile allows",
    "too_big": "the file is larger than the tenant's max_file_bytes",
    "staging_full": "the tenant already has max_staged_files files waiting",
    "over_quota": "loading the file would exceed the tenant's storage_quota_bytes",
    "duplicate": "a file with the same content (sha256) was already committed",
    "content": "the content does not match the format its name claims",
    "error_rate": "too many records were malformed or rejected",
    "app_failed": "the tenant's app failed on the file as a whole",
    "timeout": "loading took longer than the tenant's timeout_s",
    "not_regular": "not a regular file (e.g. a symbolic link, a FIFO); not followed or read",
    "hard_link": "the file has more than one name (a hard link): it may be a file the tenant must not read",
    "changed": "the file was written to while it loaded (its size or modification time changed)",
    "no_app": "the app the tenant's profile names is not installed or is not a batch app",
    "contract": "a document violates the route's schema contract, whose on_violation is reject_file",
    "internal": "the platform failed on the file (a bug: the reason names it)",
}

_FORBIDDEN_CHARS = set("/\\\0")


def detect_format(name: str) -> str | None:
    """The format a file name claims (``csv``, ``csv.gz``, ``jsonl``, ``jsonl.gz``), or None."""
    lower = name.lower()
    for fmt in sorted(FORMATS, key=len, reverse=True):
        if lower.endswith("." + fmt):
            return fmt
    return None


def check_name(name: str) -> None:
    """Refuse names that could escape the tenant's folder or hide from the watcher."""
    if not name or name in (".", ".."):
        raise FileRejected("bad_name", "the file name is empty")
    if len(name.encode("utf-8", "surrogateescape")) > 255:
        raise FileRejected("bad_name", "the file name is longer than 255 bytes")
    if any(c in _FORBIDDEN_CHARS for c in name) or ".." in name:
        raise FileRejected("bad_name", "the file name must not contain '/', '\\', '..' or NUL")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise FileRejected("bad_name", "the file name must not contain control characters")
    if name.startswith("."):
        raise FileRejected("bad_name", "the file name must not start with '.' (hidden and in-progress files are ignored)")
    if name.endswith(".part"):
        raise FileRejected("bad_name", "the file name must not end with '.part' (in-progress uploads use it)")


@dataclass(frozen=True)
class Usage:
    """What the tenant has in the platform now."""

    staged_files: int  # files waiting in staging, not counting the one checked
    used_bytes: int  # bytes of committed files (counted against the quota)


def check_file(profile: BatchProfile, name: str, size: int, usage: Usage) -> str:
    """Check a file against the profile before any parsing; returns its format.

    Raises :class:`FileRejected` with code ``format``, ``too_big``, ``staging_full`` or
    ``over_quota``.
    """
    fmt = detect_format(name)
    if fmt is None or fmt not in profile.formats:
        allowed = ", ".join(profile.formats)
        raise FileRejected("format", f"{name!r} is not an allowed format; allowed: {allowed}", allowed=list(profile.formats))
    if size > profile.max_file_bytes:
        raise FileRejected("too_big", f"{size} bytes is over the limit of {profile.max_file_bytes} bytes",
                           bytes=size, limit=profile.max_file_bytes)
    if usage.staged_files >= profile.max_staged_files:
        raise FileRejected("staging_full", f"{usage.staged_files} files are already waiting (limit {profile.max_staged_files}); "
                           "wait for them to load", staged=usage.staged_files, limit=profile.max_staged_files)
    # a .gz file is admitted on its compressed size; its load is cut (over_quota) where its
    # decompressed content passes what the quota leaves
    if usage.used_bytes + size > profile.storage_quota_bytes:
        raise FileRejected("over_quota", f"{usage.used_bytes} bytes used + {size} would exceed the quota of "
                           f"{profile.storage_quota_bytes} bytes", used=usage.used_bytes, limit=profile.storage_quota_bytes)
    return fmt
