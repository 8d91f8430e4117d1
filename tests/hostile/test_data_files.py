"""Hostile and malformed data files at every door that reads user data: text sets, labels, arrays
(.npy, .npz, .safetensors, .csv), triples, traces and report.json, plus the numeric edge cases of
alignment and latent directions.

Each case writes its payload into tmp_path and runs the CLI in a forked child (tests/hostile/harness),
or, for report.json (opened by the dashboard only) and a text set (read before any model is needed
by :func:`load_text_set`), the reader itself in the same kind of child. A refusal must be exit 2 with
one ``error:`` line, no traceback, within 10 s and 1.5 GB; a "defined result with a warning" case
must exit 0 with the warning on stderr. Every outcome is kept, and the slowest case and the largest
peak RSS are printed at the end (``-s``) and asserted within the bounds.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.hostile.harness import MAX_RSS_MB, MAX_SECONDS, Outcome, assert_refused, run_call, run_cli

OUTCOMES: list[tuple[str, Outcome]] = []




def _record(case: str, outcome: Outcome) -> Outcome:
    OUTCOMES.append((case, outcome))
    return outcome


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    if OUTCOMES:
        slow = max(OUTCOMES, key=lambda c: c[1].seconds)
        big = max(OUTCOMES, key=lambda c: c[1].peak_mb if c[1].peak_mb == c[1].peak_mb else 0)
        print(f"\nhostile data files: {len(OUTCOMES)} cases; slowest {slow[0]} {slow[1].seconds:.2f} s; "
              f"largest peak RSS {big[0]} {big[1].peak_mb:.0f} MB")


# ---------------------------------------------------------------------------------------
# Payloads


def npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def npy_header(shape, descr="<f8", extra: bytes = b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + extra


def raw_npy_header(header: str) -> bytes:
    """An .npy whose header dict is written as given (numpy would refuse to write it)."""
    text = header.encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def safetensors(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def safetensors_raw(header_text: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header_text)) + header_text + data


NESTED = "[" * 100_000 + "]" * 100_000
BIG_INT = "7" * 5_000
GOOD = np.random.default_rng(0).standard_normal((40, 4))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A 1 MB .npz that inflates to 1 GiB of zeros (a float64 array of 2^27 elements), a valid zip
    (CRC included). Its deflate stream is built from one fully flushed 4 MiB block of zeros repeated,
    which is what a compressor emits for them anyway, so it takes a second instead of compressing 1 GiB."""
    import zlib

    header = npy_header((2**24, 8))
    zeros = bytes(2**22)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    n = 2**30 // len(zeros)
    data = head + block * n + c.flush(zlib.Z_FINISH)
    crc = zlib.crc32(header)
    for _ in range(n):
        crc = zlib.crc32(zeros, crc)
    size, name = len(header) + n * len(zeros), b"embeddings.npy"
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data), size, len(name), 0) + name
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(data), size, len(name),
                          0, 0, 0, 0, 0, 0) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    path = tmp_path_factory.mktemp("bomb") / "bomb.npz"
    path.write_bytes(local + data + central + end)
    info = zipfile.ZipFile(path).infolist()[0]
    assert path.stat().st_size < 2 * 2**20 and info.file_size > 2**30
    return path


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def fifo(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    os.mkfifo(path)
    return path


# ---------------------------------------------------------------------------------------
# Arrays: alignment --emb-a FILE --emb-b FILE


def align_argv(tmp_path: Path, a: Path, b: Path | None = None, *extra: str) -> list[str]:
    b = b or write(tmp_path, "good_b.npy", npy(GOOD))
    return ["alignment", "--emb-a", str(a), "--emb-b", str(b), "--no-curves", "--permutations", "5", "--draws", "1",
            "--maps", "procrustes,lstsq", "--out", str(tmp_path / "out"), *extra]


def _pickle_payload(tmp_path: Path) -> bytes:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    obj = np.empty(1, dtype=object)
    obj[0] = Evil()
    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    return buf.getvalue()


def _npz_object_member() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("embeddings.npy", npy_header((2,), descr="|O", extra=b"\x80\x04N."))
    return buf.getvalue()


def _many_members() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(1_200):
            zf.writestr(f"a{i}.npy", b"")
    return buf.getvalue()


ARRAY_CASES = {
    # name: (file name, payload builder, phrase in the error)
    "npy header claims 160 GB": ("a.npy", lambda t: npy_header((200_000, 100_000), extra=b"\0" * 64), "declares shape"),
    "npy truncated data": ("a.npy", lambda t: npy(GOOD)[:-100], "truncated"),
    "npy pickled object": ("a.npy", _pickle_payload, "allow_pickle=False"),
    "npy void (bfloat16 as numpy saves it)": ("a.npy", lambda t: npy(np.zeros((40, 4), dtype="V2")), "bfloat16"),
    "npy structured records": ("a.npy", lambda t: npy(np.zeros(40, dtype=[("x", "<f4"), ("y", "<f4")])), "structured"),
    "npy complex": ("a.npy", lambda t: npy(GOOD.astype(complex)), "complex"),
    "npy strings": ("a.npy", lambda t: npy(np.array([["a", "b"]] * 40)), "<U1"),
    "npy 5000-digit shape": ("a.npy", lambda t: raw_npy_header("{'descr': '<f8', 'fortran_order': False, 'shape': (" + BIG_INT + ",), }"), "NumPy header"),
    "npy negative shape": ("a.npy", lambda t: raw_npy_header("{'descr': '<f8', 'fortran_order': False, 'shape': (-5, 4), }"), ""),
    "npy header not a dict": ("a.npy", lambda t: raw_npy_header("[1, 2, 3]"), "NumPy header"),
    "npy 3-D": ("a.npy", lambda t: npy(np.zeros((4, 4, 4))), "2-D array"),
    "npy not numpy at all": ("a.npy", lambda t: b"\x80\x04K\x01.", "not a NumPy"),
    "npz object member": ("a.npz", lambda t: _npz_object_member(), "Python objects"),
    "npz two arrays": ("a.npz", lambda t: npz(x=GOOD, y=GOOD), "holds 2 arrays"),
    "npz 1,200 members": ("a.npz", lambda t: _many_members(), "members"),
    "npz truncated zip": ("a.npz", lambda t: npz(embeddings=GOOD)[:200], "npz"),
    "safetensors F8_E4M3": ("a.safetensors", lambda t: safetensors(
        {"embeddings": {"dtype": "F8_E4M3", "shape": [40, 4], "data_offsets": [0, 160]}}, bytes(160)), "F8_E4M3"),
    "safetensors nested header": ("a.safetensors", lambda t: safetensors_raw(
        b'{"x": ' + NESTED.encode() + b"}"), "nested deeper"),
    "safetensors 5000-digit offset": ("a.safetensors", lambda t: safetensors_raw(
        b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, ' + BIG_INT.encode() + b"]}}"), "digits"),
    "safetensors header larger than the file": ("a.safetensors", lambda t: struct.pack("<Q", 2**40) + b"{}", "claims"),
    "safetensors offsets outside the file": ("a.safetensors", lambda t: safetensors(
        {"x": {"dtype": "F32", "shape": [10**6, 4], "data_offsets": [0, 16 * 10**6]}}), "outside the file"),
    "safetensors shape/offsets mismatch": ("a.safetensors", lambda t: safetensors(
        {"x": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 16]}}, bytes(16)), "needs"),
    "safetensors header a list": ("a.safetensors", lambda t: safetensors_raw(b"[1, 2]"), "not a JSON object"),
    "csv infinite value": ("a.csv", lambda t: "1,2\n" * 20 + "1e999,2\n", "NaN or infinite"),
    "csv ragged rows": ("a.csv", lambda t: "1,2\n3\n", "different numbers of columns"),
    "csv not numbers": ("a.csv", lambda t: "a,b\nx,y\n", "not a number"),
    "csv NUL bytes": ("a.csv", lambda t: b"1,2\n\x00\x00,3\n", "NUL"),
}


@pytest.mark.parametrize("case", list(ARRAY_CASES))
def test_hostile_arrays_are_refused_in_one_line(case, tmp_path):
    name, build, phrase = ARRAY_CASES[case]
    path = write(tmp_path, name, build(tmp_path))
    outcome = _record(f"array: {case}", run_cli(align_argv(tmp_path, path)))
    assert_refused(outcome, marker=tmp_path / "pwned", contains=phrase or None)


def test_an_npz_deflate_bomb_is_refused_from_its_declared_size(bomb, tmp_path):
    outcome = _record("array: npz deflate bomb (1 MB -> 1 GiB)", run_cli(align_argv(tmp_path, bomb)))
    assert_refused(outcome, contains="decompression bomb")  # in under 1.5 GB: nothing was inflated


def test_an_npz_bomb_under_the_ratio_is_refused_by_the_memory_budget(tmp_path, monkeypatch):
    path = tmp_path / "a.npz"
    np.savez(path, embeddings=np.random.default_rng(1).standard_normal((20_000, 64)))  # ~10 MB, incompressible
    monkeypatch.setenv("ORTHOSCOPE_MAX_MEMORY", "4M")
    outcome = _record("array: npz over ORTHOSCOPE_MAX_MEMORY", run_cli(align_argv(tmp_path, path)))
    assert_refused(outcome, contains="ORTHOSCOPE_MAX_MEMORY")


def test_an_npy_within_its_file_but_over_the_budget_is_refused_before_reading(tmp_path, monkeypatch):
    path = write(tmp_path, "a.npy", npy(np.zeros((200_000, 8))))
    monkeypatch.setenv("ORTHOSCOPE_MAX_MEMORY", "8M")
    outcome = _record("array: npy over ORTHOSCOPE_MAX_MEMORY", run_cli(align_argv(tmp_path, path)))
    assert_refused(outcome, contains="limit")


@pytest.mark.parametrize("kind", ["fifo", "folder", "missing"])
def test_special_files_are_refused_before_any_open(kind, tmp_path):
    if kind == "fifo":
        path = fifo(tmp_path, "a.npy")
    elif kind == "folder":
        path = tmp_path / "a.npy"
        path.mkdir()
    else:
        path = tmp_path / "nope.npy"
    outcome = _record(f"array: {kind} for --emb-a", run_cli(align_argv(tmp_path, path)))
    assert_refused(outcome, contains={"fifo": "not a regular file", "folder": "folder", "missing": "does not exist"}[kind])


def test_bf16_safetensors_are_converted_and_aligned(tmp_path):
    from safetensors.torch import save

    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 4))
    Y = X @ np.linalg.qr(rng.standard_normal((4, 4)))[0]
    a = write(tmp_path, "a.safetensors", save({"embeddings": torch.tensor(X, dtype=torch.bfloat16)}))
    b = write(tmp_path, "b.safetensors", save({"embeddings": torch.tensor(Y, dtype=torch.bfloat16)}))
    outcome = _record("array: BF16 safetensors (converted)", run_cli(align_argv(tmp_path, a, b)))
    assert outcome.code == 0, outcome.stderr
    assert (tmp_path / "out" / "metrics.csv").exists()


