"""Property-based tests (hypothesis) of the data readers and the numeric fits.

Readers: random bytes and random JSON structures through the JSON/JSONL/CSV readers (records, text
sets, triples, traces, report.json) and the array readers; nothing may escape but the project's
OrthoscopeError. Fits: random degenerate shapes and values (zeros, constants, rank 1, a single
column, duplicated rows, magnitudes from 1e-90 to 1e90) through Procrustes, alignment, the spectra
eigenvalues and the directions' eigenpairs; nothing escapes but OrthoscopeError, Procrustes maps are
orthogonal to 1e-6, and eigenvalues are non-negative.
"""

from __future__ import annotations

import io
import json
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diagnostics import alignment, alignment_data, directions, records, spectra, steering_data, trace_recorder
from models import OrthoscopeError
from reports import from_json

# No example database: the tests leave nothing in the working tree.
SETTINGS = settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# JSON values: scalars (with huge integers and odd strings) nested a few levels.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**50), max_value=10**50),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=10)


def refused_or_returned(func, *args, **kwargs):
    """Call ``func``; an OrthoscopeError is a fine answer, any other exception fails the property."""
    try:
        return func(*args, **kwargs)
    except OrthoscopeError:
        return None


# ---------------------------------------------------------------------------------------
# JSON / JSONL / CSV readers


@SETTINGS
@given(data=st.binary(max_size=300), name=st.sampled_from(["t.csv", "t.jsonl", "t.txt"]))
def test_records_of_random_bytes(data, name):
    rows = refused_or_returned(records.read_records, data, name)
    assert rows is None or all(isinstance(r, dict) for r in rows)


@SETTINGS
@given(lines=st.lists(json_values, min_size=1, max_size=6), deep=st.integers(0, 3))
def test_records_of_random_json_lines(lines, deep):
    text = "\n".join(json.dumps(v) for v in lines)
    if deep:  # one line nested far beyond the bound, or an integer of thousands of digits
        text += "\n" + ("[" * 10_000 + "]" * 10_000 if deep == 1 else '{"n": ' + "9" * 5_000 + "}")
    rows = refused_or_returned(records.read_records, text.encode(), "t.jsonl")
    if rows is not None:
        assert rows == [v for v in lines if isinstance(v, dict)] or rows == lines


@SETTINGS
@given(cells=st.lists(st.lists(st.text(max_size=12), min_size=1, max_size=4), min_size=1, max_size=8))
def test_text_sets_and_triples_of_random_tables(cells):
    buf = io.StringIO()
    import csv

    csv.writer(buf).writerows(cells)
    data = buf.getvalue().encode()
    for name in ("t.csv", "t.jsonl"):
        refused_or_returned(alignment_data.read_text_set, data, name)
        refused_or_returned(steering_data.parse_triples, data, name)
    refused_or_returned(alignment_data.read_labels, data, "l.csv", len(cells))


@SETTINGS
@given(rows=st.lists(st.dictionaries(st.sampled_from(["text", "label", "prompt", "positive", "negative", "x"]),
                                     json_values, max_size=5), min_size=1, max_size=6))
def test_text_sets_and_triples_of_random_json_rows(rows):
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    texts = refused_or_returned(alignment_data.read_text_set, data, "t.jsonl")
    if texts is not None:
        assert all(isinstance(t, str) and t for t in texts.texts)
    triples = refused_or_returned(steering_data.parse_triples, data, "t.jsonl")
    if triples is not None:
        assert all(isinstance(t[f], str) for t in triples for f in steering_data.FIELDS)


HEADER = {"type": "header", "format": "orthoscope-trace", "version": 2, "run_id": "r", "run": {"lr": 0.1, "seed": 0},
          "matrices": [{"name": "w", "shape": [2, 2]}], "every": 1, "alpha_every": 1}
VALID_TRACE = [
    HEADER,
    {"type": "alpha", "run_id": "r", "step": 0, "matrix": "w", "alpha": 2.0, "n_evals": 2, "n_tail": 2, "status": "ok"},
    {"type": "step", "run_id": "r", "step": 1, "loss": 1.0, "train_s": 0.1, "time_ms": {"forward": 1.0}},
    {"type": "update", "run_id": "r", "step": 1, "matrix": "w", "momentum_warning": False,
     **{k: 0.5 for k in trace_recorder.UPDATE_FIELDS}},
    {"type": "eval", "run_id": "r", "step": 1, "test_loss": 1.0, "test_accuracy": 0.5},
]


@SETTINGS
@given(data=st.binary(max_size=300))
def test_traces_of_random_bytes(data):
    refused_or_returned(trace_recorder.parse_trace_bytes, data, "t.jsonl")


