"""Readers that give names, shapes and single tensors of a checkpoint on demand.

Each source reads one tensor at a time, so iterating over a large safetensors or GGUF
checkpoint never holds the whole model in memory. A pickled PyTorch state dict cannot be
read piecewise safely; it is loaded with ``weights_only=True`` (memory-mapped when it is in
the zip format).
"""

from __future__ import annotations

import os
import pickle
import struct
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from models.errors import OrthoscopeError
from models.limits import MAX_PICKLE_BYTES, MAX_TENSORS, check_memory, check_regular_file, human_bytes
from models.safety import SAFETENSORS_TORCH_DTYPE, StoredTensor, validate_safetensors

# The torch dtypes Orthoscope reads from a state dict; others (complex, float8, unsigned beyond uint8, quantized)
# are listed with "dtype X not supported", as the same dtypes are in safetensors files.
_READ_DTYPES = set(SAFETENSORS_TORCH_DTYPE.values())


@dataclass(frozen=True)
class TensorMeta:
    name: str
    shape: tuple[int, ...]
    dtype: str  # as stored: "float32", "bfloat16", "Q4_1", ...
    floating: bool
    # Why the tensor cannot be read as an ordinary dense tensor ("dtype F4 not supported", "sparse layout
    # ..."); empty for every tensor Orthoscope reads. Such tensors are listed as skipped with this reason.
    unsupported: str = ""

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def as_meta_tensor(self) -> torch.Tensor:
        """A shape-only stand-in, so the same classification code runs on plans and data."""
        return torch.empty(self.shape, dtype=torch.float32 if self.floating else torch.int64, device="meta")


# What get() gives for a tensor listed as unsupported: no data of the declared type (the analysis never
# asks for it; the overview, which reads every tensor, sees a non-float tensor and no norm).
def _unread() -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8)