# ---------------------------------------------------------------------------------------
# Labels: alignment --labels FILE

LABEL_CASES = {
    "jsonl nested": ("l.jsonl", NESTED + "\n", "nested deeper"),
    "jsonl 5000-digit label": ("l.jsonl", '{"label": ' + BIG_INT + "}\n", "digits"),
    "csv without a label column": ("l.csv", "name\na\n", "no 'label' column"),
    "npy object labels": ("l.npy", npy_header((40,), descr="|O", extra=b"\x80\x04N."), "Python objects"),
    "too few labels": ("l.txt", "a\nb\n", "2 labels for 40 rows"),
    "not UTF-8": ("l.txt", b"\xff\xfe\xfa", "not UTF-8"),
}


@pytest.mark.parametrize("case", list(LABEL_CASES))
def test_hostile_labels_are_refused_in_one_line(case, tmp_path):
    name, data, phrase = LABEL_CASES[case]
    a = write(tmp_path, "a.npy", npy(GOOD))
    labels = write(tmp_path, name, data)
    outcome = _record(f"labels: {case}", run_cli(align_argv(tmp_path, a, None, "--labels", str(labels))))
    assert_refused(outcome, contains=phrase)


# ---------------------------------------------------------------------------------------
# Text sets (alignment --texts FILE), read by load_text_set before the models embed them


