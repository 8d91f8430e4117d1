"""The trace recorder's update metrics against direct SVD, its hooks in a plain loop, and the JSONL format."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from diagnostics import trace_recorder as tr
from diagnostics.optimizers import Muon
from models.errors import OrthoscopeError


def planted(s, rows, cols, seed=0) -> torch.Tensor:
    """U diag(s) V^T with random orthonormal U, V: a matrix with known singular values."""
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((rows, len(s))))[0]
    V = np.linalg.qr(rng.standard_normal((cols, len(s))))[0]
    return torch.tensor(U @ np.diag(s) @ V.T)


@pytest.mark.parametrize("rows, cols", [(40, 30), (30, 40)])
def test_update_metrics_follow_their_formulas_on_known_singular_values(rows, cols):
    s = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 1e-5])  # the last is below RANK_RTOL * 5: numerically zero
    dW = planted(s, rows, cols)
    W = torch.ones(rows, cols)
    m = tr.update_metrics(dW, W)
    kept = s[:5]
    p = kept / kept.sum()
    assert m["numerical_rank"] == 5
    assert m["sv_cv"] == pytest.approx(kept.std() / kept.mean(), rel=1e-9)
    assert m["spectral_norm"] == pytest.approx(5.0, rel=1e-12)
    assert m["effective_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)
    assert m["stable_rank"] == pytest.approx((kept ** 2).sum() / 25.0, rel=1e-9)
    assert m["condition"] == pytest.approx(10.0, rel=1e-6)
    fro = math.sqrt((s ** 2).sum())
    assert m["rms"] == pytest.approx(fro / math.sqrt(rows * cols), rel=1e-9)
    assert m["rel_update"] == pytest.approx(fro / math.sqrt(rows * cols), rel=1e-9)  # ||W||_F = sqrt(rows cols)
    rows_norm = dW.norm(dim=1).numpy()
    assert m["neuron_cv"] == pytest.approx(rows_norm.std() / rows_norm.mean(), rel=1e-9)


def test_a_semi_orthogonal_update_has_zero_singular_value_spread_and_full_effective_rank():
    m = tr.update_metrics(planted(np.full(20, 0.3), 20, 50), torch.eye(20, 50))
    assert m["sv_cv"] < 1e-9
    assert m["effective_rank"] == pytest.approx(20, rel=1e-9)
    assert m["stable_rank"] == pytest.approx(20, rel=1e-9)


def test_singular_values_match_svdvals():
    M = torch.randn(70, 33, dtype=torch.float64)
    assert torch.allclose(tr.singular_values(M), torch.linalg.svdvals(M), rtol=1e-9, atol=1e-12)


def test_spectral_norm_is_the_exact_top_singular_value_even_with_a_close_second():
    # A power iteration converges like (s2 / s1)^(2k); the eigenvalues of the Gram matrix do not care.
    M = planted(np.array([4.0, 3.999, 1.0]), 30, 20)
    assert tr.update_metrics(M, torch.ones(30, 20))["spectral_norm"] == pytest.approx(4.0, rel=1e-12)
    assert tr.update_metrics(torch.zeros(3, 4), torch.ones(3, 4))["spectral_norm"] == 0.0


def test_weight_alpha_uses_the_spectra_fit():
    from diagnostics.power_law import fit_power_law
    from diagnostics.spectra import eigenvalues

    W = torch.randn(120, 80)
    out = tr.weight_alpha(W)
    evals, _ = eigenvalues(W)
    assert out["alpha"] == fit_power_law(evals).alpha and out["n_evals"] == 80


class Loop:
    """A plain training loop of the kind a user writes, with the recorder attached."""

    def __init__(self, optimizer_factory, steps=12, every=3, alpha_every=4, grad_scale=1.0):
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
        self.opt = optimizer_factory(self.model)
        self.rec = tr.TraceRecorder(self.model, self.opt, run={"optimizer": "x"}, every=every, alpha_every=alpha_every)
        self.weights = []
        x, y = torch.randn(32, 8), torch.randn(32, 4)
        for _ in range(steps):
            with self.rec.phase("forward"):
                loss = grad_scale * ((self.model(x) - y) ** 2).mean()
            with self.rec.phase("backward"):
                self.opt.zero_grad()
                loss.backward()
            self.weights.append(self.model[0].weight.detach().clone())
            self.opt.step()
            self.rec.log_loss(loss)
        self.after = self.model[0].weight.detach().clone()
        self.rec.close()


def test_recorder_measures_the_applied_update_at_its_interval():
    loop = Loop(lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    kinds = [r["type"] for r in loop.rec.records]
    assert kinds[0] == "header"
    steps = [r["step"] for r in loop.rec.records if r["type"] == "step"]
    assert steps == [3, 6, 9, 12]
    alphas = sorted({r["step"] for r in loop.rec.records if r["type"] == "alpha"})
    assert alphas == [0, 4, 8, 12]
    updates = {(r["step"], r["matrix"]): r for r in loop.rec.records if r["type"] == "update"}
    assert set(m for _, m in updates) == {"0.weight", "2.weight"}
    # Step 12's update is the last change of the first weight.
    dW = (loop.after - loop.weights[11]).double()
    expected = tr.update_metrics(dW, loop.weights[11])
    got = updates[(12, "0.weight")]
    for key in ("rms", "rel_update", "sv_cv", "effective_rank", "stable_rank", "neuron_cv", "spectral_norm"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6)
    assert got["spectral_norm"] == pytest.approx(float(torch.linalg.svdvals(dW)[0]), rel=1e-9)
    step = next(r for r in loop.rec.records if r["type"] == "step")
    assert set(step["time_ms"]) == {"forward", "backward", "optimizer", "recorder"}
    assert step["train_s"] > 0


def test_recorder_hooks_are_removed_on_close():
    loop = Loop(lambda m: torch.optim.SGD(m.parameters(), lr=0.1), steps=3)
    n = len(loop.rec.records)
    loop.opt.step()
    assert len(loop.rec.records) == n and loop.rec.step == 3


def test_momentum_near_the_newton_schulz_epsilon_is_flagged():
    def muon_and_sgd(model):
        from diagnostics.optimizers import RoutedOptimizer

        return RoutedOptimizer([Muon([model[0].weight, model[2].weight], lr=0.01),
                                torch.optim.SGD([model[0].bias, model[2].bias], lr=0.01)])

    tiny = Loop(muon_and_sgd, steps=3, every=1, grad_scale=1e-12)
    normal = Loop(muon_and_sgd, steps=3, every=1)
    flags = [r["momentum_warning"] for r in tiny.rec.records if r["type"] == "update"]
    assert flags and all(flags)
    assert not any(r["momentum_warning"] for r in normal.rec.records if r["type"] == "update")
    norms = [r["momentum_norm"] for r in normal.rec.records if r["type"] == "update"]
    assert all(n > 0 for n in norms)
    # SGD's momentum is not normalised, so the Newton-Schulz epsilon says nothing about it.
    sgd = Loop(lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9), steps=3, every=1, grad_scale=1e-12)
    assert not any(r["momentum_warning"] for r in sgd.rec.records if r["type"] == "update")


def test_bad_intervals_and_names_are_refused():
    model = nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(OrthoscopeError, match="intervals must be >= 1"):
        tr.TraceRecorder(model, opt, every=0)
    with pytest.raises(OrthoscopeError, match="no parameter named nope"):
        tr.TraceRecorder(model, opt, matrices=["nope"])


def test_jsonl_round_trip(tmp_path):
    loop = Loop(lambda m: torch.optim.SGD(m.parameters(), lr=0.1), steps=6)
    path = tmp_path / "t.jsonl"
    tr.write_trace(loop.rec.records, path)
    back = tr.read_trace(path)
    assert len(back) == len(loop.rec.records)
    assert back == [json.loads(tr.dumps(r)) for r in loop.rec.records]
    assert any(r.get("momentum_norm", 0) is None for r in back)  # plain SGD keeps no momentum: NaN -> null


def _lines(**overrides):
    header = {"type": "header", "format": tr.TRACE_FORMAT, "version": tr.TRACE_VERSION, "run_id": "r",
              "run": {}, "matrices": [], **overrides}
    step = {"type": "step", "run_id": "r", "step": 1, "loss": 1.0, "time_ms": {}}
    return [json.dumps(header), json.dumps(step)]


@pytest.mark.parametrize("lines, message", [
    (_lines()[:1] + ['{"type": "step", "run_id": "r", "step": 1, "lo'], "line 2: not valid JSON"),
    (_lines() + ["[1, 2]"], "line 3: expected a JSON object"),
    (_lines() + ['{"type": "weird", "run_id": "r"}'], "line 3: unknown record type 'weird'"),
    (_lines() + ['{"type": "update", "run_id": "r", "step": 2}'], "line 3: a 'update' record lacks matrix, rms"),
    (_lines()[1:], "line 1: run 'r' has no header line before it"),
    (_lines(version=99), "line 1: trace version 99"),
    (_lines(format="other"), "line 1: format is 'other'"),
    ([""], "holds no records"),
])
def test_malformed_traces_name_the_line(lines, message):
    with pytest.raises(OrthoscopeError, match=message.replace("(", r"\(").replace("[", r"\[")):
        tr.parse_trace("\n".join(lines) + "\n", "t.jsonl")


def test_a_version_1_trace_is_read_with_orth_error_renamed_sv_cv(tmp_path):
    loop = Loop(lambda m: torch.optim.SGD(m.parameters(), lr=0.1), steps=6)
    old = []
    for r in loop.rec.records:
        r = json.loads(tr.dumps(r))
        if r["type"] == "header":
            r["version"] = 1
        if r["type"] == "update":
            r["orth_error"] = r.pop("sv_cv")
        old.append(r)
    text = "\n".join(json.dumps(r) for r in old) + "\n"
    back = tr.parse_trace(text, "v1.jsonl")
    updates = [r for r in back if r["type"] == "update"]
    assert updates and all("sv_cv" in r and "orth_error" not in r for r in updates)
    assert [r["sv_cv"] for r in updates] == [r["orth_error"] for r in old if r["type"] == "update"]
    assert tr.upgrade_records(old) == back  # report.json's records take the same path
    broken = text.replace('"orth_error"', '"other"')
    with pytest.raises(OrthoscopeError, match="lacks sv_cv"):
        tr.parse_trace(broken, "v1.jsonl")


def test_truncated_trace_says_so():
    text = "\n".join(_lines()) + '\n{"type": "step", "run_id": "r", "st'
    with pytest.raises(OrthoscopeError, match="t.jsonl, line 3: .*looks truncated"):
        tr.parse_trace(text, "t.jsonl")


def test_non_utf8_trace_is_refused(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(OrthoscopeError, match="not UTF-8"):
        tr.read_trace(path)


@pytest.mark.parametrize("line, message", [
    ('{"type": ["step"], "run_id": "r"}', 'line 3: expected a JSON object with a "type" string'),
    ('{"type": "step", "run_id": "r", "step": "two", "loss": 1.0, "time_ms": {}}', "line 3: in a 'step' record, step should be int"),
    ('{"type": "step", "run_id": "r", "step": 2, "loss": 1.0, "time_ms": [1]}', "time_ms should be dict"),
])
def test_fields_of_the_wrong_type_name_the_line(line, message):
    with pytest.raises(OrthoscopeError, match=message.replace("(", r"\(").replace("[", r"\[")):
        tr.parse_trace("\n".join(_lines() + [line]) + "\n", "t.jsonl")


def test_dumps_writes_nan_as_null_everywhere_and_numpy_values_as_numbers():
    record = {"type": "eval", "values": [1.0, float("nan")], "acc": np.float32(0.5), "inf": float("inf")}
    assert json.loads(tr.dumps(record)) == {"type": "eval", "values": [1.0, None], "acc": 0.5, "inf": None}


def test_a_trace_with_only_the_required_fields_gets_train_s_from_its_times():
    lines = _lines() + [json.dumps({"type": "step", "run_id": "r", "step": 3, "loss": 0.5,
                                    "time_ms": {"forward": 10.0, "backward": 20.0, "recorder": 99.0}})]
    steps = [r for r in tr.parse_trace("\n".join(lines) + "\n", "t.jsonl") if r["type"] == "step"]
    # Step 1 recorded no times; steps 2 and 3 took 30 ms each (the recorder's own time excluded).
    assert [r["train_s"] for r in steps] == [0.0, pytest.approx(0.06)]


@pytest.mark.parametrize("line, message", [
    ('{"type": "step", "run_id": "r", "step": true, "loss": 1.0, "time_ms": {}}', "step should be int"),
    ('{"type": "step", "run_id": "r", "step": 2, "loss": {"a": 1}, "time_ms": {}}', "loss should be a number or null"),
    ('{"type": "step", "run_id": "r", "step": 2, "loss": 1, "time_ms": {"forward": "x"}}', "time_ms['forward']"),
    ('{"type": "step", "run_id": {"a": 1}, "step": 2, "loss": 1, "time_ms": {}}', "run_id should be str"),
    ('{"type": "alpha", "run_id": "r", "step": 0, "matrix": "w", "alpha": "2"}', "alpha should be a number"),
    ('{"type": "eval", "run_id": "r", "step": 2, "test_accuracy": [1]}', "test_accuracy should be a number"),
    ('{"type": "step", "run_id": "r", "step": 2, "loss": 1, "time_ms": {}, "n": ' + "9" * 5000 + "}", "5000 digits"),
    ("[" * 100_000 + "]" * 100_000, "line 3: JSON nested deeper"),
])
def test_wrong_types_and_hostile_lines_are_refused_naming_the_line(line, message):
    with pytest.raises(OrthoscopeError, match=message.replace("(", r"\(").replace("[", r"\[")):
        tr.parse_trace("\n".join(_lines() + [line]) + "\n", "t.jsonl")


def test_header_fields_that_tables_compute_with_are_typed():
    for run, message in [({"lr": "fast"}, "run.lr should be a number"), ({"splits": {"val": "x"}}, "run.splits.val"),
                         ({"routes": [5]}, "run.routes[0]")]:
        with pytest.raises(OrthoscopeError, match=message.replace("[", r"\[")):
            tr.parse_trace("\n".join(_lines(run=run)) + "\n", "t.jsonl")
    with pytest.raises(OrthoscopeError, match=r"matrices\[0\]"):
        tr.parse_trace("\n".join(_lines(matrices=[{"name": "w", "shape": ["2"]}])) + "\n", "t.jsonl")
    assert tr.record_problems({"type": "step", "run_id": "r", "step": 1, "loss": None, "time_ms": {}}) == []
    assert tr.record_problems({"type": "step", "run_id": "r"}) == ["a 'step' record lacks step, loss, time_ms"]


def test_a_fifo_trace_is_refused_before_it_is_opened(tmp_path):
    import os

    os.mkfifo(tmp_path / "t.jsonl")
    with pytest.raises(OrthoscopeError, match="not a regular file"):
        tr.read_trace(tmp_path / "t.jsonl")