class TensorSource:
    """Names, shapes and on-demand loading of the tensors in one checkpoint."""

    files: list[Path]

    def metas(self) -> list[TensorMeta]:
        raise NotImplementedError

    def get(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def iter_tensors(self) -> Iterator[tuple[TensorMeta, torch.Tensor]]:
        for meta in self.metas():
            yield meta, self.get(meta.name)


class SafetensorsSource(TensorSource):
    """One or more safetensors files (a sharded checkpoint is several), read lazily.

    Each header is checked in full by :func:`models.safety.validate_safetensors`; a tensor is then read
    by seeking to its checked offsets, so one read costs the tensor's bytes and nothing else. (Reopening
    the file with ``safe_open`` per tensor reparsed the whole header each time: quadratic in the number of
    tensors, 332 s for 16,000 tiny ones.)"""

    def __init__(self, files: list[Path]):
        self.files = list(files)
        self._metas: list[TensorMeta] = []
        self._where: dict[str, tuple[Path, int, StoredTensor]] = {}
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()
        for path in self.files:
            layout = validate_safetensors(path)
            if len(self._where) + len(layout.tensors) > MAX_TENSORS:
                raise OrthoscopeError(f"the shards declare more than {MAX_TENSORS:,} tensors; at most that many are read.")
            for t in layout.tensors:
                if t.name in self._where:
                    raise OrthoscopeError(f"tensor {t.name[:80]!r} appears in more than one shard.")
                self._where[t.name] = (path, layout.data_start, t)
                dtype = SAFETENSORS_TORCH_DTYPE.get(t.dtype)
                self._metas.append(
                    TensorMeta(
                        t.name,
                        t.shape,
                        str(dtype).removeprefix("torch.") if dtype else t.dtype,
                        bool(dtype is not None and dtype.is_floating_point),
                        t.unsupported,
                    )
                )

    def metas(self) -> list[TensorMeta]:
        return self._metas

    def shard_of(self, name: str) -> Path:
        return self._where[name][0]

    def get(self, name: str) -> torch.Tensor:
        path, data_start, t = self._where[name]
        if t.unsupported:
            return _unread()
        dtype = SAFETENSORS_TORCH_DTYPE[t.dtype]
        nbytes = t.end - t.start
        if nbytes == 0:
            return torch.empty(t.shape, dtype=dtype)
        buf = bytearray(nbytes)
        # pread on a descriptor kept open per shard: no seek, so concurrent readers (dashboard sessions share
        # a handle) cannot disturb each other, and no open() per tensor.
        got = os.preadv(self._fd(path), [buf], data_start + t.start)
        if got != nbytes:
            raise OrthoscopeError(f"{path.name} changed while it was read: tensor {name[:80]!r} is cut short.")
        return torch.frombuffer(buf, dtype=dtype).reshape(t.shape)

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            with self._lock:
                fd = self._fds.get(path)
                if fd is None:
                    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                    self._fds[path] = fd
        return fd

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass


def _check_zip(path: Path) -> None:
    """A zipped PyTorch checkpoint, checked from its central directory before torch reads a member.

    torch.save stores its members uncompressed; a compressed member could inflate to any size (a zip
    bomb), so it is refused, as are more members than MAX_TENSORS allows and a pickle beyond
    MAX_PICKLE_BYTES. The members' declared sizes are checked against the memory budget."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        raise OrthoscopeError(f"{path.name} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc}).") from None
    if len(members) > MAX_TENSORS + 16:
        raise OrthoscopeError(f"{path.name} holds {len(members):,} zip members; at most {MAX_TENSORS:,} tensors are read.")
    total = 0
    for m in members:
        if m.compress_type != zipfile.ZIP_STORED:
            raise OrthoscopeError(
                f"{path.name}: the member {m.filename[:80]!r} is compressed ({human_bytes(m.file_size)} declared); "
                "torch.save never compresses, and compressed members are not read."
            )
        if m.filename.endswith(".pkl") and m.file_size > MAX_PICKLE_BYTES:
            raise OrthoscopeError(f"{path.name}: its pickle {m.filename[:80]!r} is {human_bytes(m.file_size)}, "
                                  f"above the {human_bytes(MAX_PICKLE_BYTES)} read.")
        total += m.file_size
    check_memory(total, f"{path.name}'s members")


class StateDictSource(TensorSource):
    """A ``.pt``/``.bin`` state dict, loaded with ``weights_only=True`` and nothing else.

    Before anything is copied, every tensor is checked: sparse, meta-device and quantized tensors and
    dtypes outside the dense set are listed as unsupported (skipped, with the reason); a view whose
    elements outnumber its stored bytes (a zero stride, overlapping storage) is materialised only if it
    fits the memory budget, and so is the state dict as a whole."""

    def __init__(self, path: Path, fmt: str):
        self.files = [path]
        check_regular_file(path)
        if fmt == "torch-zip":
            _check_zip(path)
        try:
            if path.name.endswith(".safetensors"):
                # torch.load treats a *path* named .safetensors as safetensors; the bytes said PyTorch.
                with path.open("rb") as fh:
                    obj = torch.load(fh, map_location="cpu", weights_only=True)
            else:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=fmt == "torch-zip")
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else ""
            raise OrthoscopeError(
                f"{path.name} was refused: it holds Python objects other than tensors, and Orthoscope "
                f"loads checkpoints as data only (weights_only=True). {first}"
            ) from None
        except MemoryError:
            raise OrthoscopeError(f"{path.name} declares storage larger than this server's memory.") from None
        except Exception as exc:  # corrupt pickles also raise KeyError, IndexError, AssertionError, ...
            text = " ".join(str(exc).split())[:300]
            raise OrthoscopeError(
                f"{path.name} is not a readable PyTorch checkpoint ({type(exc).__name__}: {text})."
            ) from None
        self._tensors = _flatten_state_dict(obj, path.name)
        self._metas = []
        self._unsupported: set[str] = set()
        total = 0
        for k, v in self._tensors.items():
            why = _unsupported_tensor(v)
            if why:
                self._unsupported.add(k)
                self._metas.append(TensorMeta(k, tuple(v.shape), _dtype_name(v), False, why))
                continue
            nbytes = v.numel() * v.element_size()
            stored = v.untyped_storage().nbytes()
            if nbytes > stored:  # a view repeating stored elements: a copy would allocate all of them
                check_memory(nbytes, f"{path.name}: tensor {k[:80]!r} (a {'x'.join(map(str, v.shape))} view of "
                                     f"{human_bytes(stored)} of stored data)")
            total += nbytes
            self._metas.append(TensorMeta(k, tuple(v.shape), _dtype_name(v), v.is_floating_point()))
        check_memory(total, f"{path.name}'s tensors")

    def metas(self) -> list[TensorMeta]:
        return self._metas

    def get(self, name: str) -> torch.Tensor:
        if name in self._unsupported:
            return _unread()
        return self._tensors[name]


def _dtype_name(v: torch.Tensor) -> str:
    return str(v.dtype).removeprefix("torch.")


def _unsupported_tensor(v: torch.Tensor) -> str:
    """Why a loaded tensor is not read as a dense weight, or "" when it is."""
    if v.layout != torch.strided:
        return f"sparse layout ({str(v.layout).removeprefix('torch.')}) not supported"
    if v.device.type == "meta":
        return "stored on the meta device: it holds no data"
    if v.is_quantized:
        return f"quantized tensor ({_dtype_name(v)}) not supported"
    if v.dtype not in _READ_DTYPES:
        return f"dtype {_dtype_name(v)} not supported"
    return ""


def _flatten_state_dict(obj: object, filename: str) -> dict[str, torch.Tensor]:
    # Training scripts often save {"state_dict": ...} or {"model": ...} around the weights.
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict):
        raise OrthoscopeError(f"{filename} holds a {type(obj).__name__}, not a state dict of named tensors.")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise OrthoscopeError(f"{filename} holds no tensors.")
    if len(tensors) > MAX_TENSORS:
        raise OrthoscopeError(f"{filename} holds {len(tensors):,} tensors; at most {MAX_TENSORS:,} are read.")
    return tensors


# GGUF names of llama-family tensors and the transformers names of the same weights, so that
# a GGUF checkpoint and the module transformers builds from it agree on tensor names.
_LLAMA_GGUF_TO_HF = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


_GGUF_PLAIN = {"F32", "F16", "F64", "I8", "I16", "I32", "I64"}  # stored as ordinary arrays, no dequantising
_GGUF_MAX_KV = 1_000_000
_GGUF_MIN_TENSOR_INFO = 32  # name length (8), dims (4), one dim (8), type (4), offset (8)


def _check_gguf_header(path: Path) -> None:
    """The counts at the head of a GGUF file, checked against the limits and the file's size before the
    reader walks them."""
    size = check_regular_file(path).st_size
    with path.open("rb") as fh:
        head = fh.read(24)
    if len(head) < 24:
        raise OrthoscopeError(f"{path.name} is not a readable GGUF file (truncated: {size} bytes).")
    order = "<"
    (version,) = struct.unpack("<I", head[4:8])
    if version & 0xFFFF == 0:  # a big-endian file, which the reader byte-swaps
        order = ">"
        (version,) = struct.unpack(">I", head[4:8])
    if version not in (2, 3):
        raise OrthoscopeError(f"{path.name} is not a readable GGUF file (format version {version} is not supported).")
    n_tensors, n_kv = struct.unpack(order + "QQ", head[8:24])
    if n_tensors > MAX_TENSORS:
        raise OrthoscopeError(f"{path.name} declares {n_tensors:,} tensors; at most {MAX_TENSORS:,} are read.")
    if n_kv > _GGUF_MAX_KV:
        raise OrthoscopeError(f"{path.name} declares {n_kv:,} metadata entries; at most {_GGUF_MAX_KV:,} are read.")
    if 24 + n_tensors * _GGUF_MIN_TENSOR_INFO + n_kv * 13 > size:
        raise OrthoscopeError(
            f"{path.name} is not a readable GGUF file (truncated: it declares {n_tensors:,} tensors and {n_kv:,} "
            f"metadata entries, more than its {size:,} bytes can hold)."
        )


class GGUFSource(TensorSource):
    """A GGUF file: tensors are memory-mapped and dequantised one at a time."""

    def __init__(self, path: Path):
        import gguf
        from gguf.quants import _type_traits

        self.files = [path]
        _check_gguf_header(path)
        try:
            self._reader = gguf.GGUFReader(str(path))
        except Exception as exc:  # gguf raises ValueError, struct errors, IndexError on bad files
            text = " ".join(str(exc).split())[:300]
            raise OrthoscopeError(f"{path.name} is not a readable GGUF file (truncated or corrupt: {text}).") from None
        self.metadata = {
            key: _gguf_value(field) for key, field in self._reader.fields.items() if not key.startswith("tokenizer.ggml.")
        }
        self.architecture = str(self.metadata.get("general.architecture", ""))
        arch = self.architecture
        self._heads = self.metadata.get(f"{arch}.attention.head_count")
        self._kv_heads = self.metadata.get(f"{arch}.attention.head_count_kv", self._heads)
        self._tensors = {}
        self._metas = []
        self._unsupported: set[str] = set()
        readable = _GGUF_PLAIN | {q.name for q in _type_traits}
        for t in self._reader.tensors:
            name = self._hf_name(t.name)
            if name in self._tensors:
                raise OrthoscopeError(f"{path.name} holds the tensor {name[:80]!r} twice.")
            self._tensors[name] = t
            shape = tuple(int(s) for s in reversed(t.shape.tolist()))
            kind = t.tensor_type.name
            unsupported = "" if kind in readable else f"GGUF type {kind} not supported"
            floating = not unsupported and kind not in {"I8", "I16", "I32", "I64"}
            self._metas.append(TensorMeta(name, shape, kind, floating, unsupported))
            if unsupported:
                self._unsupported.add(name)

    def _hf_name(self, gguf_name: str) -> str:
        if self.architecture != "llama":
            return gguf_name
        stem, _, suffix = gguf_name.rpartition(".")
        parts = stem.split(".")
        if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LLAMA_GGUF_TO_HF:
            return f"model.layers.{parts[1]}.{_LLAMA_GGUF_TO_HF[parts[2]]}.{suffix}"
        if len(parts) == 1 and parts[0] in _LLAMA_GGUF_TO_HF:
            return f"{_LLAMA_GGUF_TO_HF[parts[0]]}.{suffix}"
        return gguf_name

    def metas(self) -> list[TensorMeta]:
        return self._metas

    def get(self, name: str) -> torch.Tensor:
        from gguf.quants import dequantize

        t = self._tensors[name]
        kind = t.tensor_type.name
        if name in self._unsupported:
            return _unread()
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))
        if kind in _GGUF_PLAIN:
            data = np.asarray(t.data).reshape(shape)
            if kind.startswith("I"):
                return torch.from_numpy(np.array(data))
        else:
            try:
                data = np.asarray(dequantize(t.data, t.tensor_type)).reshape(shape)
            except (NotImplementedError, ValueError) as exc:
                raise OrthoscopeError(f"{name[:80]}: its GGUF data cannot be read ({exc}).") from None
        w = torch.from_numpy(np.array(data, dtype=np.float32 if data.dtype != np.float64 else np.float64))
        # llama.cpp's converter interleaves the rotary halves of q and k; undo it so the
        # weights equal those of the transformers module built from the same file.
        if self.architecture == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = self._heads if "q_proj" in name else self._kv_heads
            if heads:
                if not isinstance(heads, int) or heads < 0 or w.shape[0] % (2 * heads):
                    raise OrthoscopeError(
                        f"{name}: its {w.shape[0]} rows do not split into the file's head count ({heads!r}); "
                        "the GGUF metadata is corrupt or inconsistent."
                    )
                w = w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        return w


def _gguf_value(field) -> object:
    try:
        value = field.contents()
    except Exception:  # an unreadable metadata value is not worth refusing the file for
        return None
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return value