TEXT_CASES = {
    "jsonl nested": ("t.jsonl", NESTED + "\n", "nested deeper"),
    "jsonl 5000-digit integer": ("t.jsonl", '{"text": "a", "n": ' + BIG_INT + "}\n", "digits"),
    "jsonl line is a list": ("t.jsonl", "[1, 2]\n", "JSON object"),
    "jsonl text is an object": ("t.jsonl", '{"text": {"a": 1}}\n', "missing or empty"),
    "csv with NUL": ("t.csv", "text\nab\x00c\n", "NUL"),
    "csv without a text column": ("t.csv", "words\nhello\n", "no 'text' column"),
    "not UTF-8": ("t.csv", b"text\n\xff\xfe\n", "not UTF-8"),
}


@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_hostile_text_sets_are_refused_in_one_line(case, tmp_path):
    from diagnostics.alignment_data import load_text_set

    name, data, phrase = TEXT_CASES[case]
    path = write(tmp_path, name, data)
    outcome = _record(f"texts: {case}", run_call(load_text_set, str(path)))
    assert_refused(outcome, contains=phrase)


def test_a_fifo_text_set_is_refused_without_blocking(tmp_path):
    from diagnostics.alignment_data import load_text_set

    outcome = _record("texts: a FIFO", run_call(load_text_set, str(fifo(tmp_path, "t.csv"))))
    assert_refused(outcome, contains="not a regular file")


