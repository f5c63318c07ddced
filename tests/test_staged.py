"""StagedFile: opened once, checked by fstat, read and archived by descriptor, never by name."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mysimbdp.batch.readers import open_stream, sniff
from mysimbdp.batch.staged import StagedFile, rename_noreplace, take_name
from mysimbdp.errors import FileRejected


def _file(tmp_path: Path, text: str = "n\n1\n2\n") -> tuple[Path, os.stat_result]:
    path = tmp_path / "a.csv"
    path.write_text(text)
    return path, os.lstat(path)


def test_reads_the_admitted_inode_whatever_the_name_becomes(tmp_path: Path) -> None:
    path, st = _file(tmp_path)
    other = tmp_path / "other"
    other.write_text("secret\n")
    with StagedFile.open(path, st) as staged:  # type: ignore[union-attr]
        os.symlink(other, tmp_path / ".l")
        os.replace(tmp_path / ".l", path)
        with staged.open_reader() as a, staged.open_reader() as b:
            assert a.read(2) == b"n\n" and b.read() == b"n\n1\n2\n" and a.read() == b"1\n2\n"
        sniff(staged, "csv")
        with open_stream(staged, "csv", 100) as stream:
            assert stream.read() == b"n\n1\n2\n"
        assert staged.content_bytes == 6 and not staged.changed()
        assert not staged.remove_name(path), "the symlink is not ours: it stays"
        assert path.is_symlink()
    assert staged.closed


def test_symlink_fifo_and_hard_link_are_refused(tmp_path: Path) -> None:
    path, _ = _file(tmp_path)
    link = tmp_path / "l.csv"
    os.symlink(path, link)
    with pytest.raises(FileRejected) as err:
        StagedFile.open(link, os.lstat(link))
    assert err.value.code == "not_regular"
    fifo = tmp_path / "f.csv"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(FileRejected) as err:
        StagedFile.open(fifo, os.lstat(fifo))
    assert err.value.code == "not_regular" and time.monotonic() - started < 1
    os.link(path, tmp_path / "h.csv")
    with pytest.raises(FileRejected) as err:
        StagedFile.open(path, os.lstat(path))
    assert err.value.code == "hard_link"


def test_not_what_the_watcher_saw_is_released(tmp_path: Path) -> None:
    path, st = _file(tmp_path)
    path.write_text("n\n1\n2\n3\n")  # another size
    assert StagedFile.open(path, st) is None
    assert StagedFile.open(tmp_path / "gone.csv", st) is None


def test_changed_and_placed(tmp_path: Path) -> None:
    path, st = _file(tmp_path)
    staged = StagedFile.open(path, st)
    assert staged is not None
    dest = tmp_path / "archive" / "a.csv"
    staged.place(dest, path)
    assert os.path.samefile(dest, path), "a hard link, from the name once checked"
    with pytest.raises(FileExistsError):
        staged.place(dest, path)
    assert staged.remove_name(path) and not path.exists()
    staged.place(tmp_path / "archive" / "copy.csv")  # no name left: copied from the descriptor
    assert (tmp_path / "archive" / "copy.csv").read_text() == "n\n1\n2\n"
    with open(dest, "a") as f:
        f.write("4\n")
    assert staged.changed()
    staged.close()


def test_take_name_puts_back_another_file_without_replacing(tmp_path: Path) -> None:
    path, st = _file(tmp_path)
    assert take_name(path, (st.st_dev, st.st_ino + 1)) is None
    assert path.read_text() == "n\n1\n2\n" and sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]
    (tmp_path / "b").write_text("b")
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "b", path)
    assert path.read_text() == "n\n1\n2\n"