@SETTINGS
@given(index=st.integers(0, len(VALID_TRACE) - 1), key=st.sampled_from(
    ["type", "run_id", "step", "loss", "time_ms", "matrix", "alpha", "rms", "numerical_rank", "run", "matrices",
     "version", "format", "test_loss", "train_s", "momentum_warning", "status", "n_evals"]), value=json_values,
    drop=st.booleans())
def test_traces_with_a_field_replaced_are_refused_or_tabled(index, key, value, drop):
    """A trace with one field replaced by any JSON value (or dropped) is refused naming the line, or
    read into a result whose tables build: never a KeyError or TypeError."""
    from diagnostics import optimizer_traces

    trace = [dict(r) for r in VALID_TRACE]
    if drop:
        trace[index].pop(key, None)
    else:
        trace[index][key] = value
    text = "".join(json.dumps(r) + "\n" for r in trace)
    parsed = refused_or_returned(trace_recorder.parse_trace, text, "t.jsonl")
    if parsed is not None:
        result = optimizer_traces.from_trace(parsed, "t.jsonl")
        result.tables()
        json.dumps(result.to_dict(), allow_nan=False)


def test_a_loop_trace_with_val_loss_and_no_summary_is_tabled():
    from diagnostics import optimizer_traces

    trace = VALID_TRACE[:-1] + [{"type": "eval", "run_id": "r", "step": 1, "val_loss": 0.9}]
    parsed = trace_recorder.parse_trace("".join(json.dumps(r) + "\n" for r in trace), "t.jsonl")
    tables = optimizer_traces.from_trace(parsed, "t.jsonl").tables()
    assert not tables["runs"]["diverged"].any()


# ---------------------------------------------------------------------------------------
# report.json


def _overview_report(**over) -> dict:
    result = {"schema_version": 1, "diagnostic": "overview", "model_name": "m", "fingerprint": "f", "params": {},
              "timings": {}, "kind": "encoder", "num_params": 10, "params_by_block": {}, "params_by_kind": {},
              "tensors": [{"name": "w", "shape": "2x5", "dtype": "F32", "numel": 10, "frobenius_norm": 1.0,
                           "status": "finite", "analysed": True, "reason": "", "kind": "other", "block": "other"}]}
    result.update(over)
    return {"schema_version": 1, "tool": "orthoscope", "tool_version": "0", "created": "", "results": [result]}


@SETTINGS
@given(doc=json_values)
def test_reports_of_random_json(doc):
    refused_or_returned(from_json, json.dumps(doc))


@SETTINGS
@given(data=st.binary(max_size=200))
def test_reports_of_random_bytes(data):
    refused_or_returned(from_json, data)


@SETTINGS
@given(key=st.sampled_from(["model_name", "fingerprint", "params", "timings", "kind", "num_params", "tensors",
                            "params_by_block", "params_by_kind", "diagnostic", "schema_version"]),
       value=json_values, row_key=st.sampled_from(["name", "numel", "frobenius_norm", "analysed", "status", "block"]),
       row_value=json_values, in_row=st.booleans())
def test_reports_with_a_field_replaced_are_refused_or_drawn(key, value, row_key, row_value, in_row):
    doc = _overview_report()
    if in_row:
        doc["results"][0]["tensors"][0][row_key] = row_value
    else:
        doc["results"][0][key] = value
    results = refused_or_returned(from_json, json.dumps(doc))  # drawn once inside when it loads
    assert results is None or len(results) == 1


# ---------------------------------------------------------------------------------------
# Arrays


@SETTINGS
@given(data=st.binary(max_size=400), name=st.sampled_from(["a.npy", "a.npz", "a.csv", "a.safetensors"]))
def test_arrays_of_random_bytes(data, name):
    arr = refused_or_returned(alignment_data.read_array, data, name)
    assert arr is None or (arr.ndim == 2 and np.isfinite(arr).all())


@SETTINGS
@given(prefix=st.sampled_from([b"\x93NUMPY\x01\x00", b"\x93NUMPY\x02\x00", b"\x93NUMPY\x03\x00", b"PK\x03\x04"]),
       rest=st.binary(max_size=300))
def test_arrays_with_a_valid_magic_and_random_rest(prefix, rest):
    refused_or_returned(alignment_data.read_array, prefix + rest, "a.npy")


@SETTINGS
@given(shape=st.lists(st.integers(0, 10**12), max_size=3), descr=st.sampled_from(
    ["<f8", "<f4", "<f2", "|b1", "<i8", "|u1", "<c16", "|V2", "|O", "<U3", "<M8[s]", "|S4"]),
    payload=st.integers(0, 512))
def test_npy_headers_of_random_shapes_and_dtypes(shape, descr, payload):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    arr = refused_or_returned(alignment_data.read_array, buf.getvalue() + bytes(payload), "a.npy")
    assert arr is None or arr.ndim == 2