# ---------------------------------------------------------------------------------------
# Numeric edge cases of alignment: refused in one line, or a defined result with a warning


def _degenerate(kind: str) -> np.ndarray:
    rng = np.random.default_rng(3)
    return {
        "all zero": lambda: np.zeros((40, 4)),
        "constant rows": lambda: np.ones((40, 4)) * 0.5,
        "values 1e300": lambda: rng.standard_normal((40, 4)) * 1e300,
        "subnormal values": lambda: rng.standard_normal((40, 4)) * 1e-310,
        "rank 1": lambda: np.outer(rng.standard_normal(40), rng.standard_normal(4)),
        "N x 1": lambda: rng.standard_normal((40, 1)),
    }[kind]()


@pytest.mark.parametrize("kind, phrase", [("all zero", "all zero"), ("constant rows", "same vector"),
                                          ("values 1e300", "overflow"), ("subnormal values", "underflow")])
def test_degenerate_embeddings_are_refused_in_one_line(kind, phrase, tmp_path):
    a = write(tmp_path, "a.npy", npy(_degenerate(kind)))
    outcome = _record(f"alignment: {kind}", run_cli(align_argv(tmp_path, a)))
    assert_refused(outcome, contains=phrase)


@pytest.mark.parametrize("kind, phrase", [("rank 1", "one direction"), ("N x 1", "single dimension")])
def test_degenerate_embeddings_give_a_result_with_a_warning(kind, phrase, tmp_path):
    a = write(tmp_path, "a.npy", npy(_degenerate(kind)))
    b = write(tmp_path, "b.npy", npy(_degenerate(kind) + 0.01 * np.random.default_rng(4).standard_normal((40, 1))))
    outcome = _record(f"alignment: {kind}", run_cli(align_argv(tmp_path, a, b)))
    assert outcome.code == 0, outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert any(line.startswith("warning: ") and phrase in line for line in outcome.lines), outcome.stderr
    assert outcome.seconds <= MAX_SECONDS and not outcome.peak_mb > MAX_RSS_MB
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any(phrase in w for w in report["results"][0]["warnings"])


def test_100000_rows_with_default_settings_are_refused_early_naming_the_limit(tmp_path):
    rng = np.random.default_rng(0)
    a = write(tmp_path, "a.npy", npy(rng.standard_normal((100_000, 8)).astype(np.float32)))
    b = write(tmp_path, "b.npy", npy(rng.standard_normal((100_000, 8)).astype(np.float32)))
    argv = ["alignment", "--emb-a", str(a), "--emb-b", str(b), "--out", str(tmp_path / "out")]
    outcome = _record("alignment: 100,000 x 8 with defaults", run_cli(argv))
    assert_refused(outcome, contains="at most 20,000 rows")


