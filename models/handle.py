"""``load(spec)``: from a model spec to a handle with metadata, tensors and a lazy module."""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from models import module_cache
from models.builtin import BUILTINS, builtin_path
from models.config import ModelConfig, read_config, read_weight_map, validate_config
from models.errors import OrthoscopeError
from models.limits import MODULE_SIZE_RATIO, MODULE_SIZE_SLACK, check_memory, check_regular_file
from models.matrices import Skipped, WeightMatrix, block_namer, classify
from models.safety import check_folder, check_size, check_under_roots, sniff
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
    # What the loader chose and why, for the user: e.g. which weight file of a folder was read.
    notes: list[str] = field(default_factory=list)

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
        return [_row(meta, *self._plan(meta)) for meta in self.source.metas()]

    def _plan(self, meta: TensorMeta) -> tuple[list[WeightMatrix], Skipped | None]:
        """What a stored tensor yields, from its shape alone; a tensor the source cannot read is skipped."""
        if meta.unsupported:
            return [], Skipped(meta.name, meta.shape, meta.unsupported)
        return self._classify(meta.name, meta.as_meta_tensor())

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
            planned, skipped = self._plan(meta)
            if skipped is not None or (names is not None and not names & {m.name for m in planned}):
                continue
            mats, _ = self._classify(meta.name, self.source.get(meta.name))
            for mat in mats:
                if names is None or mat.name in names:
                    yield mat

    def planned_matrices(self) -> list[WeightMatrix]:
        """Every analysable matrix with its kind and block, as meta tensors: shapes only, no data read."""
        return [m for meta in self.source.metas() for m in self._plan(meta)[0]]

    def matrix_names(self) -> list[str]:
        return [m.name for m in self.planned_matrices()]

    def skipped(self) -> list[Skipped]:
        out = []
        for meta in self.source.metas():
            _, skipped = self._plan(meta)
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


def _fingerprint_key(files: list[Path]) -> tuple:
    return tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(files))


def cached_fingerprints(files: list[Path]) -> tuple:
    """The cache entry of ``files`` as ``((key, digest),)``, or ``()``: for a process that will open the
    same files (a sweep's worker), so that it need not read every byte again to hash them."""
    key = _fingerprint_key(files)
    return ((key, _FINGERPRINT_CACHE[key]),) if key in _FINGERPRINT_CACHE else ()


def remember_fingerprints(entries: tuple) -> None:
    """Take fingerprints another process computed (:func:`cached_fingerprints`). An entry is looked up
    only for the same path, size and modification time, as this process's own entries are."""
    _FINGERPRINT_CACHE.update(dict(entries))


def fingerprint(files: list[Path]) -> str:
    """sha256 over the weight files' bytes (and their names), cached per path, size and mtime."""
    key = _fingerprint_key(files)
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
        if path.is_symlink():
            raise OrthoscopeError(f"{spec} is a symbolic link to nothing readable (dangling, or a link loop).")
        raise OrthoscopeError(f"{spec} does not exist.")
    check_size(path, max_mb)
    handle = _load_path(path, spec, config_path=config_path)
    if display_name:
        handle.name = display_name
    return handle


def _read_config(path: Path) -> dict:
    """config.json, bounded and validated (models.config); the raw dict is what transformers is given."""
    data, _ = read_config(path)
    return data


def _kind_from_config(config: dict | None) -> str:
    if not config:
        return "state-dict"
    archs = " ".join(config.get("architectures") or [])
    model_type = str(config.get("model_type") or "").lower()
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


# transformers' own file names, in the order its from_pretrained looks for them.
_SAFE_SINGLE, _SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"


