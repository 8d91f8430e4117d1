"""``load(spec)``: from a model spec to a handle with metadata, tensors and a lazy module."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from models import module_cache
from models.builtin import BUILTINS, builtin_path
from models.errors import OrthoscopeError
from models.matrices import Skipped, WeightMatrix, block_namer, classify
from models.safety import check_config, check_folder, check_size, check_under_roots, sniff
from models.sources import GGUFSource, SafetensorsSource, StateDictSource, TensorMeta, TensorSource

KINDS = ("encoder", "causal-lm", "clip-like", "vision", "state-dict")
_ENCODER_TYPES = {
    "bert", "roberta", "distilbert", "mpnet", "xlm-roberta", "albert", "electra", "deberta", "deberta-v2",
    "camembert", "modernbert", "nomic_bert", "t5", "e5",
}
_VISION_TYPES = {"vit", "deit", "convnext", "resnet", "swin", "dinov2", "beit", "regnet", "efficientnet", "mobilenet_v2"}


@dataclass(frozen=True)
class TensorRow:
    """One stored tensor and what the analysis does with it (the overview table's row)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    analysed: bool
    reason: str  # why it is skipped; for analysed tensors, the matrices it yields
    kind: str
    block: str
    # (kind, numel) of each matrix the tensor yields: a fused q/k/v weight counts once per part.
    parts: tuple[tuple[str, int], ...] = ()


@dataclass
class ModelHandle:
    """A model ready for analysis. Tensors are read on demand; the module only when asked."""

    name: str
    spec: str
    kind: str
    fingerprint: str
    source: TensorSource
    config: dict | None = None
    module_loader: Callable[[], torch.nn.Module] | None = None
    tokenizer_loader: Callable[[], object] | None = None
    _module: torch.nn.Module | None = field(default=None, repr=False)
    _tokenizer: object | None = field(default=None, repr=False)
    # Held while a diagnostic has hooks on the module: dashboard sessions share one handle, and
    # another session's forward pass would otherwise run through those hooks.
    hooks_lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    _block_name: Callable[[str], str] | None = field(default=None, repr=False, compare=False)

    @property
    def num_params(self) -> int:
        return sum(m.numel for m in self.source.metas())

    @property
    def model_type(self) -> str | None:
        return (self.config or {}).get("model_type")

    def _num_heads(self) -> int | None:
        cfg = self.config or {}
        return cfg.get("num_attention_heads") or cfg.get("n_head")

    def tensor_rows(self) -> list[TensorRow]:
        """Every stored tensor with its fate in analysis, from shapes alone (no data read)."""
        rows = []
        for meta in self.source.metas():
            mats, skipped = self._classify(meta.name, meta.as_meta_tensor())
            rows.append(_row(meta, mats, skipped))
        return rows

    def block(self, name: str) -> str:
        """The block of a stored tensor, prefixed with its tower ("text/3") where the model has several."""
        if self._block_name is None:
            self._block_name = block_namer(meta.name for meta in self.source.metas())
        return self._block_name(name)

    def _classify(self, name: str, tensor: torch.Tensor) -> tuple[list[WeightMatrix], Skipped | None]:
        return classify(name, tensor, model_type=self.model_type, num_heads=self._num_heads(), block_name=self.block)

    def iter_matrices(self, names: set[str] | None = None) -> Iterator[WeightMatrix]:
        """Yield analysable weight matrices one stored tensor at a time.

        ``names`` restricts to those matrix names (``layer.weight`` or ``layer.weight:q``).
        Skipped tensors are not read at all; :meth:`skipped` lists them with reasons.
        """
        for meta in self.source.metas():
            planned, skipped = self._classify(meta.name, meta.as_meta_tensor())
            if skipped is not None or (names is not None and not names & {m.name for m in planned}):
                continue
            mats, _ = self._classify(meta.name, self.source.get(meta.name))
            for mat in mats:
                if names is None or mat.name in names:
                    yield mat

    def planned_matrices(self) -> list[WeightMatrix]:
        """Every analysable matrix with its kind and block, as meta tensors: shapes only, no data read."""
        return [m for meta in self.source.metas() for m in self._classify(meta.name, meta.as_meta_tensor())[0]]

    def matrix_names(self) -> list[str]:
        return [m.name for m in self.planned_matrices()]

    def skipped(self) -> list[Skipped]:
        out = []
        for meta in self.source.metas():
            _, skipped = self._classify(meta.name, meta.as_meta_tensor())
            if skipped is not None:
                out.append(skipped)
        return out

    def module(self) -> torch.nn.Module:
        if self._module is None:
            if self.module_loader is None:
                raise OrthoscopeError(
                    f"{self.name} has no architecture to build a module from (a bare state dict needs "
                    "its config.json alongside)."
                )
            self._module = self.module_loader().eval()
        return self._module

    def tokenizer(self):
        if self._tokenizer is None:
            if self.tokenizer_loader is None:
                raise OrthoscopeError(f"{self.name} comes with no tokenizer.")
            self._tokenizer = self.tokenizer_loader()
        return self._tokenizer


def _row(meta: TensorMeta, mats: list[WeightMatrix], skipped: Skipped | None) -> TensorRow:
    if skipped is not None:
        return TensorRow(meta.name, meta.shape, meta.dtype, meta.numel, False, skipped.reason, "-", "-")
    if len(mats) == 1:
        return TensorRow(meta.name, meta.shape, meta.dtype, meta.numel, True, mats[0].layer_type, mats[0].kind,
                         mats[0].block, ((mats[0].kind, meta.numel),))
    reason = "split into " + ", ".join(m.name.rsplit(":", 1)[-1] for m in mats)
    kind = "+".join(m.kind for m in mats)  # e.g. attention-q+attention-k+attention-v: the stored tensor is fused
    return TensorRow(meta.name, meta.shape, meta.dtype, meta.numel, True, reason, kind, mats[0].block,
                     tuple((m.kind, m.tensor.numel()) for m in mats))


# ---------------------------------------------------------------------------------------
# Fingerprints


_FINGERPRINT_CACHE: dict[tuple, str] = {}


def fingerprint(files: list[Path]) -> str:
    """sha256 over the weight files' bytes (and their names), cached per path, size and mtime."""
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(files))
    if key not in _FINGERPRINT_CACHE:
        digest = hashlib.sha256()
        for p in sorted(files):
            digest.update(p.name.encode())
            with p.open("rb") as fh:
                while chunk := fh.read(1 << 22):
                    digest.update(chunk)
        _FINGERPRINT_CACHE[key] = digest.hexdigest()
    return _FINGERPRINT_CACHE[key]


