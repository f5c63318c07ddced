"""Confinement of an app worker: resource limits, no network, a read-only view of the code.

Applied by the worker to itself before it imports the tenant's app (so the app's import-time
code is confined too):

1. **Resource limits** (``setrlimit``): address space, CPU seconds, open files, file size 0
   (it cannot write files), core dumps off.
2. **A network namespace of its own** where the kernel lets the worker make one (root, or
   unprivileged user namespaces): no interface but a loopback that is down, so no TCP, UDP
   or abstract-socket connection to anything.
3. **Landlock** (Linux ≥ 5.13; TCP rules from ABI 4, Linux 6.7; signal and abstract-socket
   scoping from ABI 6, Linux 6.12): files may only be *read*, and only under the Python
   installation, the directories of the packages the worker needs, and a few system paths
   (shared libraries, time zones); nothing can be written, created or executed; TCP bind and
   connect are refused; signals to processes outside the worker (the daemon) are refused.

:func:`confine` returns what was applied; the worker reports it and the daemon refuses a
worker with neither Landlock nor a network namespace unless the operator allows it
(``MYSIMBDP_RUNNER__REQUIRE_CONFINEMENT=false``).
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["confine", "landlock_abi", "read_only_paths"]

# Landlock's system calls have the same numbers on every architecture (they are newer than 424)
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000

# file-system rights by ABI version
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_V1 = (1 << 13) - 1  # execute .. make_sym
_FS_BY_ABI = {1: _FS_V1, 2: _FS_V1 | 1 << 13, 3: _FS_V1 | 1 << 13 | 1 << 14}
_FS_ALL_V5 = _FS_BY_ABI[3] | 1 << 15  # + ioctl_dev
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | 1 << 14 | 1 << 15  # rights a file rule may hold

#: System paths a Python process may need to read (shared libraries, time zones, locales).
SYSTEM_READ = ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/share/zoneinfo", "/usr/share/locale",
               "/etc/ld.so.cache", "/etc/localtime", "/dev/null", "/dev/urandom", "/dev/zero")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where it has none (or it is disabled)."""
    if not sys.platform.startswith("linux"):
        return 0
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(ctypes.c_long(_SYS_CREATE_RULESET), None, ctypes.c_size_t(0),
                           ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(version), 0)


def read_only_paths(packages: Iterable[str]) -> list[str]:
    """What the worker may read: the Python installation, the given package directories, system paths.

    A ``sys.path`` entry outside the installation (a source checkout, say) is not allowed as a
    whole: it may hold the platform's own ``var/`` or ``staging/``; only the directories of
    ``packages`` found there are.
    """
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    paths = set(prefixes)
    for package in packages:
        path = _package_dir(package)
        if path is not None:
            paths.add(path)
    paths.update(p for p in SYSTEM_READ if os.path.exists(p))
    return sorted(paths)


def _package_dir(name: str) -> str | None:
    """Where top-level package or module ``name`` lives, found without importing it."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        locations = list(spec.submodule_search_locations)
        return os.path.realpath(locations[0]) if locations else None
    return os.path.realpath(spec.origin) if spec.origin and os.path.exists(spec.origin) else None


def confine(limits: dict[str, int], packages: Iterable[str]) -> dict[str, Any]:
    """Apply every confinement the kernel offers to this process; returns what was applied."""
    applied: dict[str, Any] = {"rlimits": _rlimits(limits)}
    applied["netns"] = _new_netns()
    applied["landlock_abi"] = _landlock(read_only_paths(packages))
    return applied


def _rlimits(limits: dict[str, int]) -> bool:
    wanted = {resource.RLIMIT_AS: limits["memory_mb"] * 1024 * 1024,
              resource.RLIMIT_CPU: limits["cpu_s"],
              resource.RLIMIT_NOFILE: limits["open_files"],
              resource.RLIMIT_FSIZE: 0,
              resource.RLIMIT_CORE: 0}
    for kind, value in wanted.items():
        soft, hard = resource.getrlimit(kind)
        cap = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (cap, cap))
    return True


def _new_netns() -> bool:
    """A network namespace of our own (root), else inside a new user namespace; False if neither."""
    libc = _libc()
    for flags in (_CLONE_NEWNET, _CLONE_NEWUSER | _CLONE_NEWNET):
        if libc.unshare(ctypes.c_int(flags)) == 0:
            return True
    return False


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _landlock(readable: list[str]) -> int:
    """Restrict this process (and its children) to reading ``readable``; returns the ABI used (0: none)."""
    abi = landlock_abi()
    if abi <= 0:
        return 0
    handled_fs = _FS_BY_ABI.get(abi, _FS_ALL_V5)
    attr = _RulesetAttr(handled_fs, _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0,
                        _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL if abi >= 6 else 0)
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    ruleset = libc.syscall(ctypes.c_long(_SYS_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(size),
                           ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        for path in readable:
            _allow(libc, int(ruleset), path)
        if libc.prctl(ctypes.c_int(_PR_SET_NO_NEW_PRIVS), ctypes.c_ulong(1), ctypes.c_ulong(0),
                      ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(ctypes.c_long(_SYS_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(int(ruleset))
    return abi


def _allow(libc: ctypes.CDLL, ruleset: int, path: str) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a path that is not there needs no rule
    try:
        is_dir = Path(path).is_dir()
        rights = _FS_READ_FILE | _FS_READ_DIR if is_dir else _FS_READ_FILE
        if path == "/dev/null":
            rights |= _FS_WRITE_FILE
        rule = _PathBeneath(rights & (~0 if is_dir else _FILE_RIGHTS), fd)
        if libc.syscall(ctypes.c_long(_SYS_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                        ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)