@SETTINGS
@given(header=json_values, body=st.binary(max_size=64))
def test_safetensors_of_random_headers(header, body):
    text = json.dumps(header).encode()
    data = len(text).to_bytes(8, "little") + text + body
    refused_or_returned(alignment_data.read_array, data, "a.safetensors")


# ---------------------------------------------------------------------------------------
# Numeric fits on degenerate shapes


@st.composite
def degenerate_matrices(draw, min_rows=2, max_rows=12, max_cols=6):
    n = draw(st.integers(min_rows, max_rows))
    d = draw(st.integers(1, max_cols))
    kind = draw(st.sampled_from(["normal", "zeros", "constant", "rank1", "duplicated", "one-hot", "tiny-column"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == "normal":
        Z = rng.standard_normal((n, d))
    elif kind == "zeros":
        Z = np.zeros((n, d))
    elif kind == "constant":
        Z = np.tile(rng.standard_normal(d), (n, 1))
    elif kind == "rank1":
        Z = np.outer(rng.standard_normal(n), rng.standard_normal(d))
    elif kind == "duplicated":
        Z = np.repeat(rng.standard_normal((max(1, n // 2), d)), 2, axis=0)[:n]
        Z = np.vstack([Z, np.zeros((n - len(Z), d))])
    elif kind == "one-hot":
        Z = np.eye(n, d)
    else:
        Z = rng.standard_normal((n, d))
        Z[:, 0] *= 1e-12
    return Z * 10.0 ** draw(st.integers(-90, 90))


@SETTINGS
@given(X=degenerate_matrices(), seed=st.integers(0, 2**16), proper=st.booleans())
def test_procrustes_maps_are_orthogonal_on_degenerate_anchors(X, seed, proper):
    rng = np.random.default_rng(seed)
    Y = X @ np.linalg.qr(rng.standard_normal((X.shape[1],) * 2))[0] + rng.standard_normal(X.shape) * float(
        np.abs(X).max() or 1.0) * 0.1
    fitter = refused_or_returned(alignment.Fitter, X, Y, proper=proper)
    if fitter is None:
        return
    for centred in (True, False):
        W = fitter.procrustes(centred).W
        assert np.isfinite(W).all()
        assert alignment.orth_error(W) <= 1e-6
        if proper:
            assert np.linalg.det(W) > 0


@FEW
@given(X=degenerate_matrices(min_rows=18, max_rows=30, max_cols=4), Y=degenerate_matrices(min_rows=30, max_rows=30,
                                                                                          max_cols=4),
       normalise=st.booleans(), centre=st.booleans(), width=st.sampled_from(["pca", "pad"]))
def test_alignment_on_degenerate_embeddings_refuses_or_gives_orthogonal_maps(X, Y, normalise, centre, width):
    n = X.shape[0]
    inputs = alignment.AlignmentInputs(X=X, Y=Y[:n])
    params = {"maps": ["procrustes", "lstsq"], "draws": 1, "curves": False, "n_permutations": 3,
              "normalise": normalise, "centre": centre, "width": width}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = refused_or_returned(alignment.run, inputs, params)
    if result is not None:
        orth = [g["orth_error"] for g in result.geometry if g["map"] == "procrustes"]
        assert orth and all(v is not None and v <= 1e-6 for v in orth)


@SETTINGS
@given(W=degenerate_matrices(min_rows=1, max_rows=16, max_cols=16), nan=st.booleans())
def test_spectra_eigenvalues_are_non_negative_and_non_finite_matrices_are_skipped(W, nan):
    if nan:
        W = W.copy()
        W.flat[0] = math.nan
    try:
        row, esd = spectra.analyse_matrix(torch.from_numpy(W), spectra.SpectraParams(min_evals=2), name="w")
    except spectra.LayerSkipped as exc:  # the skip with its reason, as the run records it
        assert not nan or "NaN" in exc.reason
        return
    assert not nan
    assert (np.asarray(esd["evals"], dtype=float) >= 0).all()
    lam, _ = spectra.eigenvalues(torch.from_numpy(W))
    assert (lam >= 0).all()


@SETTINGS
@given(W=degenerate_matrices(min_rows=1, max_rows=16, max_cols=16), normalize=st.booleans())
def test_directions_eigenvalues_are_non_negative(W, normalize):
    A = torch.from_numpy(W)
    values, vectors = directions.sefa(A, k=min(W.shape), normalize=normalize)
    assert torch.isfinite(values).all() and (values >= 0).all()
    assert vectors.shape == (W.shape[1], values.shape[0])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_directions_refuse_non_finite_matrices_in_one_line(bad):
    from models import WeightMatrix

    w = torch.randn(6, 4)
    w[1, 2] = bad
    mat = WeightMatrix(name="w", tensor=w, kind="mlp-down", block="0", layer_type="linear")
    with pytest.raises(OrthoscopeError, match="not finite"):
        directions.check_finite([mat])