# ---------------------------------------------------------------------------------------
# Loading


def load(
    spec: str,
    *,
    allowed_roots: list[Path] | None = None,
    max_mb: float | None = None,
    config_path: Path | None = None,
    display_name: str | None = None,
) -> ModelHandle:
    """Open a model spec: ``builtin:NAME``, ``hf:ORG/NAME``, or a local file or folder.

    ``allowed_roots``: when given (the dashboard), local paths must lie under one of them.
    ``max_mb``: refuse checkpoints larger than this (uploads). ``config_path``: a config.json
    for a bare weights file.
    """
    spec = spec.strip()
    if not spec:
        raise OrthoscopeError("no model given.")
    if spec.startswith("builtin:"):
        key = spec.removeprefix("builtin:")
        path = builtin_path(key)
        handle = _load_path(path, spec, config_path=None)
        handle.name = BUILTINS[key].title
        return handle
    if spec.startswith("hf:"):
        return _load_hub(spec)
    path = Path(spec)
    if allowed_roots is not None:
        path = check_under_roots(path, allowed_roots)
    if not path.exists():
        raise OrthoscopeError(f"{spec} does not exist.")
    check_size(path, max_mb)
    handle = _load_path(path, spec, config_path=config_path)
    if display_name:
        handle.name = display_name
    return handle


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OrthoscopeError(f"{path.name} is not valid JSON ({exc}).") from None
    if not isinstance(config, dict):
        raise OrthoscopeError(f"{path.name} is not a JSON object.")
    check_config(config, path.name)
    return config