def test_very_wide_embeddings_are_refused_by_the_memory_budget(tmp_path):
    rng = np.random.default_rng(0)
    a = write(tmp_path, "a.npy", npy(rng.standard_normal((30, 200_000)).astype(np.float32)))
    outcome = _record("alignment: 30 x 200,000 (d x d maps)", run_cli(align_argv(tmp_path, a, a)))
    assert_refused(outcome, contains="ORTHOSCOPE_MAX_MEMORY")


# ---------------------------------------------------------------------------------------
# Latent directions on non-finite weights


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_directions_on_a_non_finite_matrix_are_refused_in_one_line(bad, tmp_path):
    from safetensors.torch import save_file

    w = torch.randn(40, 20)
    w[3, 4] = float(bad)
    path = tmp_path / "m.safetensors"
    save_file({"layers.0.mlp.down_proj.weight": w, "layers.0.mlp.up_proj.weight": torch.randn(20, 40)}, path)
    argv = ["directions", "--model", str(path), "--matrix", "layers.0.mlp.down_proj.weight", "--out",
            str(tmp_path / "out")]
    outcome = _record(f"directions: {bad} weight", run_cli(argv))
    assert_refused(outcome, contains="not finite")


# ---------------------------------------------------------------------------------------
# Triples: steering --triples FILE (parsed before the model loads)


def _triple(i: int, **over) -> dict:
    return {"prompt": f"Tell me about thing {i}.", "positive": f"A dog {i}.", "negative": f"A cat {i}.", **over}