def _load_folder(folder: Path, spec: str) -> ModelHandle:
    """A model folder: one weight source, chosen once, for both the analysis and the module.

    Safetensors are preferred to pickles, in transformers' order: ``model.safetensors``, then the shard
    index, then any other ``*.safetensors`` (as shards of one checkpoint); then a single ``.gguf``;
    then a single ``.bin``/``.pt``. Weight files of the other kinds are ignored, and a note says so."""
    files = [p for p, _ in check_folder(folder) if p.parent == folder]
    config = _read_config(folder / "config.json") if (folder / "config.json").exists() else None
    safetensors = sorted(p for p in files if p.suffix == ".safetensors")
    ggufs = sorted(p for p in files if p.suffix == ".gguf")
    bins = sorted(p for p in files if p.suffix in {".bin", ".pt", ".pth"})
    _refuse_folders_named_as_weights(folder)
    index = folder / _SAFE_INDEX
    pretrained = False  # whether transformers' from_pretrained would read exactly these files
    if (folder / _SAFE_SINGLE) in safetensors:
        chosen = [folder / _SAFE_SINGLE]
        source: TensorSource = SafetensorsSource(chosen)
        pretrained = True
    elif index.exists():
        chosen = _shards_from_index(index)
        source = SafetensorsSource(chosen)
        _check_index_against_shards(index, source)
        chosen = chosen + [index]
        pretrained = True
    elif safetensors:
        chosen = safetensors
        source = SafetensorsSource(safetensors)
    elif ggufs:
        if len(ggufs) > 1:
            raise OrthoscopeError(f"{folder.name} holds several .gguf files; pick one file instead of the folder.")
        return _load_gguf(ggufs[0], spec)
    elif bins:
        if len(bins) > 1:
            raise OrthoscopeError(
                f"{folder.name} holds several .bin/.pt files; sharded pickled checkpoints are not supported, "
                "convert them to safetensors."
            )
        chosen = bins
        source = StateDictSource(bins[0], sniff(bins[0]))
    else:
        what = "a config.json but no weights" if config else "no weights"
        if folder.suffix in {".safetensors", ".bin", ".pt", ".pth", ".gguf"}:
            what = f"{what} (it is a folder named like a weights file)"
        raise OrthoscopeError(
            f"{folder.name} has {what}: expected *.safetensors, model.safetensors.index.json, *.gguf, or one .bin/.pt file."
        )
    handle = _handle(folder.name, spec, source, config, folder=folder, pretrained=pretrained)
    ignored = sorted({p.name for p in safetensors + ggufs + bins} - {c.name for c in chosen})
    if ignored:
        handle.notes.append(
            f"{folder.name}: analysed, and its module built, from {', '.join(c.name for c in chosen[:3])}"
            f"{' ...' if len(chosen) > 3 else ''}; ignored: {', '.join(ignored[:5])}{' ...' if len(ignored) > 5 else ''}."
        )
    return handle


def _refuse_folders_named_as_weights(folder: Path) -> None:
    """A folder named like a weight file (``x.safetensors``, ``pytorch_model.bin``) is refused by name,
    rather than left for transformers to stumble on."""
    for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.json"):
        for p in folder.glob(pattern):
            if p.is_dir():
                raise OrthoscopeError(f"{folder.name}/{p.name} is a folder where a file was expected.")


def _shards_from_index(index: Path) -> list[Path]:
    weight_map = read_weight_map(index)
    folder = index.parent.resolve()
    files = []
    for shard in sorted(set(weight_map.values())):
        path = (index.parent / shard).resolve()
        if folder not in path.parents:
            raise OrthoscopeError(f"{index.name} names a shard outside its folder: {shard}.")
        if not path.exists():
            raise OrthoscopeError(f"{index.name} names the shard {shard}, which is missing.")
        check_regular_file(path, f"{index.parent.name}/{shard}")
        files.append(path)
    return files


def _check_index_against_shards(index: Path, source: SafetensorsSource) -> None:
    """Every tensor the index lists is in the shard it names (transformers trusts the index)."""
    weight_map = read_weight_map(index)
    where = {meta.name: path.name for meta in source.metas() for path in [source.shard_of(meta.name)]}
    for name, shard in weight_map.items():
        if where.get(name) != shard:
            found = f"it is in {where[name]}" if name in where else "no shard holds it"
            raise OrthoscopeError(f"{index.name} places tensor {name[:80]!r} in {shard}, but {found}.")


