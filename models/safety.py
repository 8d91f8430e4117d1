"""Checks applied to every file or folder before anything reads it as a checkpoint.

Uploaded and local files are untrusted data: the format is decided by the bytes, not the
name; safetensors headers are checked against the file size before ``safe_open`` maps
them; folders that could make transformers execute code (``*.py`` files, ``auto_map``)
are refused; paths from the dashboard must lie under roots the operator allowed.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from models.errors import OrthoscopeError

# Environment variable listing the directories (os.pathsep separated) the dashboard's
# local-path box may read. Unset or empty: the box is off.
ALLOWED_ROOTS_ENV = "ORTHOSCOPE_ALLOWED_ROOTS"
# Largest checkpoint accepted from an untrusted source, in MiB, unless a caller says otherwise.
DEFAULT_MAX_MB = 2048

SAFETENSORS_DTYPES = {
    "F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32", "I16", "I8", "U8", "BOOL",
    "U16", "U32", "U64", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64",
}
# safetensors itself refuses headers above 100 MB.
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def allowed_roots() -> list[Path]:
    raw = os.environ.get(ALLOWED_ROOTS_ENV, "")
    return [Path(p).resolve() for p in raw.split(os.pathsep) if p.strip()]


def check_under_roots(path: Path, roots: list[Path]) -> Path:
    """Resolve ``path`` (links included) and refuse it unless it lies under one of ``roots``."""
    if not roots:
        raise OrthoscopeError(
            f"Reading local paths is turned off. Set {ALLOWED_ROOTS_ENV} to the directories "
            "the dashboard may read, then restart it."
        )
    roots = [Path(r).expanduser().resolve() for r in roots]
    resolved = path.expanduser().resolve()
    # A folder's own entries may be links too; the loader reads its top-level files.
    entries = [(path, resolved)]
    if resolved.is_dir():
        entries += [(path / p.name, p.resolve()) for p in resolved.iterdir()]
    for shown, entry in entries:
        if not any(entry == root or root in entry.parents for root in roots):
            raise OrthoscopeError(
                f"{shown} is outside the allowed directories ({', '.join(str(r) for r in roots)})."
            )
    return resolved


def check_size(path: Path, max_mb: float | None) -> None:
    if max_mb is None:
        return
    total = sum(p.stat().st_size for p in _weight_files(path)) if path.is_dir() else path.stat().st_size
    if total > max_mb * 1024 * 1024:
        raise OrthoscopeError(
            f"{path.name} is {total / 2**20:.1f} MiB, over the {max_mb:g} MiB limit for uploaded checkpoints."
        )


def _weight_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def sniff(path: Path) -> str:
    """The checkpoint format, decided from the file's first bytes.

    Returns one of ``safetensors``, ``gguf``, ``torch-zip``, ``torch-pickle``.
    """
    size = path.stat().st_size
    if size == 0:
        raise OrthoscopeError(f"{path.name} is empty (0 bytes).")
    with path.open("rb") as fh:
        head = fh.read(16)
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "torch-pickle"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len <= _MAX_SAFETENSORS_HEADER and head[8:9] == b"{":
            return "safetensors"
    if _looks_like_text(head):
        raise OrthoscopeError(
            f"{path.name} is a text file, not a checkpoint (expected safetensors, a PyTorch "
            "state dict, or GGUF)."
        )
    raise OrthoscopeError(
        f"{path.name} is not a recognised checkpoint: its first bytes match none of "
        "safetensors, PyTorch (zip or pickle) or GGUF."
    )


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(32 <= b < 127 or b in (9, 10, 13) for b in head)


def validate_safetensors(path: Path) -> dict:
    """Parse and check a safetensors header without trusting it; return the tensor entries."""
    size = path.stat().st_size
    if size < 8:
        raise OrthoscopeError(f"{path.name} is truncated: {size} bytes is too short for a safetensors header.")
    with path.open("rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len > _MAX_SAFETENSORS_HEADER:
            raise OrthoscopeError(f"{path.name}: safetensors header length {header_len} is implausibly large.")
        if 8 + header_len > size:
            raise OrthoscopeError(
                f"{path.name}: the safetensors header claims {header_len} bytes but the file has only "
                f"{size - 8} after the length field (truncated or corrupt)."
            )
        raw = fh.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OrthoscopeError(f"{path.name}: the safetensors header is not valid JSON ({exc}).") from None
    if not isinstance(header, dict):
        raise OrthoscopeError(f"{path.name}: the safetensors header is not a JSON object.")
    data_size = size - 8 - header_len
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, entry in entries.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise OrthoscopeError(f"{path.name}: tensor {name!r} has a malformed header entry.") from None
        if dtype not in SAFETENSORS_DTYPES:
            raise OrthoscopeError(f"{path.name}: tensor {name!r} has unknown dtype {dtype!r}.")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
            raise OrthoscopeError(f"{path.name}: tensor {name!r} has invalid data offsets.")
        if end > data_size:
            raise OrthoscopeError(
                f"{path.name}: tensor {name!r} ends at byte {end} of the data section, but the file "
                f"holds only {data_size} data bytes (truncated or corrupt)."
            )
    return entries


def check_config(config: dict, where: str) -> None:
    """Refuse configs that would make transformers import code shipped with the model."""
    if "auto_map" in config:
        raise OrthoscopeError(
            f"{where}: config.json has 'auto_map', which asks to run code shipped with the model. "
            "Orthoscope never runs model code; remove auto_map or use a standard architecture."
        )


def check_folder(folder: Path) -> None:
    """Refuse a model folder that carries Python code or a config asking for it."""
    code = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.py"))
    if code:
        raise OrthoscopeError(
            f"{folder.name} contains Python files ({', '.join(code[:3])}); Orthoscope refuses "
            "model folders that ship code."
        )
    for cfg in folder.glob("*config*.json"):
        try:
            data = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OrthoscopeError(f"{folder.name}/{cfg.name} is not valid JSON ({exc}).") from None
        if isinstance(data, dict):
            check_config(data, f"{folder.name}/{cfg.name}")
