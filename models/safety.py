"""Checks applied to every file or folder before anything reads it as a checkpoint.

Uploaded and local files are untrusted data: the format is decided by the bytes, not the
name; safetensors headers are checked against the file size before ``safe_open`` maps
them; folders that could make transformers execute code (``*.py`` files, ``auto_map``)
are refused; paths from the dashboard must lie under roots the operator allowed.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from models.config import parse_safetensors_entries, read_modules
from models.errors import OrthoscopeError
from models.limits import (
    MAX_FOLDER_DEPTH, MAX_FOLDER_ENTRIES, MAX_HEADER_BYTES, MAX_TENSORS, check_regular_file, loads_json, read_json,
)

# Environment variable listing the directories (os.pathsep separated) the dashboard's
# local-path box may read. Unset or empty: the box is off.
ALLOWED_ROOTS_ENV = "ORTHOSCOPE_ALLOWED_ROOTS"
# Largest checkpoint accepted from an untrusted source, in MiB, unless a caller says otherwise.
DEFAULT_MAX_MB = 2048

# Bits per element of every dtype the safetensors format defines (its Dtype::bitsize), and the torch dtype of
# those Orthoscope reads. The rest are legal but listed as "dtype X not supported" and never read.
SAFETENSORS_BITS = {
    "F64": 64, "F32": 32, "F16": 16, "BF16": 16, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "F4": 4,
    "F6_E2M3": 6, "F6_E3M2": 6, "I64": 64, "I32": 32, "I16": 16, "I8": 8, "U64": 64, "U32": 32, "U16": 16,
    "U8": 8, "BOOL": 8, "C64": 64,
}
SAFETENSORS_DTYPES = set(SAFETENSORS_BITS)
SAFETENSORS_TORCH_DTYPE = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of a safetensors file, checked: its bytes lie at ``start:end`` of the data section."""

    name: str
    dtype: str  # as the header states it: "F32", "BF16", "F4", ...
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def unsupported(self) -> str:
        return "" if self.dtype in SAFETENSORS_TORCH_DTYPE else f"dtype {self.dtype} not supported"


@dataclass(frozen=True)
class SafetensorsLayout:
    path: Path
    data_start: int  # 8 + header length: where the data section begins in the file
    tensors: list[StoredTensor]
    metadata: dict[str, str]


def allowed_roots() -> list[Path]:
    raw = os.environ.get(ALLOWED_ROOTS_ENV, "")
    return [Path(p).resolve() for p in raw.split(os.pathsep) if p.strip()]


def _resolve(path: Path, shown: Path) -> Path:
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # Python 3.11 raises RuntimeError on a link loop
        raise OrthoscopeError(f"{shown} is a symbolic link loop.") from None


def check_under_roots(path: Path, roots: list[Path]) -> Path:
    """Resolve ``path`` (links included) and refuse it unless it lies under one of ``roots``."""
    if not roots:
        raise OrthoscopeError(
            f"Reading local paths is turned off. Set {ALLOWED_ROOTS_ENV} to the directories "
            "the dashboard may read, then restart it."
        )
    roots = [Path(r).expanduser().resolve() for r in roots]
    resolved = _resolve(path.expanduser(), path)
    # A folder's own entries may be links too; the loader reads its top-level files.
    entries = [(path, resolved)]
    if resolved.is_dir():
        listed = []
        for i, p in enumerate(resolved.iterdir()):
            if i >= MAX_FOLDER_ENTRIES:
                raise OrthoscopeError(f"{path.name} holds more than {MAX_FOLDER_ENTRIES:,} entries.")
            listed.append(p)
        entries += [(path / p.name, _resolve(p, path / p.name)) for p in listed]
    for shown, entry in entries:
        if not any(entry == root or root in entry.parents for root in roots):
            raise OrthoscopeError(
                f"{shown} is outside the allowed directories ({', '.join(str(r) for r in roots)})."
            )
    return resolved


