"""circuits.core.files: atomic writes and JSON reads with one-line errors."""

import os

import pytest

from circuits.core import files
from circuits.core.errors import CircuitsError
from circuits.core.files import read_json, write_atomic


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_atomic_writes_str(tmp_path):
    text = "héllo\nwörld"
    path = write_atomic(tmp_path / "a.txt", text)
    assert path == tmp_path / "a.txt"
    assert path.read_text(encoding="utf-8") == text
    assert _names(tmp_path) == ["a.txt"]


def test_write_atomic_writes_bytes(tmp_path):
    data = bytes(range(256))
    path = write_atomic(str(tmp_path / "b.bin"), data)  # a str path works too
    assert path.read_bytes() == data
    assert _names(tmp_path) == ["b.bin"]


def test_write_atomic_creates_parent_folders(tmp_path):
    path = write_atomic(tmp_path / "x" / "y" / "z.txt", "deep")
    assert path.read_text() == "deep"
    assert _names(tmp_path / "x" / "y") == ["z.txt"]


def test_write_atomic_replaces_existing_file(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("old contents that are longer")
    write_atomic(path, "new")
    assert path.read_text() == "new"
    assert _names(tmp_path) == ["c.txt"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "d.txt"
    path.write_text("old")
    calls = []

    def failing_replace(src, dst):
        calls.append((src, dst))
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "new")
    assert calls, "write_atomic did not go through os.replace"
    assert path.read_text() == "old"
    assert _names(tmp_path) == ["d.txt"]


def test_failed_write_of_new_file_leaves_nothing(tmp_path, monkeypatch):
    def failing_replace(src, dst):
        raise OSError("boom")

    monkeypatch.setattr(os, "replace", failing_replace)  # the os module circuits.core.files uses
    with pytest.raises(OSError):
        write_atomic(tmp_path / "e.txt", b"data")
    assert _names(tmp_path) == []


def test_read_json_reads_what_write_atomic_wrote(tmp_path):
    path = write_atomic(tmp_path / "f.json", '{"a": [1, 2.5, null]}')
    assert read_json(path, "config") == {"a": [1, 2.5, None]}


def _assert_one_line_naming(err: CircuitsError, path, what: str) -> None:
    message = str(err)
    assert "\n" not in message
    assert str(path) in message
    assert what in message


def test_read_json_missing_file(tmp_path):
    path = tmp_path / "missing.json"
    with pytest.raises(CircuitsError) as info:
        read_json(path, "edit file")
    _assert_one_line_naming(info.value, path, "edit file")


def test_read_json_folder_is_not_a_file(tmp_path):
    with pytest.raises(CircuitsError) as info:
        read_json(tmp_path, "circuit")
    _assert_one_line_naming(info.value, tmp_path, "circuit")


@pytest.mark.parametrize("content", ['{"a": 1,\n\n', b"\xff\xfe\x00bad"])
def test_read_json_bad_json(tmp_path, content):
    path = tmp_path / "bad.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(CircuitsError) as info:
        read_json(path, "annotations")
    _assert_one_line_naming(info.value, path, "annotations")


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_write_atomic_gives_the_mode_the_umask_gives_any_new_file(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = write_atomic(tmp_path / "shared.json", "{}")
        with open(tmp_path / "plain.json", "w") as f:  # what the user's own files get
            f.write("{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == (tmp_path / "plain.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_replace_dir_swaps_a_whole_folder_in(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    with files.replace_dir(folder) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (folder / "old.txt").is_file()  # the old folder stays whole until the block ends
    assert [p.name for p in folder.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_replace_dir_keeps_the_old_folder_on_error(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), files.replace_dir(folder) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("crash")
    assert [p.name for p in folder.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
