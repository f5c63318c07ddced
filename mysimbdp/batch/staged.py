"""A staged file opened once: every later read of it goes through that one descriptor.

A tenant controls its staging folder: between the moment the watcher looks at a name and
the moment the platform reads it, the name may become a symbolic link (to ``/etc/passwd``,
to another tenant's archive), a FIFO (a read that blocks forever), a hard link to a file
the tenant should not read, or another file renamed over it. So the platform opens the
name exactly once, at admission, with ``O_NOFOLLOW | O_NONBLOCK`` (a link is refused, a
FIFO without a writer opens at once), checks the descriptor with ``fstat`` (a regular file,
one link, the inode and size the watcher saw), and from then on hashes, sniffs, parses and
archives *that inode*: :meth:`StagedFile.open_reader` gives independent readers of it,
:meth:`StagedFile.place` puts it into the archive, and :func:`take_name` removes the
staging name only while it still names that inode.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import io
import os
import stat
import uuid
from pathlib import Path
from typing import Any

from mysimbdp.errors import FileRejected

__all__ = ["StagedFile", "take_name", "rename_noreplace", "PRIVATE_PREFIX"]

#: Names the platform gives a staging entry for the moment it checks it (hidden: never picked up).
PRIVATE_PREFIX = ".mysimbdp-"
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20


class StagedFile:
    """The descriptor of an admitted staged file and the ``fstat`` it was admitted with.

    Not thread-safe as a whole, but every reader it hands out is independent (its own
    offset), so a hashing thread and a loading thread never disturb each other.
    """

    def __init__(self, fd: int, admitted: os.stat_result, name: str) -> None:
        self.fd = fd
        self.admitted = admitted
        self.name = name
        #: the most bytes of (decompressed) content one reader has delivered: after a full
        #: read, the content's size (see :class:`mysimbdp.batch.readers.LimitedReader`)
        self.content_bytes = 0

    @classmethod
    def open(cls, path: Path, seen: os.stat_result) -> StagedFile | None:
        """Open ``path`` once (blocking I/O: call it in a thread) and check what it is.

        ``seen`` is the watcher's ``lstat``. Returns None when the name no longer holds what
        the watcher saw (gone, another inode, another size): the next scan looks again.
        Raises :class:`FileRejected` ``not_regular`` (a link, FIFO, socket, device) or
        ``hard_link`` (more than one name for the inode: it may be another tenant's file).
        """
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EOPNOTSUPP, errno.ENODEV, errno.EISDIR):
                raise _not_regular() from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _not_regular()
            if (st.st_dev, st.st_ino, st.st_size) != (seen.st_dev, seen.st_ino, seen.st_size) or st.st_nlink == 0:
                os.close(fd)
                return None
            if st.st_nlink != 1:
                raise FileRejected("hard_link", f"the file has {st.st_nlink} names (a hard link): it may be a file the "
                                   "tenant must not read; copy the file itself into the staging folder",
                                   links=st.st_nlink)
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, st, path.name)

    # -- reading ---------------------------------------------------------------------------
    @property
    def identity(self) -> tuple[int, int]:
        """``(st_dev, st_ino)`` of the admitted inode."""
        return self.admitted.st_dev, self.admitted.st_ino

    @property
    def size(self) -> int:
        """The size it was admitted with."""
        return self.admitted.st_size

    def sha256(self) -> str:
        """The hex sha256 of the admitted content (blocking I/O: call it in a thread)."""
        with self.open_reader() as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    def open_reader(self) -> io.BufferedReader:
        """A new binary reader of the admitted inode at offset 0, independent of any other.

        ``/proc/self/fd/N`` opens the inode itself, whatever its name names now; without
        ``/proc``, a reader over ``pread`` on the shared descriptor.
        """
        self._check_open()
        try:
            reader = open(f"/proc/self/fd/{self.fd}", "rb")  # noqa: SIM115 - the caller closes it
        except OSError:
            return io.BufferedReader(_PreadReader(self.fd), buffer_size=_COPY_CHUNK)
        st = os.fstat(reader.fileno())
        if (st.st_dev, st.st_ino) != self.identity:  # never expected: /proc gave another file
            reader.close()
            return io.BufferedReader(_PreadReader(self.fd), buffer_size=_COPY_CHUNK)
        return reader

    def changed(self) -> bool:
        """Whether the inode's size or modification time differ from those it was admitted with."""
        st = os.fstat(self.fd)
        return (st.st_size, st.st_mtime_ns) != (self.admitted.st_size, self.admitted.st_mtime_ns)

    # -- archiving -------------------------------------------------------------------------
    def place(self, dest: Path, name: Path | None = None) -> None:
        """Put the admitted inode at ``dest`` (which must not exist): a hard link where the
        file system allows it, else a copy of its bytes read from the descriptor.

        The link is made from the descriptor (``/proc/self/fd``), else from the staging
        ``name`` and kept only if it turns out to be the admitted inode (the tenant may have
        replaced the name). Raises :class:`FileExistsError` if ``dest`` exists (nothing is ever
        replaced).
        """
        self._check_open()
        dest.parent.mkdir(parents=True, exist_ok=True)
        for source, follow in ((f"/proc/self/fd/{self.fd}", True), (name, False)):
            if source is None:
                continue
            try:
                os.link(source, dest, follow_symlinks=follow)
            except FileExistsError:
                raise
            except OSError:  # another file system, no /proc, no name left (renamed over)
                continue
            st = os.lstat(dest)
            if (st.st_dev, st.st_ino) == self.identity:
                return
            os.unlink(dest)  # the name named another file by now: not that one
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            offset = 0
            while chunk := os.pread(self.fd, _COPY_CHUNK, offset):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
                offset += len(chunk)
        except BaseException:
            os.close(out)
            os.unlink(dest)
            raise
        os.close(out)

    def remove_name(self, path: Path) -> bool:
        """Remove ``path`` if it still names the admitted inode; True if it did.

        A file put in its place meanwhile stays where it is, as a new file to load.
        """
        return take_name(path, self.identity, unlink=True) is not None

    # -- life ------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self.fd < 0

    def _check_open(self) -> None:
        if self.fd < 0:
            raise ValueError(f"the staged file {self.name!r} is closed")

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StagedFile({self.name!r}, fd={self.fd}, ino={self.admitted.st_ino}, size={self.size})"


class _PreadReader(io.RawIOBase):
    """A reader of a shared descriptor by ``pread``: its own offset, never closes the descriptor."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = os.pread(self._fd, len(buffer), self._offset)
        n = len(data)
        memoryview(buffer)[:n] = data
        self._offset += n
        return n


def _not_regular() -> FileRejected:
    return FileRejected("not_regular", "not a regular file (symbolic links, FIFOs and devices are not followed "
                        "or read); copy the file itself into the staging folder")


def take_name(path: Path, identity: tuple[int, int], *, unlink: bool = False) -> Path | None:
    """Take the staging name ``path`` from the tenant if it still names ``identity``.

    The name is first renamed to a hidden private name in the same folder (atomic: whatever
    it names is taken as a whole), then compared by ``(st_dev, st_ino)``. Ours: it is unlinked
    (``unlink``; returns ``path``) or left under the private name, which is returned for the
    caller to move. Not ours: it is put back under its name, replacing nothing, and None is
    returned (the watcher picks it up as a new file). Gone: None.
    """
    private = path.with_name(f"{PRIVATE_PREFIX}{uuid.uuid4().hex[:12]}-{path.name}"[:255])
    try:
        os.rename(path, private)
    except FileNotFoundError:
        return None
    st = os.lstat(private)
    if (st.st_dev, st.st_ino) == identity:
        if unlink:
            os.unlink(private)
            return path
        return private
    try:
        rename_noreplace(private, path)
    except FileExistsError:  # yet another file took the name meanwhile: keep both, neither replaced
        _keep_aside(private, path)
    return None


def _keep_aside(private: Path, path: Path) -> None:
    """Give a file that lost its name a visible one the watcher will pick up."""
    for _ in range(8):
        try:
            rename_noreplace(private, path.with_name(f"{uuid.uuid4().hex[:8]}-{path.name}"[:255]))
            return
        except FileExistsError:
            continue


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc: Any = None


def rename_noreplace(src: Path, dest: Path) -> None:
    """Rename ``src`` to ``dest`` atomically, raising :class:`FileExistsError` if ``dest`` exists.

    ``renameat2(RENAME_NOREPLACE)`` where the kernel and file system have it; else a hard
    link then an unlink (not for folders, which staging ignores anyway).
    """
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    fn = getattr(_libc, "renameat2", None) if _libc else None
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dest), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(src), None, str(dest))
    os.link(src, dest, follow_symlinks=False)
    os.unlink(src)