def walk_folder(folder: Path) -> list[tuple[Path, os.stat_result]]:
    """Every file below ``folder`` with its ``stat``, without recursion and within bounds.

    Links are followed to what they name, but never into a linked folder (no loops). A FIFO, device or
    socket anywhere is refused (a reader would block on it), so is a link loop; a dangling link is skipped."""
    files: list[tuple[Path, os.stat_result]] = []
    stack = [(folder, 0)]
    seen = 0
    while stack:
        here, depth = stack.pop()
        try:
            with os.scandir(here) as it:
                entries = list(it)
        except OSError as exc:
            raise OrthoscopeError(f"{here.name} cannot be read ({exc.strerror}).") from None
        for entry in entries:
            seen += 1
            if seen > MAX_FOLDER_ENTRIES:
                raise OrthoscopeError(f"{folder.name} holds more than {MAX_FOLDER_ENTRIES:,} files and folders.")
            path = Path(entry.path)
            shown = path.relative_to(folder).as_posix()
            try:
                info = os.stat(path)
            except OSError as exc:
                if exc.errno == errno.ENOENT and entry.is_symlink():  # dangling link: nothing there to read
                    continue
                if exc.errno == errno.ELOOP:
                    raise OrthoscopeError(f"{folder.name}/{shown} is a symbolic link loop.") from None
                raise OrthoscopeError(f"{folder.name}/{shown} cannot be read ({exc.strerror}).") from None
            if stat.S_ISDIR(info.st_mode):
                if entry.is_symlink():
                    continue
                if depth + 1 > MAX_FOLDER_DEPTH:
                    raise OrthoscopeError(f"{folder.name} nests folders deeper than {MAX_FOLDER_DEPTH} levels.")
                stack.append((path, depth + 1))
            elif stat.S_ISREG(info.st_mode):
                files.append((path, info))
            else:
                raise OrthoscopeError(
                    f"{folder.name}/{shown} is not a regular file (a pipe, device or socket); refused."
                )
    return files


def check_size(path: Path, max_mb: float | None) -> None:
    if max_mb is None:
        return
    if path.is_dir():
        total = sum(info.st_size for _, info in walk_folder(path))
    else:
        total = check_regular_file(path).st_size
    if total > max_mb * 1024 * 1024:
        raise OrthoscopeError(
            f"{path.name} is {total / 2**20:.1f} MiB, over the {max_mb:g} MiB limit for uploaded checkpoints."
        )


def sniff(path: Path) -> str:
    """The checkpoint format, decided from the file's first bytes.

    Returns one of ``safetensors``, ``gguf``, ``torch-zip``, ``torch-pickle``.
    """
    size = check_regular_file(path).st_size
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
        if 0 < header_len <= MAX_HEADER_BYTES and head[8:9] == b"{":
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