def _handle(name: str, spec: str, source: TensorSource, config: dict | None, folder: Path | None,
            pretrained: bool = False) -> ModelHandle:
    kind = _kind_from_config(config)
    handle = ModelHandle(name=name, spec=spec, kind=kind, fingerprint=fingerprint(source.files), source=source, config=config)
    if config is not None:
        handle.module_loader = lambda: _module_from(folder if pretrained else None, config, source, kind)
    if folder is not None and any(folder.glob("tokenizer*")) or (folder is not None and (folder / "vocab.txt").exists()):
        handle.tokenizer_loader = lambda: _tokenizer_from(folder)
    return handle


def _load_gguf(path: Path, spec: str) -> ModelHandle:
    source = GGUFSource(path)
    title = source.metadata.get("general.name") or path.stem
    config = {"model_type": source.architecture[:200]}
    validate_config(config, path.name)
    handle = ModelHandle(
        name=str(title), spec=spec, kind="causal-lm", fingerprint=fingerprint([path]), source=source, config=config,
    )

    handle.module_loader = lambda: module_cache.gguf_module(path, handle.fingerprint)
    handle.tokenizer_loader = lambda: module_cache.gguf_tokenizer(path, handle.fingerprint)
    return handle


def _auto_class(kind: str):
    import transformers

    return transformers.AutoModelForCausalLM if kind == "causal-lm" else transformers.AutoModel


def _check_config_sizes(typed: ModelConfig, source: TensorSource) -> None:
    """Refuse a config whose declared sizes cannot describe the stored weights, from numbers alone.

    Runs before transformers builds anything, even on the meta device (building 10^6 layers there
    still takes hours). Each transformer layer holds at least one hidden x hidden matrix and the
    embedding is vocab x hidden, so both products are lower bounds on the module's parameters."""
    metas = [m for m in source.metas() if not m.unsupported]  # a sparse 10^6 x 10^6 holds one value
    stored = sum(m.numel for m in metas)
    matrices = sum(1 for m in metas if len(m.shape) >= 2)
    allowed = MODULE_SIZE_RATIO * stored + MODULE_SIZE_SLACK
    for prefix, cfg in (("", typed), ("text_config.", typed.text_config), ("vision_config.", typed.vision_config)):
        if cfg is None:
            continue
        layers, width, vocab = cfg.layers(), cfg.width(), cfg.vocab_size
        # Weight sharing (ALBERT) lets a few matrices serve many layers, hence the floor of 256.
        if layers and layers > max(matrices, 256):
            raise OrthoscopeError(
                f"the weights do not match config.json: it declares {layers:,} layers ({prefix}num_hidden_layers) "
                f"but the weights hold only {matrices:,} matrices."
            )
        for what, size in ((f"{layers or 0:,} layers of width {width or 0:,}", (layers or 0) * (width or 0) ** 2),
                           (f"a {vocab or 0:,} x {width or 0:,} embedding", (vocab or 0) * (width or 0))):
            if size > allowed:
                raise OrthoscopeError(
                    f"the weights do not match config.json: {prefix or 'it '}declares {what} (at least {size:,} "
                    f"parameters), but the weights hold {stored:,}."
                )


def _planned_module(auto, cfg) -> torch.nn.Module:
    """The module the config describes, built on the meta device: shapes, no memory."""
    with torch.device("meta"):
        return auto.from_config(cfg, trust_remote_code=False)


