"""Optimizer-trace runs on the built-in benchmarks: planning, fairness, tables, reload, bad parameters."""

import json
import math

import pytest
import torch

import reports
from charts import optimizer_traces as charts
from diagnostics import optimizer_traces as ot
from diagnostics import trace_recorder as tr
from models.errors import OrthoscopeError

SMALL = {"optimizers": ["adamw", "muon"], "seeds": 2, "steps": 20, "every": 5, "alpha_every": 10, "eval_every": 10}


@pytest.fixture(scope="module")
def result():
    return ot.run(SMALL)


def test_runs_table_has_a_row_per_run_with_final_and_best_metrics(result):
    runs = result.runs()
    assert list(runs["optimizer"]) == ["adamw", "adamw", "muon", "muon"]
    assert list(runs["seed"]) == [0, 1, 0, 1]
    assert list(runs["lr"]) == [1e-3, 1e-3, 0.02, 0.02]
    assert (runs["steps_done"] == 20).all() and not runs["diverged"].any()
    assert (runs["best_test_accuracy"] >= runs["final_test_accuracy"]).all()
    assert (runs["ms_per_step"] > 0).all()
    evals = result.table("eval")
    last = evals[evals["step"] == 20].set_index("run_id")["test_accuracy"]
    assert runs.set_index("run_id")["final_test_accuracy"].equals(last.rename("final_test_accuracy"))


def test_every_run_of_a_seed_starts_from_the_same_weights(result):
    # The first step's loss is computed before any update, so it equals across optimizers.
    torch.manual_seed(0)
    bench = ot.benchmark("digits")
    first = {}
    for optimizer in ("adamw", "muon"):
        records = []
        ot.train_run(bench, {"run_id": optimizer, "optimizer": optimizer, "label": optimizer, "lr": 0.01,
                             "lr_scale": 1.0, "seed": 3}, {**ot.DEFAULTS, "steps": 1, "every": 1}, records.append)
        first[optimizer] = next(r["loss"] for r in records if r["type"] == "step")
    assert first["adamw"] == first["muon"]


def test_records_cover_the_tracked_matrices_at_the_intervals(result):
    updates = result.table("update")
    muon = updates[updates["optimizer"] == "muon"]
    assert set(muon["matrix"]) == {"0.weight", "2.weight"}  # the head stays with AdamW
    assert sorted(set(muon["step"])) == [5, 10, 15, 20]
    adamw = updates[updates["optimizer"] == "adamw"]
    assert set(adamw["matrix"]) == {"0.weight", "2.weight"}  # the same matrices, for a fair comparison
    assert sorted(set(result.table("alpha")["step"])) == [0, 10, 20]
    # Muon's updates are nearly orthogonal, AdamW's are not.
    assert muon["orth_error"].median() < 0.5 < adamw["orth_error"].median()


def test_alphas_of_the_trained_weights_are_fitted_whatever_the_interval():
    records = []
    ot.train_run(ot.benchmark("digits"), {"run_id": "a", "optimizer": "adamw", "label": "AdamW", "lr": 1e-3,
                                          "lr_scale": 1.0, "seed": 0},
                 {**ot.DEFAULTS, "steps": 7, "every": 5, "alpha_every": 5}, records.append)
    assert sorted({r["step"] for r in records if r["type"] == "alpha"}) == [0, 5, 7]


def test_scope_hidden_only_keeps_the_input_layer_on_adamw():
    records = []
    ot.train_run(ot.benchmark("digits"), {"run_id": "m", "optimizer": "muon", "label": "Muon", "lr": 0.02,
                                          "lr_scale": 1.0, "seed": 0},
                 {**ot.DEFAULTS, "steps": 2, "every": 1, "scope": "hidden_only"}, records.append)
    routes = {r["name"]: r["optimizer"] for r in records[0]["run"]["routes"]}
    assert routes["0.weight"] == "adamw" and routes["2.weight"] == "muon" and routes["4.weight"] == "adamw"
    assert {r["matrix"] for r in records if r["type"] == "update"} == {"2.weight"}


def test_character_transformer_routes_attention_and_mlp_matrices_to_the_matrix_optimizer():
    bench = ot.benchmark("chars")
    records = []
    ot.train_run(bench, {"run_id": "c", "optimizer": "muon", "label": "Muon", "lr": 0.02, "lr_scale": 1.0, "seed": 0},
                 {**ot.DEFAULTS, "steps": 2, "every": 1, "eval_every": 2}, records.append)
    routes = {r["name"]: (r["optimizer"], r["reason"]) for r in records[0]["run"]["routes"]}
    for name in ("blocks.0.q.weight", "blocks.0.k.weight", "blocks.0.v.weight", "blocks.0.o.weight",
                 "blocks.1.up.weight", "blocks.1.down.weight"):
        assert routes[name][0] == "muon"
    assert routes["tok.weight"] == ("adamw", "embedding (rows are looked up, not multiplied)")
    assert routes["head.weight"] == ("adamw", "output head")
    assert routes["blocks.0.ln1.weight"][0] == "adamw"
    evals = [r for r in records if r["type"] == "eval"]
    assert evals and 0 <= evals[0]["test_accuracy"] <= 1 and evals[0]["test_loss"] > 0


