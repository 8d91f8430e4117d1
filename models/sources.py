"""Readers that give names, shapes and single tensors of a checkpoint on demand.

Each source reads one tensor at a time, so iterating over a large safetensors or GGUF
checkpoint never holds the whole model in memory. A pickled PyTorch state dict cannot be
read piecewise safely; it is loaded with ``weights_only=True`` (memory-mapped when it is in
the zip format).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from models.errors import OrthoscopeError
from models.safety import validate_safetensors

_SAFETENSORS_TORCH_DTYPE = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorMeta:
    name: str
    shape: tuple[int, ...]
    dtype: str  # as stored: "float32", "bfloat16", "Q4_1", ...
    floating: bool

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def as_meta_tensor(self) -> torch.Tensor:
        """A shape-only stand-in, so the same classification code runs on plans and data."""
        return torch.empty(self.shape, dtype=torch.float32 if self.floating else torch.int64, device="meta")


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
    """One or more safetensors files (a sharded checkpoint is several), read lazily."""

    def __init__(self, files: list[Path]):
        from safetensors import safe_open

        self.files = list(files)
        self._metas: list[TensorMeta] = []
        self._where: dict[str, object] = {}
        for path in self.files:
            entries = validate_safetensors(path)
            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as exc:  # safetensors raises its own error types
                raise OrthoscopeError(f"{path.name} could not be opened as safetensors ({exc}).") from None
            for name, entry in entries.items():
                if name in self._where:
                    raise OrthoscopeError(f"tensor {name!r} appears in more than one shard.")
                self._where[name] = path  # reopened per tensor in get(), see there
                dtype = _SAFETENSORS_TORCH_DTYPE.get(entry["dtype"])
                self._metas.append(
                    TensorMeta(
                        name,
                        tuple(entry["shape"]),
                        str(dtype).removeprefix("torch.") if dtype else entry["dtype"],
                        bool(dtype is not None and dtype.is_floating_point),
                    )
                )

    def metas(self) -> list[TensorMeta]:
        return self._metas

    def get(self, name: str) -> torch.Tensor:
        # A fresh safe_open per tensor: its memory map dies with the tensor. One long-lived handle keeps
        # every page it ever read resident, so RSS grew to the checkpoint's size.
        from safetensors import safe_open

        with safe_open(str(self._where[name]), framework="pt") as fh:
            return fh.get_tensor(name)


class StateDictSource(TensorSource):
    """A ``.pt``/``.bin`` state dict, loaded with ``weights_only=True`` and nothing else."""

    def __init__(self, path: Path, fmt: str):
        self.files = [path]
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
        except Exception as exc:  # corrupt pickles also raise KeyError, IndexError, AssertionError, ...
            raise OrthoscopeError(
                f"{path.name} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})."
            ) from None
        self._tensors = _flatten_state_dict(obj, path.name)
        self._metas = [
            TensorMeta(k, tuple(v.shape), str(v.dtype).removeprefix("torch."), v.is_floating_point())
            for k, v in self._tensors.items()
        ]

    def metas(self) -> list[TensorMeta]:
        return self._metas

    def get(self, name: str) -> torch.Tensor:
        return self._tensors[name]


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


class GGUFSource(TensorSource):
    """A GGUF file: tensors are memory-mapped and dequantised one at a time."""

    def __init__(self, path: Path):
        import gguf

        self.files = [path]
        try:
            self._reader = gguf.GGUFReader(str(path))
        except Exception as exc:  # gguf raises ValueError, struct errors, IndexError on bad files
            raise OrthoscopeError(f"{path.name} is not a readable GGUF file (truncated or corrupt: {exc}).") from None
        self.metadata = {
            key: _gguf_value(field) for key, field in self._reader.fields.items() if not key.startswith("tokenizer.ggml.")
        }
        self.architecture = str(self.metadata.get("general.architecture", ""))
        arch = self.architecture
        self._heads = self.metadata.get(f"{arch}.attention.head_count")
        self._kv_heads = self.metadata.get(f"{arch}.attention.head_count_kv", self._heads)
        self._tensors = {}
        self._metas = []
        for t in self._reader.tensors:
            name = self._hf_name(t.name)
            self._tensors[name] = t
            shape = tuple(int(s) for s in reversed(t.shape.tolist()))
            floating = t.tensor_type.name not in {"I8", "I16", "I32", "I64"}
            self._metas.append(TensorMeta(name, shape, t.tensor_type.name, floating))

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
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))
        data = np.asarray(dequantize(t.data, t.tensor_type)).reshape(shape)
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
