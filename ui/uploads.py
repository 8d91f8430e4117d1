"""Saving uploaded files to disk as untrusted data, under a folder named by their content hash."""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path, PurePosixPath

from models import OrthoscopeError

UPLOAD_ROOT = Path(tempfile.gettempdir()) / "orthoscope-uploads"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".bin", ".pth", ".gguf")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


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


def save_files(files: list[tuple[str, bytes]], *, keep_folders: bool) -> Path:
    """Write ``(name, bytes)`` pairs under a content-addressed folder; return that folder."""
    digest = hashlib.sha256()
    for name, data in sorted(files):
        digest.update(name.encode())
        digest.update(hashlib.sha256(data).digest())
    folder = UPLOAD_ROOT / digest.hexdigest()[:24]
    for name, data in files:
        rel = safe_relative(name) if keep_folders else PurePosixPath(safe_name(name))
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.stat().st_size != len(data):
            target.write_bytes(data)
    return folder