def test_lr_decay_reaches_zero_at_the_end():
    assert ot._schedule("linear", 100)(100) == 0.0
    assert ot._schedule("cosine", 100)(50) == pytest.approx(0.5)
    assert ot._schedule("none", 100)(100) == 1.0


def test_plan_sweeps_learning_rates_per_optimizer():
    params = ot.check_params({"optimizers": ["muon", "sgd"], "lr_scales": [0.5, 2], "lrs": {"muon": 0.04}, "seeds": 1})
    plan = ot.plan(params)
    assert [(r["optimizer"], r["lr"]) for r in plan] == [("muon", 0.02), ("muon", 0.08), ("sgd", 0.025), ("sgd", 0.1)]


@pytest.mark.parametrize("params, message", [
    ({"bench": "imagenet"}, "unknown benchmark 'imagenet'"),
    ({"optimizers": []}, "at least one optimizer"),
    ({"optimizers": ["adam"]}, "unknown optimizer adam; choose from"),
    ({"lr_scales": [0.0]}, "scales must be positive"),
    ({"lrs": {"muon": -1.0}}, "learning rates must be positive"),
    ({"steps": 0}, "steps must be a whole number"),
    ({"seeds": 2.5}, "seeds must be a whole number"),
    ({"scope": "everything"}, "unknown scope"),
    ({"decay": "step"}, "unknown lr decay"),
    ({"seeds": 20, "lr_scales": [1, 2, 3]}, "runs requested; at most"),
])
def test_bad_parameters_are_explained(params, message):
    with pytest.raises(OrthoscopeError, match=message):
        ot.check_params(params)


def test_diverging_run_stops_and_is_marked():
    result = ot.run({"optimizers": ["sgd"], "lrs": {"sgd": 1e6}, "seeds": 1, "steps": 50, "every": 5})
    row = result.runs().iloc[0]
    assert bool(row["diverged"]) and row["steps_done"] < 50


def test_a_loaded_trace_draws_the_same_charts(result, tmp_path):
    path = tmp_path / "traces.jsonl"
    tr.write_trace(result.records, path)
    loaded = ot.from_trace(tr.read_trace(path), "traces.jsonl")
    for a, b in zip(charts.figures(result), charts.figures(loaded)):
        assert json.loads(a.to_json())["data"] == json.loads(b.to_json())["data"]


def test_report_round_trip_and_csv_tables(result):
    (back,) = reports.from_json(reports.to_json([result]))
    assert back.runs().equals(result.runs())
    tables = reports.csv_tables([result])
    assert {"runs.csv", "steps.csv", "updates.csv", "alphas.csv", "evals.csv", "routes.csv"} <= set(tables)
    assert len(tables["runs.csv"].splitlines()) == 5


def test_a_users_own_trace_without_summaries_still_gives_a_runs_table():
    model = torch.nn.Linear(6, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rec = tr.TraceRecorder(model, opt, run={"optimizer": "sgd"}, every=2, alpha_every=4, run_id="mine")
    for _ in range(4):
        loss = model(torch.randn(8, 6)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.log_loss(loss)
    result = ot.from_trace(rec.records)
    runs = result.runs()
    assert list(runs["run_id"]) == ["mine"] and runs.iloc[0]["steps_done"] == 4
    last_step = [r for r in rec.records if r["type"] == "step"][-1]
    assert math.isclose(runs.iloc[0]["final_train_loss"], last_step["loss"])
    assert len(charts.figures(result)) == 7


def test_repeated_learning_rate_scales_run_once_and_colliding_rates_are_refused():
    params = ot.check_params({"optimizers": ["muon"], "lr_scales": [1, 1.0, 2], "seeds": 1})
    assert params["lr_scales"] == [1.0, 2.0] and len(ot.plan(params)) == 2
    with pytest.raises(OrthoscopeError, match="same rate to 6 digits"):
        ot.check_params({"optimizers": ["muon"], "lr_scales": [1, 1.0000001], "seeds": 1})


def test_a_trace_without_summaries_keeps_a_zero_accuracy():
    header = {"type": "header", "format": tr.TRACE_FORMAT, "version": tr.TRACE_VERSION, "run_id": "r",
              "run": {"optimizer": "sgd"}, "matrices": []}
    evals = [{"type": "eval", "run_id": "r", "step": s, "test_accuracy": 0.0} for s in (1, 2)]
    runs = ot.from_trace([header, *evals]).runs()
    assert runs.iloc[0]["best_test_accuracy"] == 0.0