def _kind_from_config(config: dict | None) -> str:
    if not config:
        return "state-dict"
    archs = " ".join(config.get("architectures") or [])
    model_type = str(config.get("model_type", "")).lower()
    if "CausalLM" in archs or "LMHead" in archs:
        return "causal-lm"
    if model_type in {"clip", "siglip", "siglip2", "chinese_clip", "altclip"} or "CLIPModel" in archs:
        return "clip-like"
    if model_type in _VISION_TYPES or "ImageClassification" in archs:
        return "vision"
    if model_type in _ENCODER_TYPES or "MaskedLM" in archs or archs.endswith("Model"):
        return "encoder"
    if model_type in {"llama", "mistral", "gpt2", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt_neox", "opt"}:
        return "causal-lm"
    return "state-dict"


def _load_path(path: Path, spec: str, *, config_path: Path | None) -> ModelHandle:
    if path.is_dir():
        return _load_folder(path, spec)
    fmt = sniff(path)
    config = _read_config(config_path) if config_path else None
    if fmt == "gguf":
        return _load_gguf(path, spec)
    if fmt == "safetensors":
        source: TensorSource = SafetensorsSource([path])
    else:
        source = StateDictSource(path, fmt)
    return _handle(path.name, spec, source, config, folder=None)


def _load_folder(folder: Path, spec: str) -> ModelHandle:
    check_folder(folder)
    config = _read_config(folder / "config.json") if (folder / "config.json").exists() else None
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = _shards_from_index(index)
        source: TensorSource = SafetensorsSource(files)
    elif shards := sorted(folder.glob("*.safetensors")):
        source = SafetensorsSource(shards)
    elif ggufs := sorted(folder.glob("*.gguf")):
        if len(ggufs) > 1:
            raise OrthoscopeError(f"{folder.name} holds several .gguf files; pick one file instead of the folder.")
        return _load_gguf(ggufs[0], spec)
    elif bins := sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt")):
        if len(bins) > 1:
            raise OrthoscopeError(
                f"{folder.name} holds several .bin/.pt files; sharded pickled checkpoints are not supported, "
                "convert them to safetensors."
            )
        source = StateDictSource(bins[0], sniff(bins[0]))
    else:
        what = "a config.json but no weights" if config else "no weights"
        raise OrthoscopeError(
            f"{folder.name} has {what}: expected *.safetensors, model.safetensors.index.json, *.gguf, or one .bin/.pt file."
        )
    return _handle(folder.name, spec, source, config, folder=folder)


def _shards_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise OrthoscopeError(f"{index.name} is not a valid shard index ({exc}).") from None
    files = []
    for shard in sorted(set(weight_map.values())):
        path = (index.parent / shard).resolve()
        if index.parent.resolve() not in path.parents:
            raise OrthoscopeError(f"{index.name} names a shard outside its folder: {shard}.")
        if not path.exists():
            raise OrthoscopeError(f"{index.name} names the shard {shard}, which is missing.")
        files.append(path)
    return files


def _handle(name: str, spec: str, source: TensorSource, config: dict | None, folder: Path | None) -> ModelHandle:
    kind = _kind_from_config(config)
    handle = ModelHandle(name=name, spec=spec, kind=kind, fingerprint=fingerprint(source.files), source=source, config=config)
    if config is not None:
        handle.module_loader = lambda: _module_from(folder, config, source, kind)
    if folder is not None and any(folder.glob("tokenizer*")) or (folder is not None and (folder / "vocab.txt").exists()):
        handle.tokenizer_loader = lambda: _tokenizer_from(folder)
    return handle


def _load_gguf(path: Path, spec: str) -> ModelHandle:
    source = GGUFSource(path)
    title = source.metadata.get("general.name") or path.stem
    handle = ModelHandle(
        name=str(title), spec=spec, kind="causal-lm", fingerprint=fingerprint([path]), source=source,
        config={"model_type": source.architecture},
    )

    handle.module_loader = lambda: module_cache.gguf_module(path, handle.fingerprint)
    handle.tokenizer_loader = lambda: module_cache.gguf_tokenizer(path, handle.fingerprint)
    return handle


def _auto_class(kind: str):
    import transformers

    return transformers.AutoModelForCausalLM if kind == "causal-lm" else transformers.AutoModel


def _module_from(folder: Path | None, config: dict, source: TensorSource, kind: str) -> torch.nn.Module:
    import transformers

    auto = _auto_class(kind)
    try:
        if folder is not None and isinstance(source, SafetensorsSource):
            return auto.from_pretrained(str(folder), dtype=torch.float32, trust_remote_code=False)
        cfg = transformers.AutoConfig.for_model(**config)
        model = auto.from_config(cfg, trust_remote_code=False)
    except (ValueError, KeyError, OSError, TypeError) as exc:
        raise OrthoscopeError(f"transformers could not build this architecture ({exc}).") from None
    state = {meta.name: source.get(meta.name) for meta in source.metas()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if len(missing) > len(model.state_dict()) // 2:
        raise OrthoscopeError(
            f"the weights do not match config.json: {len(missing)} of the module's tensors are missing "
            f"(e.g. {missing[0]})."
        )
    return model


def _tokenizer_from(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)


def _load_hub(spec: str) -> ModelHandle:
    repo = spec.removeprefix("hf:").strip()
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise OrthoscopeError(f"{spec!r} is not a hub id; write hf:ORG/NAME.")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        raise OrthoscopeError("hf: specs need the huggingface_hub package.") from None
    try:
        folder = snapshot_download(
            repo, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "vocab.txt", "merges.txt", "*.model"],
            etag_timeout=10,
        )
    except RepositoryNotFoundError:
        raise OrthoscopeError(f"there is no model {repo!r} on the Hugging Face hub (or it is private).") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, OSError) as exc:
        raise OrthoscopeError(
            f"could not download {repo!r}: this machine cannot reach the Hugging Face hub and has no cached copy "
            f"({type(exc).__name__}). Use a built-in model or a local folder instead."
        ) from None
    except HfHubHTTPError as exc:
        raise OrthoscopeError(f"the hub refused {repo!r}: {exc}") from None
    handle = _load_folder(Path(folder), spec)
    handle.name = repo
    return handle
