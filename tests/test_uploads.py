"""Uploads: a private per-server directory, written without following links, swept after a time limit."""

import os
import stat
import time
from pathlib import Path

import pytest

from models import OrthoscopeError
from ui import uploads


@pytest.fixture()
def fresh_root(monkeypatch, tmp_path):
    """A fresh upload directory for the test (under tmp_path), removed afterwards."""
    monkeypatch.setattr(uploads.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(uploads, "_root", None)
    monkeypatch.setattr(uploads, "_root_pid", None)
    yield
    root = uploads.current_root()
    if root is not None:
        uploads._remove_root(root, os.getpid())


def test_the_upload_directory_is_private_random_and_made_on_first_use(fresh_root, tmp_path):
    assert uploads.current_root() is None  # importing and checking make nothing
    assert not uploads.is_upload(tmp_path / "x")
    root = uploads.upload_root()
    info = os.lstat(root)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    assert root.name.startswith(uploads.UPLOAD_PREFIX) and len(root.name) > len(uploads.UPLOAD_PREFIX) + 4
    assert root.parent == tmp_path.resolve()
    assert uploads.UPLOAD_ROOT == root == uploads.upload_root()  # once per process
    assert not (Path(uploads.tempfile.gettempdir()) / "orthoscope-uploads").exists()


def test_two_servers_get_different_directories(fresh_root, monkeypatch):
    first = uploads.upload_root()
    monkeypatch.setattr(uploads, "_root", None)
    second = uploads.upload_root()
    assert first != second


def test_files_are_saved_private_under_their_content_hash(fresh_root):
    folder = uploads.save_files([("m.safetensors", b"abc")], keep_folders=False)
    assert folder.parent == uploads.upload_root() and len(folder.name) == 24
    target = folder / "m.safetensors"
    assert target.read_bytes() == b"abc"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    # the same content again reuses the folder; other content gets another one
    assert uploads.save_files([("m.safetensors", b"abc")], keep_folders=False) == folder
    assert uploads.save_files([("m.safetensors", b"abd")], keep_folders=False) != folder
    nested = uploads.save_files([("tiny/config.json", b"{}"), ("tiny/sub/w.bin", b"xx")], keep_folders=True)
    assert (nested / "tiny" / "sub" / "w.bin").read_bytes() == b"xx"
    assert uploads.is_upload(nested / "tiny") and uploads.is_upload(target)


def test_a_planted_link_is_not_followed_and_the_save_fails_cleanly(fresh_root, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    files = [("m.safetensors", b"payload")]
    folder = uploads.save_files(files, keep_folders=False)  # learn the content-hash folder name
    (folder / "m.safetensors").unlink()
    (folder / "m.safetensors").symlink_to(victim)
    with pytest.raises(OrthoscopeError, match="already in its place"):
        uploads.save_files(files, keep_folders=False)
    assert victim.read_text() == "precious"
    # a link in place of the whole folder, or of a subfolder
    (folder / "m.safetensors").unlink()
    folder.rmdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    folder.symlink_to(outside)
    with pytest.raises(OrthoscopeError, match="already in its place"):
        uploads.save_files(files, keep_folders=False)
    assert list(outside.iterdir()) == []


def test_a_link_in_place_of_a_subfolder_is_not_followed(fresh_root, tmp_path):
    files = [("tiny/config.json", b"{}")]
    folder = uploads.save_files(files, keep_folders=True)
    (folder / "tiny" / "config.json").unlink()
    (folder / "tiny").rmdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "tiny").symlink_to(outside)
    with pytest.raises(OrthoscopeError, match="already in its place"):
        uploads.save_files(files, keep_folders=True)
    assert list(outside.iterdir()) == []


def test_a_file_of_the_wrong_size_in_the_way_is_refused(fresh_root):
    files = [("a.bin", b"12345")]
    folder = uploads.save_files(files, keep_folders=False)
    (folder / "a.bin").write_bytes(b"1")
    with pytest.raises(OrthoscopeError, match="already in its place"):
        uploads.save_files(files, keep_folders=False)


def test_two_names_that_clean_to_one_are_refused(fresh_root):
    with pytest.raises(OrthoscopeError, match="both saved as"):
        uploads.save_files([("a b.bin", b"1"), ("a_b.bin", b"2")], keep_folders=False)


def test_old_folders_are_swept_at_the_next_save(fresh_root, monkeypatch):
    monkeypatch.setenv(uploads.TTL_ENV, "60")
    old = uploads.save_files([("old.bin", b"old")], keep_folders=False)
    stale = time.time() - 120
    os.utime(old, (stale, stale))
    keep = uploads.save_files([("new.bin", b"new")], keep_folders=False)
    assert not old.exists() and keep.exists()
    # a reused folder starts its time limit again
    os.utime(keep, (time.time() - 50, time.time() - 50))
    assert uploads.save_files([("new.bin", b"new")], keep_folders=False) == keep
    assert time.time() - keep.stat().st_mtime < 10
    assert uploads.sweep(now=time.time() + 61) == [keep] and not keep.exists()


def test_the_sweep_leaves_other_entries_alone(fresh_root, monkeypatch):
    root = uploads.upload_root()
    (root / "notes.txt").write_text("x")
    odd = root / "not-a-hash"
    odd.mkdir()
    assert uploads.sweep(now=time.time() + 10 * uploads.DEFAULT_TTL_S) == []
    assert odd.exists()


@pytest.mark.parametrize("raw", ["x", "-1", "0", "inf"])
def test_a_bad_ttl_is_refused_naming_the_variable(fresh_root, monkeypatch, raw):
    monkeypatch.setenv(uploads.TTL_ENV, raw)
    with pytest.raises(OrthoscopeError, match=uploads.TTL_ENV):
        uploads.save_files([("a.bin", b"1")], keep_folders=False)


def test_the_directory_is_removed_at_exit_but_not_by_a_forked_child(fresh_root):
    root = uploads.upload_root()
    uploads._remove_root(root, os.getpid() + 1)  # as a child forked from the server would call it
    assert root.exists()
    uploads._remove_root(root, os.getpid())
    assert not root.exists()


def test_paths_outside_the_upload_directory_are_not_uploads(fresh_root, tmp_path):
    folder = uploads.save_files([("m.bin", b"1")], keep_folders=False)
    root = uploads.upload_root()
    assert uploads.is_upload(folder / "m.bin")
    assert not uploads.is_upload(root)  # the directory itself holds no model
    assert not uploads.is_upload(tmp_path / "elsewhere.bin")
    # a look-alike name (the old fixed path, or a sibling sharing the prefix) is not the directory
    assert not uploads.is_upload(Path(str(root) + "x") / "m.bin")
    assert not uploads.is_upload(tmp_path / "orthoscope-uploads" / "m.bin")
    # '..' and a link out are judged by where they resolve to
    assert not uploads.is_upload(folder / ".." / ".." / "elsewhere.bin")
    link = folder / "out"
    link.symlink_to(tmp_path)
    assert not uploads.is_upload(link / "elsewhere.bin")


def test_the_picker_checks_uploads_against_the_upload_directory_and_others_against_the_roots(
        fresh_root, tmp_path, monkeypatch):
    from models.safety import ALLOWED_ROOTS_ENV
    from ui import model_picker

    monkeypatch.delenv(ALLOWED_ROOTS_ENV, raising=False)
    folder = uploads.save_files([("m.bin", b"1")], keep_folders=False)
    ref = model_picker.ref_of(str(folder / "m.bin"), None, 1.0, "m.bin")
    assert ref.allowed_roots == (str(uploads.upload_root()),)
    # a path that only looks like an upload gets the allowed roots (none here: refused when opened)
    fake = tmp_path / "orthoscope-uploads" / "abc" / "m.bin"
    assert model_picker.ref_of(str(fake), None, None, None).allowed_roots == ()
    link = folder / "escape"
    link.symlink_to(tmp_path)
    assert model_picker.ref_of(str(link / "m.bin"), None, None, None).allowed_roots == ()
    assert model_picker.ref_of("builtin:minilm", None, None, None).allowed_roots is None
    with pytest.raises(OrthoscopeError, match="turned off"):
        model_picker.ref_of(str(link / "m.bin"), None, None, None).open()
