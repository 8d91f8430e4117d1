"""Saving uploaded files to disk as untrusted data, under a folder named by their content hash.

The folders live in a private directory of this server process: made by ``tempfile.mkdtemp`` (mode
0700, a random name, never a fixed path another local user could plant a link at), created at the
first upload and removed when the process exits. Files are written with
``O_CREAT | O_EXCL | O_NOFOLLOW`` through folder descriptors opened with ``O_NOFOLLOW``, so no link
is ever followed and anything already in the way is refused. Content-hash folders older than
``ORTHOSCOPE_UPLOAD_TTL_S`` seconds (default 6 h) are deleted at the next upload.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath

from models import OrthoscopeError

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".bin", ".pth", ".gguf")
UPLOAD_PREFIX = "orthoscope-uploads-"
TTL_ENV = "ORTHOSCOPE_UPLOAD_TTL_S"
DEFAULT_TTL_S = 6 * 3600.0
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_HASH_FOLDER = re.compile(r"^[0-9a-f]{24}$")

_lock = threading.RLock()  # the dashboard's sessions are threads of one process
_root: Path | None = None
_root_pid: int | None = None


def __getattr__(name: str):
    # ``uploads.UPLOAD_ROOT`` still names the upload directory; it is made on first use, not on import.
    if name == "UPLOAD_ROOT":
        return upload_root()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _private(path: Path) -> bool:
    """``path`` is a real folder (not a link) of this user that no one else may enter."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & 0o077 == 0


def upload_root() -> Path:
    """This server process's private upload directory, made on first use (mode 0700, random name).

    A process forked from the server (a background worker) gets one of its own if it ever saves."""
    global _root, _root_pid
    with _lock:
        if _root is None or _root_pid != os.getpid() or not _private(_root):
            _root = Path(tempfile.mkdtemp(prefix=UPLOAD_PREFIX)).resolve()
            _root_pid = os.getpid()
            atexit.register(_remove_root, _root, _root_pid)
        return _root


def current_root() -> Path | None:
    """The upload directory if this process has made one, without making it."""
    with _lock:
        return _root if _root is not None and _root_pid == os.getpid() else None


def _remove_root(root: Path, pid: int) -> None:
    if os.getpid() == pid:  # never from a forked child, whose exit would delete the server's uploads
        shutil.rmtree(root, ignore_errors=True)


def is_upload(path: str | os.PathLike) -> bool:
    """``path``, resolved (links followed), lies inside this server's upload directory."""
    root = current_root()
    if root is None:
        return False
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL byte
        return False
    return root != resolved and root in resolved.parents


def ttl_seconds() -> float:
    raw = os.environ.get(TTL_ENV, "").strip()
    if not raw:
        return DEFAULT_TTL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise OrthoscopeError(f"{TTL_ENV}={raw!r}: give the number of seconds uploads are kept, e.g. 21600.")
    return value


def sweep(now: float | None = None) -> list[Path]:
    """Delete the content-hash folders not written or reused for longer than the TTL; return them."""
    root = current_root()
    if root is None:
        return []
    limit = (time.time() if now is None else now) - ttl_seconds()
    removed = []
    with _lock:
        try:
            entries = list(os.scandir(root))
        except OSError:
            return []
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if _HASH_FOLDER.match(entry.name) and stat.S_ISDIR(info.st_mode) and info.st_mtime < limit:
                shutil.rmtree(entry.path, ignore_errors=True)  # fd-based on Linux: never follows a link out
                removed.append(Path(entry.path))
    return removed


def safe_name(name: str) -> str:
    """A file name stripped of folders and odd characters (uploads name their own files)."""
    base = PurePosixPath(name.replace("\\", "/")).name
    cleaned = _SAFE.sub("_", base).lstrip(".")
    if not cleaned:
        raise OrthoscopeError(f"the uploaded file name {name!r} is not usable.")
    return cleaned


def safe_relative(name: str) -> PurePosixPath:
    """A relative path inside an uploaded folder, refusing absolute paths and '..'."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts or any(p in ("..", "") for p in parts) or name.startswith("/"):
        raise OrthoscopeError(f"the uploaded path {name!r} is not a plain relative path.")
    return PurePosixPath(*[safe_name(p) for p in parts])


def check_total_size(sizes: list[int], limit_mb: float) -> None:
    total = sum(sizes)
    if total > limit_mb * 2**20:
        raise OrthoscopeError(f"the upload is {total / 2**20:.1f} MiB, over the {limit_mb:g} MiB limit.")


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _in_the_way(rel: PurePosixPath) -> OrthoscopeError:
    return OrthoscopeError(f"cannot save the upload {str(rel)!r}: something else is already in its place "
                           "(a link or a file that this server did not write); refused.")


def _open_folder(parent_fd: int, name: str, rel: PurePosixPath) -> int:
    """Open (making it if needed) the folder ``name`` under ``parent_fd``, never through a link."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        pass
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError:  # ELOOP (a link), ENOTDIR (a file)
        raise _in_the_way(rel) from None


def _write_file(folder_fd: int, name: str, data: bytes, rel: PurePosixPath) -> None:
    try:
        fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=folder_fd)
    except FileExistsError:
        # Written by an earlier upload of the same content (the folder is named by it): keep it if it
        # is a regular file of ours of the right size; a link or anything else is not touched.
        info = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and info.st_size == len(data):
            return
        raise _in_the_way(rel) from None
    except OSError:  # ELOOP: a link that O_NOFOLLOW refused
        raise _in_the_way(rel) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as exc:
        try:
            os.unlink(name, dir_fd=folder_fd)
        except OSError:
            pass
        raise OrthoscopeError(f"cannot save the upload {str(rel)!r} ({exc.strerror or exc}).") from None


def save_files(files: list[tuple[str, bytes]], *, keep_folders: bool) -> Path:
    """Write ``(name, bytes)`` pairs under a content-addressed folder of the upload directory; return it."""
    digest = hashlib.sha256()
    for name, data in sorted(files):
        digest.update(name.encode())
        digest.update(hashlib.sha256(data).digest())
    key = digest.hexdigest()[:24]
    planned: dict[PurePosixPath, bytes] = {}
    for name, data in files:
        rel = safe_relative(name) if keep_folders else PurePosixPath(safe_name(name))
        if rel in planned:
            raise OrthoscopeError(f"two uploaded files are both saved as {str(rel)!r}; rename one of them.")
        planned[rel] = data
    with _lock:
        root = upload_root()
        sweep()
        root_fd = os.open(root, _DIR_FLAGS)
        try:
            folder_fd = _open_folder(root_fd, key, PurePosixPath(key))
            try:
                for rel, data in planned.items():
                    fds = [folder_fd]
                    try:
                        for part in rel.parts[:-1]:
                            fds.append(_open_folder(fds[-1], part, rel))
                        _write_file(fds[-1], rel.parts[-1], data, rel)
                    finally:
                        for fd in fds[1:]:
                            os.close(fd)
                os.utime(folder_fd)  # reused or new: its time limit starts now
            finally:
                os.close(folder_fd)
        finally:
            os.close(root_fd)
    return root / key