def validate_safetensors(path: Path) -> SafetensorsLayout:
    """Parse and check a safetensors header without trusting it.

    The same rules as the safetensors library, checked before anything is read: a bounded header, at
    most ``MAX_TENSORS`` tensors (counted in the raw bytes before the JSON is parsed), typed entries,
    a known dtype, declared bytes (shape x dtype size) equal to the data offsets' span, and spans that
    tile the data section exactly (no gap, no overlap, nothing past the end)."""
    size = check_regular_file(path).st_size
    if size < 8:
        raise OrthoscopeError(f"{path.name} is truncated: {size} bytes is too short for a safetensors header.")
    with path.open("rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len > MAX_HEADER_BYTES:
            raise OrthoscopeError(f"{path.name}: safetensors header length {header_len} is implausibly large.")
        if 8 + header_len > size:
            raise OrthoscopeError(
                f"{path.name}: the safetensors header claims {header_len} bytes but the file has only "
                f"{size - 8} after the length field (truncated or corrupt)."
            )
        raw = fh.read(header_len)
    # Every entry names its data_offsets: a header with more of those than MAX_TENSORS is refused
    # before the JSON parser spends seconds on it.
    if raw.count(b'"data_offsets"') > MAX_TENSORS:
        raise OrthoscopeError(f"{path.name} declares more than {MAX_TENSORS:,} tensors; at most that many are read.")
    header = loads_json(raw, f"{path.name}: the safetensors header", unique_keys=True)
    entries, metadata = parse_safetensors_entries(header, path.name)
    data_size = size - 8 - header_len
    tensors = []
    spans = []
    for name, entry in entries.items():
        dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_BITS:
            raise OrthoscopeError(f"{path.name}: tensor {name[:80]!r} has unknown dtype {dtype[:32]!r}.")
        if start > end:
            raise OrthoscopeError(f"{path.name}: tensor {name[:80]!r} has invalid data offsets ({start} > {end}).")
        if end > data_size:
            raise OrthoscopeError(
                f"{path.name}: tensor {name[:80]!r} ends at byte {end} of the data section, but the file "
                f"holds only {data_size} data bytes (truncated or corrupt)."
            )
        bits = math.prod(shape) * SAFETENSORS_BITS[dtype]
        if bits % 8 or bits // 8 != end - start:
            shown = "x".join(map(str, shape)) or "scalar"
            declared = f"{bits // 8:,}" if bits < 10**30 else f"about 10^{len(str(bits // 8)) - 1}"
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise OrthoscopeError(
                f"{path.name}: tensor {name[:80]!r} declares {shown} {dtype} ({declared} bytes"
                f"{' and a fraction' if bits % 8 else ''}) but its data offsets span {end - start:,} bytes."
            )
        tensors.append(StoredTensor(name, dtype, tuple(shape), start, end))
        spans.append((start, end, name))
    spans.sort()
    covered = 0
    for start, end, name in spans:
        if start != covered:
            what = "overlaps the tensor before it" if start < covered else f"leaves a gap at byte {covered}"
            raise OrthoscopeError(f"{path.name}: tensor {name[:80]!r} {what} (corrupt data offsets).")
        covered = end
    if covered != data_size:
        raise OrthoscopeError(
            f"{path.name}: the tensors end at byte {covered} of the data section, but it holds {data_size} bytes "
            "(corrupt or padded)."
        )
    return SafetensorsLayout(path, 8 + header_len, tensors, metadata)


def check_config(config: dict, where: str) -> None:
    """Refuse configs that would make transformers import code shipped with the model."""
    if "auto_map" in config:
        raise OrthoscopeError(
            f"{where}: config.json has 'auto_map', which asks to run code shipped with the model. "
            "Orthoscope never runs model code; remove auto_map or use a standard architecture."
        )


def check_folder(folder: Path) -> list[tuple[Path, os.stat_result]]:
    """Refuse a model folder that carries Python code, special files, or JSON beyond the limits.

    Every JSON file in it (config, tokenizer and generation configs, the shard index, modules.json and
    the modules' configs) is read once here within :mod:`models.limits`' bounds, so that transformers,
    tokenizers and sentence-transformers' readers never meet a FIFO, a nesting bomb or a 5,000-digit
    integer. Returns the folder's files with their ``stat``."""
    files = walk_folder(folder)
    code = sorted(p.relative_to(folder).as_posix() for p, _ in files if p.suffix == ".py")
    if code:
        raise OrthoscopeError(
            f"{folder.name} contains Python files ({', '.join(code[:3])}); Orthoscope refuses "
            "model folders that ship code."
        )
    for path, _ in sorted(files):
        if path.suffix != ".json":
            continue
        shown = f"{folder.name}/{path.relative_to(folder).as_posix()}"
        if path.parent == folder and path.name == "modules.json":
            read_modules(path)
            continue
        data = read_json(path, shown)
        if path.parent == folder and "config" in path.name and isinstance(data, dict):
            check_config(data, shown)
    return files