def _check_module_against_weights(planned: torch.nn.Module, source: TensorSource, strict_names: bool) -> int:
    """Compare the planned module's tensors with the stored ones before anything is allocated; returns the
    module's bytes in float32.

    A tensor both have under one name (allowing for the base model's prefix) must have one shape; the
    module may hold at most MODULE_SIZE_RATIO times the stored parameters (plus slack); and, where the
    weights are loaded by name here (``strict_names``), at least half of the module's parameters must be
    found among them."""
    stored = {m.name: m.shape for m in source.metas() if not m.unsupported}
    stored_numel = sum(math.prod(s) for s in stored.values())
    prefix = getattr(planned, "base_model_prefix", "") or ""
    module_numel = found = 0
    tensors = dict(planned.named_parameters())
    tensors.update(dict(planned.named_buffers()))
    seen: set[int] = set()
    for key, t in tensors.items():
        if id(t) in seen:  # tied weights count once
            continue
        seen.add(id(t))
        module_numel += t.numel()
        name = _stored_name(key, stored, prefix)
        if name is None:
            continue
        if tuple(stored[name]) != tuple(t.shape):
            show = lambda shape: "x".join(map(str, shape)) or "scalar"  # noqa: E731
            raise OrthoscopeError(
                f"the weights do not match config.json: it makes {key[:80]} {show(t.shape)}, the weights store "
                f"{show(stored[name])}."
            )
        found += t.numel()
    if module_numel > MODULE_SIZE_RATIO * stored_numel + MODULE_SIZE_SLACK:
        raise OrthoscopeError(
            f"the weights do not match config.json: it describes a module of {module_numel:,} parameters, "
            f"the weights hold {stored_numel:,}."
        )
    if strict_names and module_numel and found < module_numel / 2:
        missing = [k for k in tensors if _stored_name(k, stored, prefix) is None]
        raise OrthoscopeError(
            f"the weights do not match config.json: {len(missing)} of the module's tensors are missing "
            f"(e.g. {missing[0][:80]})."
        )
    return 4 * module_numel


def _stored_name(key: str, stored: dict, prefix: str) -> str | None:
    if key in stored:
        return key
    if prefix:
        if f"{prefix}.{key}" in stored:
            return f"{prefix}.{key}"
        if key.startswith(prefix + ".") and key[len(prefix) + 1:] in stored:
            return key[len(prefix) + 1:]
    return None


def _module_from(folder: Path | None, config: dict, source: TensorSource, kind: str) -> torch.nn.Module:
    """The module, built from the very files the analysis reads (``source``).

    ``folder`` is given only when transformers' from_pretrained reads exactly those files
    (``model.safetensors`` or the shard index, with ``use_safetensors=True`` so that it never falls back
    to a ``pytorch_model.bin`` beside them); otherwise the module is built from the config and the
    source's tensors are loaded into it by name. Either way the config is first checked against the
    stored weights, from its numbers and then on the meta device, so that a config declaring far more
    than the files hold is refused before anything is allocated."""
    import transformers

    _check_config_sizes(validate_config(config), source)
    auto = _auto_class(kind)
    try:
        if folder is not None:  # the config from_pretrained reads (validated at load, as config_dict)
            cfg = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
        else:
            cfg = transformers.AutoConfig.for_model(**config)
        planned = _planned_module(auto, cfg)
    except Exception as exc:  # transformers raises many types on configs it cannot use
        text = " ".join(str(exc).split())[:300]
        raise OrthoscopeError(f"transformers could not build this architecture ({type(exc).__name__}: {text}).") from None
    nbytes = _check_module_against_weights(planned, source, strict_names=folder is None)
    del planned
    if folder is None:
        nbytes += sum(m.numel * 4 for m in source.metas() if not m.unsupported)  # the state dict, beside the module
    check_memory(nbytes, "building this model's module")
    try:
        if folder is not None:
            return auto.from_pretrained(str(folder), config=cfg, dtype=torch.float32, trust_remote_code=False,
                                        use_safetensors=True)
        model = auto.from_config(cfg, trust_remote_code=False)
    except Exception as exc:  # untrusted weights and config meet transformers' code: report, don't crash
        text = " ".join(str(exc).split())[:300]
        raise OrthoscopeError(f"transformers could not build this architecture ({type(exc).__name__}: {text}).") from None
    state = {meta.name: source.get(meta.name) for meta in source.metas() if not meta.unsupported}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        text = " ".join(str(exc).split())[:300]
        raise OrthoscopeError(f"the weights do not match config.json ({text}).") from None
    if len(missing) > len(model.state_dict()) // 2:
        raise OrthoscopeError(
            f"the weights do not match config.json: {len(missing)} of the module's tensors are missing "
            f"(e.g. {missing[0]})."
        )
    return model


def _tokenizer_from(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:  # tokenizer files are untrusted input to transformers and tokenizers
        text = " ".join(str(exc).split())[:300]
        raise OrthoscopeError(f"the tokenizer in {folder.name} could not be loaded ({type(exc).__name__}: {text}).") from None


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
