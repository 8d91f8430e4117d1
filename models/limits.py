"""Bounds on what a file a user brings may ask of the server, in one place.

Every reader of untrusted bytes (checkpoints, configs, indexes, arrays, texts, triples, traces,
reports) goes through these: JSON is parsed with bounded nesting, integer size, string length and
list length; a path must be a regular file (never a FIFO, device or socket, which could block a
reader forever) before it is opened; and a planned allocation is checked against a memory budget
before it is made, from declared shapes and sizes rather than after the fact.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from models.errors import OrthoscopeError

MAX_JSON_DEPTH = 64  # real configs, indexes and reports nest fewer than 10 levels
MAX_INT_DIGITS = 40  # beyond any count, size or seed a file may state (2**128 has 39 digits)
MAX_STRING_CHARS = 10_000_000
MAX_LIST_ITEMS = 10_000_000
MAX_TENSORS = 65_536  # more stored tensors than any published model holds
MAX_HEADER_BYTES = 100 * 2**20  # a safetensors header; safetensors itself refuses larger ones
MAX_TENSOR_NDIM = 16  # dimensions of one stored tensor
MAX_PICKLE_BYTES = 64 * 2**20  # the pickle (data.pkl) of a zipped PyTorch checkpoint: names and shapes only
MAX_FOLDER_ENTRIES = 100_000  # files and folders walked in one model folder
MAX_FOLDER_DEPTH = 8  # nesting of a model folder (sentence-transformers modules sit one level down)
MAX_CHECKPOINTS = 10_000  # checkpoints in one compared series: a long run saved every few hundred steps
# Config fields that size a module, bounded well above any published model (Llama 3.1 405B: 126 layers,
# hidden 16,384; Gemma 3: vocabulary 262,144; context windows of 10M positions).
MAX_CONFIG_LAYERS = 10_000
MAX_CONFIG_WIDTH = 2**20
MAX_CONFIG_HEADS = 2**16
MAX_CONFIG_VOCAB = 2**24
MAX_CONFIG_POSITIONS = 2**27
MAX_CONFIG_NAME_CHARS = 256
# A module is built from a config only when its parameter count stays within this factor (plus slack, for
# tiny models whose pooler or head is a visible share) of the parameters the weight files store.
MODULE_SIZE_RATIO = 2.0
MODULE_SIZE_SLACK = 2**20
# What the other input files may hold (reports/SCHEMA.md lists them too). Limits on run parameters
# (strengths, steps, generated tokens) live beside those parameters; these bound what a file brings.
MAX_RECORD_BYTES = 64 * 2**20  # a CSV / JSONL table: labelled texts, triples, captions
MAX_RECORDS = 1_000_000
MAX_RECORD_COLUMNS = 1_000
MAX_TRIPLES_BYTES = 5 * 2**20  # a steering triples file
MAX_TEXTS = 20_000  # an alignment text set
MAX_TEXT_CHARS = 2_000
MAX_TEXT_FILE_BYTES = 64 * 2**20
# An embedding array file is read whole; beyond this it is refused before it is read (the memory budget
# may refuse smaller ones). A CSV of numbers is parsed straight into an array, but still bounded lower.
MAX_ARRAY_FILE_BYTES = 4 * 2**30
MAX_CSV_BYTES = 256 * 2**20
MAX_NPZ_MEMBERS = 1_000
# An .npz member that inflates more than this many times, to more than BOMB_FLOOR, is a bomb: real
# embeddings compress a few-fold at most.
MAX_INFLATION = 100
BOMB_FLOOR = 64 * 2**20
MAX_ARRAY_HEADER_BYTES = 16 * 2**20  # the safetensors header of an embedding array file
MAX_IMAGES = 5_000  # an image folder for alignment
MAX_IMAGE_BYTES = 64 * 2**20
MAX_TRACE_BYTES = 200 * 2**20  # traces.jsonl
MAX_TRACE_STEP = 10**15
MAX_REPORT_BYTES = 256 * 2**20  # report.json
MAX_REPORT_RESULTS = 64
MAX_REPORT_ROWS = 2_000_000  # any list in a report's result, unless bounded more tightly
MEMORY_ENV = "ORTHOSCOPE_MAX_MEMORY"
DEFAULT_MEMORY_FRACTION = 0.5
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


_LONG_DIGITS = re.compile(r"\d{%d}" % (MAX_INT_DIGITS + 1))
_LONG_DIGITS_B = re.compile(rb"\d{%d}" % (MAX_INT_DIGITS + 1))


def _refuse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise OrthoscopeError(f"an integer of {len(text)} digits (at most {MAX_INT_DIGITS} are read)")
    return int(text)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise OrthoscopeError(f"the key {twice[:80]!r} appears more than once")
    return out


def loads_json(data: str | bytes, what: str, *, unique_keys: bool = False) -> Any:
    """Parse JSON from an untrusted source within the bounds above, or raise OrthoscopeError naming ``what``.

    ``unique_keys``: refuse an object that states a key twice (JSON keeps the last silently; for a
    safetensors header or a shard index that would hide a tensor)."""
    # Python's own int parsing is safe up to MAX_INT_DIGITS; the per-integer hook (which names the offender) is
    # needed only when the text holds a longer run of digits, which one regular-expression scan finds.
    long_digits = _LONG_DIGITS_B if isinstance(data, (bytes, bytearray)) else _LONG_DIGITS
    parse_int = _refuse_int if long_digits.search(data) else None
    try:
        value = json.loads(data, parse_int=parse_int, object_pairs_hook=_unique_pairs if unique_keys else None)
    except OrthoscopeError as exc:
        raise OrthoscopeError(f"{what}: {exc}.") from None
    except RecursionError:
        raise OrthoscopeError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels.") from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise OrthoscopeError(f"{what} is not valid JSON ({exc}).") from None
    check_json_bounds(value, what)
    return value


def check_json_bounds(value: Any, what: str) -> None:
    """Walk a parsed value without recursion: depth, string and list lengths.

    Only containers go on the stack; strings are measured where they are met (a safetensors header of
    16,000 tensors holds some 100,000 values, and this walk is linear in them)."""
    def too_long(text: str) -> OrthoscopeError:
        return OrthoscopeError(f"{what}: a string of {len(text):,} characters (at most {MAX_STRING_CHARS:,}).")

    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            raise too_long(value)
        return
    if not isinstance(value, (list, dict)):
        return
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise OrthoscopeError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels.")
        if len(item) > MAX_LIST_ITEMS:
            raise OrthoscopeError(f"{what}: a list of {len(item):,} items (at most {MAX_LIST_ITEMS:,}).")
        if type(item) is dict:
            for key in item:
                if len(key) > MAX_STRING_CHARS:
                    raise too_long(key)
            children = item.values()
        else:
            children = item
        for child in children:
            kind = type(child)
            if kind is str:
                if len(child) > MAX_STRING_CHARS:
                    raise too_long(child)
            elif kind is dict or kind is list:
                stack.append((child, depth + 1))


def check_regular_file(path: Path, what: str | None = None) -> os.stat_result:
    """``stat`` a path before anything opens it: a folder, FIFO, device or socket is refused."""
    shown = what or Path(path).name
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise OrthoscopeError(f"{shown} does not exist.") from None
    except OSError as exc:
        raise OrthoscopeError(f"{shown} cannot be read ({exc.strerror}).") from None
    if stat.S_ISDIR(info.st_mode):
        raise OrthoscopeError(f"{shown} is a folder where a file was expected.")
    if not stat.S_ISREG(info.st_mode):
        raise OrthoscopeError(f"{shown} is not a regular file (a pipe, device or socket); refused.")
    return info


def read_text(path: Path, what: str | None = None, max_bytes: int = 64 * 2**20) -> str:
    """A small text file from an untrusted folder: regular, bounded, UTF-8."""
    shown = what or Path(path).name
    info = check_regular_file(path, shown)
    if info.st_size > max_bytes:
        raise OrthoscopeError(f"{shown} is {info.st_size:,} bytes; at most {max_bytes:,} are read.")
    try:
        return Path(path).read_bytes()[:max_bytes].decode("utf-8")
    except UnicodeDecodeError:
        raise OrthoscopeError(f"{shown} is not UTF-8 text.") from None


def read_json(path: Path, what: str | None = None, *, unique_keys: bool = False) -> Any:
    shown = what or Path(path).name
    return loads_json(read_text(path, shown), shown, unique_keys=unique_keys)


def parse_size(text: str) -> int:
    """``"4G"``, ``"512MiB"``, ``"1000000"`` -> bytes (binary multiples)."""
    m = _SIZE.match(text)
    if not m:
        raise OrthoscopeError(f"{MEMORY_ENV}={text!r}: write a size such as 4G, 512M or a number of bytes.")
    unit = (m.group(2) or "B")[0].upper()
    return int(float(m.group(1)) * {"B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[unit])


def memory_budget() -> int:
    """Bytes one computation may allocate: ``ORTHOSCOPE_MAX_MEMORY``, else half the machine's memory."""
    raw = os.environ.get(MEMORY_ENV, "").strip()
    if raw:
        return parse_size(raw)
    import psutil

    return int(psutil.virtual_memory().total * DEFAULT_MEMORY_FRACTION)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_memory(nbytes: float, what: str) -> None:
    """Refuse a planned allocation above the budget, before it is made."""
    budget = memory_budget()
    if nbytes > budget:
        raise OrthoscopeError(f"{what} would need {human_bytes(nbytes)} of memory, above this server's limit of "
                              f"{human_bytes(budget)} ({MEMORY_ENV}).")