def _jsonl(rows: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


TRIPLE_CASES = {
    "nested line": ("t.jsonl", _jsonl([_triple(i) for i in range(8)]) + NESTED + "\n", "nested deeper"),
    "5000-digit integer": ("t.jsonl", '{"prompt": ' + BIG_INT + ', "positive": "a", "negative": "b"}\n', "digits"),
    "prompt is a number": ("t.jsonl", _jsonl([_triple(i, prompt=5) for i in range(8)]), "must be text"),
    "positive is a list": ("t.jsonl", _jsonl([_triple(i, positive=["a"]) for i in range(8)]), "must be text"),
    "a line that is a list": ("t.jsonl", _jsonl([_triple(i) for i in range(8)]) + "[1]\n", "JSON object"),
    "too few triples": ("t.jsonl", _jsonl([_triple(i) for i in range(3)]), "at least 8"),
    "csv lacking columns": ("t.csv", "prompt,positive\na,b\n", "lacks negative"),
    "over 5 MB": ("t.jsonl", _jsonl([_triple(i, prompt="x" * 100_000) for i in range(60)]), "at most 5.0 MiB are read"),
    "not UTF-8": ("t.csv", b"prompt,positive,negative\n\xff,\xfe,\xfd\n", "not UTF-8"),
}


@pytest.mark.parametrize("case", list(TRIPLE_CASES))
def test_hostile_triples_are_refused_in_one_line(case, tmp_path):
    name, data, phrase = TRIPLE_CASES[case]
    path = write(tmp_path, name, data)
    argv = ["steering", "--concept", "mine", "--triples", str(path), "--tokens", "dog", "--out", str(tmp_path / "out")]
    outcome = _record(f"triples: {case}", run_cli(argv))
    assert_refused(outcome, contains=phrase)


# ---------------------------------------------------------------------------------------
# Traces: optimizers --trace FILE

HEADER = {"type": "header", "format": "orthoscope-trace", "version": 2, "run_id": "r", "run": {}, "matrices": []}
STEP = {"type": "step", "run_id": "r", "step": 1, "loss": 1.0, "time_ms": {"forward": 1.0}}


def _trace(*records: dict, raw: str = "") -> str:
    return "".join(json.dumps(r) + "\n" for r in records) + raw


TRACE_CASES = {
    "nested line": (_trace(HEADER, raw=NESTED + "\n"), "line 2: JSON nested deeper"),
    "5000-digit step": (_trace(HEADER, raw='{"type": "step", "run_id": "r", "step": ' + BIG_INT + "}\n"), "line 2"),
    "step is a string": (_trace(HEADER, {**STEP, "step": "two"}), "step should be int"),
    "step is a bool": (_trace(HEADER, {**STEP, "step": True}), "step should be int"),
    "loss is a dict": (_trace(HEADER, {**STEP, "loss": {"a": 1}}), "loss should be a number"),
    "time_ms is a list": (_trace(HEADER, {**STEP, "time_ms": [1]}), "time_ms should be dict"),
    "a time_ms value is text": (_trace(HEADER, {**STEP, "time_ms": {"forward": "fast"}}), "time_ms['forward']"),
    "run_id is an object": (_trace(HEADER, {**STEP, "run_id": {"a": 1}}), "run_id should be str"),
    "run is a list": (_trace({**HEADER, "run": [1]}), "run should be dict"),
    "run.lr is text": (_trace({**HEADER, "run": {"lr": "fast"}}), "run.lr should be a number"),
    "run.splits.val is text": (_trace({**HEADER, "run": {"splits": {"val": "x"}}}), "run.splits.val"),
    "matrices hold a number": (_trace({**HEADER, "matrices": [5]}), "matrices[0]"),
    "update metric is text": (_trace(HEADER, {"type": "update", "run_id": "r", "step": 1, "matrix": "w", "rms": "x",
                                              "rel_update": 1, "spectral_norm": 1, "sv_cv": 1, "effective_rank": 1,
                                              "stable_rank": 1, "condition": 1, "numerical_rank": 1, "neuron_cv": 1,
                                              "momentum_norm": 1}), "rms should be a number"),
    "alpha is a list": (_trace(HEADER, {"type": "alpha", "run_id": "r", "step": 0, "matrix": "w", "alpha": [2]}),
                        "alpha should be a number"),
    "eval val_loss is text": (_trace(HEADER, {"type": "eval", "run_id": "r", "step": 1, "val_loss": "low"}),
                              "val_loss should be a number"),
    "version 99": (_trace({**HEADER, "version": 99}), "trace version 99"),
    "truncated last line": (_trace(HEADER, raw='{"type": "step", "run_id": "r", "st'), "looks truncated"),
    "no header": (_trace(STEP), "no header line"),
}


@pytest.mark.parametrize("case", list(TRACE_CASES))
def test_hostile_traces_are_refused_naming_the_line_and_field(case, tmp_path):
    data, phrase = TRACE_CASES[case]
    path = write(tmp_path, "t.jsonl", data)
    outcome = _record(f"trace: {case}", run_cli(["optimizers", "--trace", str(path), "--out", str(tmp_path / "out")]))
    assert_refused(outcome, contains=phrase)
    assert not (tmp_path / "out" / "report.json").exists()


def test_a_trace_with_only_the_required_fields_makes_a_report(tmp_path):
    records = [HEADER, {"type": "step", "run_id": "r", "step": 2, "loss": 1.0, "time_ms": {}},
               {"type": "update", "run_id": "r", "step": 2, "matrix": "w",
                **{k: 0.5 for k in ("rms", "rel_update", "spectral_norm", "sv_cv", "effective_rank", "stable_rank",
                                    "condition", "numerical_rank", "neuron_cv", "momentum_norm")}},
               {"type": "alpha", "run_id": "r", "step": 0, "matrix": "w", "alpha": 2.0},
               {"type": "eval", "run_id": "r", "step": 2}, {"type": "summary", "run_id": "r"}]
    path = write(tmp_path, "t.jsonl", _trace(*records))
    outcome = _record("trace: only required fields", run_cli(["optimizers", "--trace", str(path), "--out",
                                                              str(tmp_path / "out")]))
    assert outcome.code == 0, outcome.stderr
    steps = [r for r in json.loads((tmp_path / "out" / "report.json").read_text())["results"][0]["records"]
             if r["type"] == "step"]
    assert steps[0]["train_s"] == 0.0  # derived from time_ms, as the recorder adds it up


def test_a_fifo_trace_is_refused(tmp_path):
    outcome = _record("trace: a FIFO", run_cli(["optimizers", "--trace", str(fifo(tmp_path, "t.jsonl")), "--out",
                                                str(tmp_path / "out")]))
    assert_refused(outcome)


# ---------------------------------------------------------------------------------------
# report.json, as the dashboard's "Open a report" page reads it


def _envelope(*results: dict) -> str:
    return json.dumps({"schema_version": 1, "tool": "orthoscope", "tool_version": "0", "created": "", "results":
                       list(results)})


def _result(diagnostic: str, **fields) -> dict:
    return {"schema_version": 1, "diagnostic": diagnostic, "model_name": "m", "fingerprint": "f" * 64, "params": {},
            "timings": {}, **fields}


def _overview(**over) -> dict:
    fields = {"kind": "encoder", "num_params": 10, "params_by_block": {}, "params_by_kind": {}, "tensors": [
        {"name": "w", "shape": "2x5", "dtype": "F32", "numel": 10, "frobenius_norm": 1.0, "status": "finite",
         "analysed": True, "reason": "", "kind": "other", "block": "other"}]}
    return _result("overview", **{**fields, **over})


def _spectra_rows(alpha) -> list[dict]:
    return [{"name": "a", "alpha": 2.5}, {"name": "b", "alpha": alpha}]


REPORT_CASES = {
    "tensors is a string": (_envelope(_overview(tensors="abc")), "'tensors' should be list"),
    "fingerprint is an integer": (_envelope({**_overview(), "fingerprint": 5}), "'fingerprint' should be string"),
    "model_name is a list": (_envelope({**_overview(), "model_name": ["a"]}), "'model_name'"),
    "num_params is a bool": (_envelope(_overview(num_params=True)), "'num_params' should be integer"),
    "alpha is 'x'": (_envelope(_result("spectra", layers=_spectra_rows("x"))), "column 'alpha'"),
    "a layer row is a string": (_envelope(_result("spectra", layers=[{"name": "a"}, "row"])), "mixes kinds"),
    "directions k = 10^9": (_envelope(_result("directions", k=10**9, singular_values=[1.0])), "'k' is 1000000000"),
    "directions k beyond its singular values": (_envelope(_result("directions", k=50, singular_values=[1.0] * 4)),
                                                "4 singular values"),
    "alignment heatmap of 100,000 rows": (_envelope(_result("alignment", heatmaps={"rows": list(range(100_000))})),
                                          "'heatmaps.rows' holds 100,000"),
    "steering with 10,000 sectors": (_envelope(_result("steering", self_steering=[], directions=[],
                                                       sectors=[{"sector": i} for i in range(10_000)])), "'sectors'"),
    "trace record step is text": (_envelope(_result("optimizer_traces", records=[
        HEADER, {**STEP, "step": "two"}])), "'records' item 1"),
    "spectra rows that cannot be drawn": (_envelope(_result("spectra", layers=[{"name": "a"}])), "drawing it fails"),
    "nested 100,000 deep": ('{"tool": "orthoscope", "results": ' + NESTED + "}", "nested deeper than 64"),
    "5000-digit integer": ('{"tool": "orthoscope", "schema_version": ' + BIG_INT + ', "results": []}', "digits"),
    "not a report": ("[1, 2, 3]", "not an Orthoscope report"),
    "unknown diagnostic": (_envelope(_result("nope")), "unknown diagnostic 'nope'"),
    "1,000 results": (_envelope(*[_overview()] * 1_000), "at most 64"),
    "not JSON": ("{'tool': ", "not a JSON report"),
}


@pytest.mark.parametrize("case", list(REPORT_CASES))
def test_hostile_reports_are_refused_when_loaded_naming_the_field(case):
    from reports import from_json

    text, phrase = REPORT_CASES[case]
    outcome = _record(f"report.json: {case}", run_call(from_json, text))
    assert_refused(outcome, contains=phrase)


def test_a_well_formed_minimal_report_still_loads():
    from reports import from_json

    outcome = _record("report.json: minimal overview (loads)", run_call(from_json, _envelope(_overview())))
    assert outcome.code == 0, outcome.stderr


def test_the_cases_stay_within_time_and_memory():
    """Runs last in this module (pytest keeps file order): every case so far within the bounds."""
    assert len(OUTCOMES) >= 35
    assert max(o.seconds for _, o in OUTCOMES) <= MAX_SECONDS
    assert max((o.peak_mb for _, o in OUTCOMES if o.peak_mb == o.peak_mb), default=0) <= MAX_RSS_MB
