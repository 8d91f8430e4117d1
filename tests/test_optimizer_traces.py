"""Optimizer-trace runs on the built-in benchmarks: splits, the protocol that chooses on validation only,
fairness, tables, reload, bad parameters."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import reports
from charts import optimizer_traces as charts
from diagnostics import optimizer_traces as ot
from diagnostics import optimizers
from diagnostics import trace_recorder as tr
from models.errors import OrthoscopeError
from reports.report import slug
from tests import result_fixtures

SMALL = {"optimizers": ["adamw", "muon"], "seeds": 2, "steps": 20, "every": 5, "alpha_every": 10, "eval_every": 10,
         "lr_scales": [1.0]}
# A sweep of two rates, both scopes side by side.
SWEEP = {"optimizers": ["adamw", "muon"], "seeds": 2, "steps": 20, "every": 10, "alpha_every": 20, "eval_every": 5,
         "lr_scales": [0.5, 2.0], "scopes": ["hidden_only", "all_but_head"]}


@pytest.fixture(scope="module")
def result():
    return ot.run(SMALL)


@pytest.fixture(scope="module")
def swept():
    return ot.run(SWEEP)


# --- defaults and splits ---------------------------------------------------------------------------

def test_defaults_are_the_fair_protocol():
    d = ot.DEFAULTS
    assert d["scopes"] == ["hidden_only"]
    assert len(d["lr_scales"]) == 4 and np.allclose(np.diff(np.log(d["lr_scales"])), np.log(2))
    assert d["seeds"] >= 2 and 0 < d["val_fraction"] < 1
    # The default digits comparison's size (timed in the README: a few minutes on 2 cores).
    assert len(ot.plan(ot.check_params({}))) == len(d["optimizers"]) * len(d["lr_scales"]) * d["seeds"]


def test_digits_validation_split_is_carved_from_the_training_data_and_the_test_split_never_moves():
    a = ot.benchmark("digits").split_index()
    b = ot.benchmark("digits", split_seed=1).split_index()
    for ids in (a, b):
        train, val, test = (set(ids[k].tolist()) for k in ("train", "val", "test"))
        assert not (train & val) and not (train & test) and not (val & test)
        assert len(train | val | test) == 1797
    assert np.array_equal(np.sort(a["test"]), np.sort(b["test"]))
    assert set(a["val"].tolist()) != set(b["val"].tolist())  # seeded
    bench = ot.benchmark("digits")
    assert bench.splits["test"] == 450 and bench.splits["val"] == math.ceil(0.2 * 1347) and bench.splits["train"] == 1347 - bench.splits["val"]


def test_chars_validation_block_lies_inside_the_training_text():
    bench = ot.benchmark("chars", split_seed=3)
    ids = bench.split_index()
    val, test, train = ids["val"], ids["test"], ids["train"]
    assert val.max() < test.min() and not set(val.tolist()) & set(train.tolist())
    assert len(val) == bench.splits["val"] and len(train) + len(val) == test.min()
    # Every training window lies before or after the validation block.
    x, _ = next(bench.batches(torch.Generator().manual_seed(0)))
    assert x.shape == (32, 64)


# --- the protocol: choices on validation only ---------------------------------------------------------

def test_no_choice_touches_the_test_split(monkeypatch):
    """By construction: replace every test score with seeded noise; the checkpoints and rates chosen stay the
    same, and the reported test metrics are the noise at the checkpoints validation chose."""
    params = {"optimizers": ["adamw", "muon"], "seeds": 2, "steps": 30, "every": 30, "alpha_every": 30,
              "eval_every": 5, "lr_scales": [0.5, 1.0, 2.0]}
    honest = ot.run(params)
    real = ot.benchmark
    rng = np.random.default_rng(0)

    def noisy_benchmark(*args, **kwargs):
        bench = real(*args, **kwargs)
        bench.evaluate_test = lambda model: {"test_loss": float(rng.uniform(0, 10)),
                                             "test_accuracy": float(rng.uniform(0, 1))}
        return bench

    monkeypatch.setattr(ot, "benchmark", noisy_benchmark)
    noisy = ot.run(params)
    a, b = honest.runs(), noisy.runs()
    assert a["best_val_step"].tolist() == b["best_val_step"].tolist()
    assert a["best_val_loss"].tolist() == b["best_val_loss"].tolist()
    pd.testing.assert_frame_equal(honest.choices(), noisy.choices())
    evals = noisy.table("eval").set_index(["run_id", "step"])
    for row in b.itertuples():
        assert row.test_loss_at_best_val == evals.loc[(row.run_id, row.best_val_step), "test_loss"]
    assert not np.allclose(a["test_loss_at_best_val"], b["test_loss_at_best_val"])


MUON_FAMILY = ["muon", "normuon", "root", "aro"]


def ratios_to_adamw(result) -> dict:
    compare = result.compare().set_index("optimizer")
    return {o: compare.loc[o, "test_loss_ratio_to_adamw"] for o in compare.index if o != "adamw"}


def test_muon_family_is_within_1_5x_of_adamw_on_a_short_run_of_the_default_protocol():
    # The default protocol (hidden-only scope, rates chosen on validation, test read at the best-validation
    # checkpoint), shortened to stay fast: one seed, two rates, 150 steps.
    result = ot.run({"optimizers": ["adamw", *MUON_FAMILY], "seeds": 1, "steps": 150, "lr_scales": [0.5, 1.0],
                     "every": 150, "alpha_every": 150})
    ratios = ratios_to_adamw(result)
    assert set(ratios) == set(MUON_FAMILY) and all(r <= 1.5 for r in ratios.values()), ratios


@pytest.mark.skipif(not os.environ.get("ORTHOSCOPE_FULL_CHECKS"),
                    reason="the default digits comparison takes about 3 minutes on 2 cores; set ORTHOSCOPE_FULL_CHECKS=1")
def test_default_digits_comparison_muon_family_within_1_5x_of_adamw():
    result = ot.run({})
    assert result.params["scopes"] == ["hidden_only"]
    ratios = ratios_to_adamw(result)
    assert set(ratios) == set(ot.DEFAULTS["optimizers"]) - {"adamw"}
    assert all(r <= 1.5 for r in ratios.values()), ratios


def test_choose_rates_sees_validation_columns_only_and_ranks_diverged_rates_last():
    val = pd.DataFrame({"scope": "", "optimizer": "sgd", "lr": [0.1, 0.1, 1.0, 1.0, 0.01, 0.01],
                        "seed": [0, 1] * 3, "best_val_loss": [0.5, 0.7, 0.1, 0.2, 0.9, 0.8],
                        "diverged": [False, False, True, False, False, False]})
    (choice,) = ot.choose_rates(val).itertuples()
    assert choice.lr == 0.1 and choice.mean_best_val_loss == pytest.approx(0.6) and choice.n_rates == 3
    with pytest.raises(ValueError, match="validation columns only"):
        ot.choose_rates(val.assign(test_loss_at_best_val=0.0))


def test_best_val_checkpoint_is_the_first_lowest_finite_loss():
    assert ot.best_val_checkpoint([0.5, 0.2, float("nan"), 0.2, 0.3]) == 1
    assert ot.best_val_checkpoint([float("nan"), None]) is None


def test_mean_interval_is_students_t():
    mean, lo, hi = ot.mean_interval([1.0, 2.0, 4.0])
    half = stats.t.ppf(0.975, 2) * np.std([1, 2, 4], ddof=1) / math.sqrt(3)
    assert mean == pytest.approx(7 / 3) and lo == pytest.approx(7 / 3 - half) and hi == pytest.approx(7 / 3 + half)
    assert math.isnan(ot.mean_interval([1.0])[1]) and math.isnan(ot.mean_interval([])[0])


def test_sweep_reports_each_optimizer_and_scope_at_its_best_validation_rate(swept):
    runs = swept.runs()
    # AdamW has no scope and runs once per rate and seed; Muon once per scope too.
    assert (runs["optimizer"] == "adamw").sum() == 4 and (runs["optimizer"] == "muon").sum() == 8
    assert set(runs.loc[runs["optimizer"] == "muon", "scope"]) == {"hidden_only", "all_but_head"}
    compare = swept.compare().set_index("name")
    assert list(compare.index) == ["AdamW", "Muon · hidden-only", "Muon · all-but-head"]
    for (scope, name), g in runs.groupby(["scope", "optimizer"]):
        means = g.groupby("lr")["best_val_loss"].mean()
        row = compare[(compare["scope"] == scope) & (compare["optimizer"] == name)].iloc[0]
        assert row["lr"] == means.idxmin() and row["best_val_loss"] == pytest.approx(means.min())
        at = g[g["lr"] == row["lr"]]
        mean, lo, hi = ot.mean_interval(at["test_loss_at_best_val"].tolist())
        assert (row["test_loss_at_best_val"], row["test_loss_at_best_val_lo"], row["test_loss_at_best_val_hi"]) == \
            pytest.approx((mean, lo, hi))
        assert row["seeds"] == 2 and row["lr_grid"].count(",") == 1
        assert row["lr_at_grid_edge"]  # two rates: either is an edge
    assert compare.loc["AdamW", "test_loss_ratio_to_adamw"] == 1.0
    sweep = swept.sweep()
    assert len(sweep) == 6 and sweep["chosen"].sum() == 3
    # The curves show the chosen rates only; the sweep chart shows every rate.
    assert len(swept.shown_runs()) == 6
    assert {tuple(sorted(set(t.x))) for t in charts.lr_sweep(swept).data if t.mode == "lines+markers"} \
        == {tuple(sorted(set(runs.loc[runs["optimizer"] == o, "lr"]))) for o in ("adamw", "muon")}
    text = ot.protocol_text(swept)
    assert "270 images carved from the training data" in text and "test: 450 images, used for no choice" in text


def test_runs_table_has_a_row_per_run_with_validation_and_test_metrics(result):
    runs = result.runs()
    assert list(runs["optimizer"]) == ["adamw", "adamw", "muon", "muon"]
    assert list(runs["seed"]) == [0, 1, 0, 1]
    assert list(runs["lr"]) == [1e-3, 1e-3, optimizers.default_lr("muon"), optimizers.default_lr("muon")]
    assert list(runs["scope"]) == ["", "", "hidden_only", "hidden_only"]
    assert (runs["steps_done"] == 20).all() and not runs["diverged"].any()
    assert not any(c.startswith("best_test") for c in runs.columns)
    assert (runs["best_val_loss"] <= runs["final_val_loss"]).all()
    assert (runs["ms_per_step"] > 0).all()
    evals = result.table("eval")
    last = evals[evals["step"] == 20].set_index("run_id")["test_accuracy"]
    assert runs.set_index("run_id")["final_test_accuracy"].equals(last.rename("final_test_accuracy"))
    assert {"val_loss", "val_accuracy", "test_loss", "test_accuracy"} <= set(evals.columns)


def test_every_run_of_a_seed_starts_from_the_same_weights(result):
    # The first step's loss is computed before any update, so it equals across optimizers.
    torch.manual_seed(0)
    bench = ot.benchmark("digits")
    first = {}
    for optimizer in ("adamw", "muon"):
        records = []
        ot.train_run(bench, {"run_id": optimizer, "optimizer": optimizer, "label": optimizer, "lr": 0.01,
                             "lr_scale": 1.0, "seed": 3, "scope": ""}, {**ot.DEFAULTS, "steps": 1, "every": 1},
                     records.append)
        first[optimizer] = next(r["loss"] for r in records if r["type"] == "step")
    assert first["adamw"] == first["muon"]


def test_records_cover_the_tracked_matrices_at_the_intervals(result, swept):
    updates = result.table("update")
    # Hidden only: every run tracks the one matrix Muon takes, AdamW's runs too (equal terms).
    assert set(updates["matrix"]) == {"2.weight"}
    assert sorted(set(updates["step"])) == [5, 10, 15, 20]
    assert sorted(set(result.table("alpha")["step"])) == [0, 10, 20]
    muon = updates[updates["optimizer"] == "muon"]
    adamw = updates[updates["optimizer"] == "adamw"]
    # Muon's updates have far more even singular values than AdamW's (about 0.6 against 2 here: the
    # 256 x 256 momentum has directions below Newton-Schulz's band, which stay small).
    assert muon["sv_cv"].median() < 1.0 < adamw["sv_cv"].median()
    assert muon["sv_cv"].median() < adamw["sv_cv"].median() / 2
    # Both scopes: every run tracks the union, the input layer too.
    assert set(swept.table("update")["matrix"]) == {"0.weight", "2.weight"}


def test_alphas_of_the_trained_weights_are_fitted_whatever_the_interval():
    records = []
    ot.train_run(ot.benchmark("digits"), {"run_id": "a", "optimizer": "adamw", "label": "AdamW", "lr": 1e-3,
                                          "lr_scale": 1.0, "seed": 0, "scope": ""},
                 {**ot.DEFAULTS, "steps": 7, "every": 5, "alpha_every": 5}, records.append)
    assert sorted({r["step"] for r in records if r["type"] == "alpha"}) == [0, 5, 7]


@pytest.mark.parametrize("scope, muon_takes", [("hidden_only", {"2.weight"}), ("all_but_head", {"0.weight", "2.weight"})])
def test_scope_routes_the_input_layer(scope, muon_takes):
    records = []
    ot.train_run(ot.benchmark("digits"), {"run_id": "m", "optimizer": "muon", "label": "Muon", "lr": 0.02,
                                          "lr_scale": 1.0, "seed": 0, "scope": scope},
                 {**ot.DEFAULTS, "steps": 2, "every": 1}, records.append)
    routes = {r["name"]: r["optimizer"] for r in records[0]["run"]["routes"]}
    assert {n for n, o in routes.items() if o == "muon"} == muon_takes and routes["4.weight"] == "adamw"
    assert records[0]["run"]["scope"] == scope


def test_character_transformer_routes_attention_and_mlp_matrices_to_the_matrix_optimizer():
    bench = ot.benchmark("chars")
    records = []
    ot.train_run(bench, {"run_id": "c", "optimizer": "muon", "label": "Muon", "lr": 0.02, "lr_scale": 1.0, "seed": 0,
                         "scope": "hidden_only"},
                 {**ot.DEFAULTS, "steps": 2, "every": 1, "eval_every": 2}, records.append)
    routes = {r["name"]: (r["optimizer"], r["reason"]) for r in records[0]["run"]["routes"]}
    for name in ("blocks.0.q.weight", "blocks.0.k.weight", "blocks.0.v.weight", "blocks.0.o.weight",
                 "blocks.1.up.weight", "blocks.1.down.weight"):
        assert routes[name][0] == "muon"
    assert routes["tok.weight"] == ("adamw", "embedding (rows are looked up, not multiplied)")
    assert routes["head.weight"] == ("adamw", "output head")
    assert routes["blocks.0.ln1.weight"][0] == "adamw"
    evals = [r for r in records if r["type"] == "eval"]
    assert evals and 0 <= evals[0]["test_accuracy"] <= 1 and evals[0]["test_loss"] > 0 and evals[0]["val_loss"] > 0
    summary = records[-1]
    assert summary["type"] == "summary" and summary["best_val_step"] == 2


def test_lr_decay_reaches_zero_at_the_end():
    assert ot._schedule("linear", 100)(100) == 0.0
    assert ot._schedule("cosine", 100)(50) == pytest.approx(0.5)
    assert ot._schedule("none", 100)(100) == 1.0


def test_plan_sweeps_learning_rates_per_optimizer_and_scope():
    params = ot.check_params({"optimizers": ["muon", "sgd"], "lr_scales": [0.5, 2], "lrs": {"muon": 0.04}, "seeds": 1})
    assert [(r["optimizer"], r["scope"], r["lr"]) for r in ot.plan(params)] == [
        ("muon", "hidden_only", 0.02), ("muon", "hidden_only", 0.08), ("sgd", "", 0.025), ("sgd", "", 0.1)]
    both = ot.check_params({"optimizers": ["muon"], "lr_scales": [1], "seeds": 1, "scopes": ["all_but_head", "hidden_only"]})
    assert [r["scope"] for r in ot.plan(both)] == ["all_but_head", "hidden_only"]
    assert ot.check_params({"scope": "all_but_head"})["scopes"] == ["all_but_head"]  # the earlier parameter


@pytest.mark.parametrize("params, message", [
    ({"bench": "imagenet"}, "unknown benchmark 'imagenet'"),
    ({"optimizers": []}, "at least one optimizer"),
    ({"optimizers": ["adam"]}, "unknown optimizer adam; choose from"),
    ({"lr_scales": [0.0]}, "scales must be positive"),
    ({"lrs": {"muon": -1.0}}, "learning rates must be positive"),
    ({"steps": 0}, "steps must be a whole number"),
    ({"seeds": 2.5}, "seeds must be a whole number"),
    ({"scopes": ["everything"]}, "unknown scope 'everything'"),
    ({"scopes": []}, "at least one scope"),
    ({"val_fraction": 0.9}, "val_fraction"),
    ({"split_seed": -1}, "split_seed must be a whole number"),
    ({"decay": "step"}, "unknown lr decay"),
    ({"seeds": 20, "lr_scales": [1, 2, 3]}, "runs requested; at most"),
])
def test_bad_parameters_are_explained(params, message):
    with pytest.raises(OrthoscopeError, match=message):
        ot.check_params(params)


def test_diverging_run_stops_is_marked_and_its_rate_is_not_chosen():
    result = ot.run({"optimizers": ["sgd"], "lrs": {"sgd": 1e5}, "lr_scales": [1e-6, 1], "seeds": 1, "steps": 50,
                     "every": 5, "eval_every": 5})
    runs = result.runs().set_index("lr_scale")
    assert bool(runs.loc[1.0, "diverged"]) and runs.loc[1.0, "steps_done"] < 50
    assert math.isnan(runs.loc[1.0, "final_test_loss"])
    assert result.choices().iloc[0]["lr"] == pytest.approx(0.1)


def test_a_loaded_trace_draws_the_same_charts(swept, tmp_path):
    path = tmp_path / "traces.jsonl"
    tr.write_trace(swept.records, path)
    loaded = ot.from_trace(tr.read_trace(path), "traces.jsonl")
    assert loaded.splits == swept.splits
    for a, b in zip(charts.figures(swept), charts.figures(loaded), strict=True):
        assert json.loads(a.to_json())["data"] == json.loads(b.to_json())["data"]


def test_report_round_trip_and_csv_tables(swept):
    (back,) = reports.from_json(reports.to_json([swept]))
    assert back.runs().equals(swept.runs())
    pd.testing.assert_frame_equal(back.compare(), swept.compare())
    prefix = f"optimizer_traces-{slug(swept.model_name)}-"
    tables = {name.removeprefix(prefix): text for name, text in reports.csv_tables([swept]).items()}
    assert {"compare.csv", "sweep.csv", "runs.csv", "steps.csv", "updates.csv", "alphas.csv", "evals.csv",
            "routes.csv"} <= set(tables)
    assert len(tables["runs.csv"].splitlines()) == 13 and len(tables["compare.csv"].splitlines()) == 4
    assert swept.to_frame().equals(swept.compare())


def test_a_users_own_trace_without_summaries_still_gives_a_runs_table():
    records = result_fixtures.recorded_trace(momentum=0.9)
    result = ot.from_trace(records)
    runs = result.runs()
    assert list(runs["run_id"]) == ["mine"] and runs.iloc[0]["steps_done"] == 4
    last_step = [r for r in records if r["type"] == "step"][-1]
    assert math.isclose(runs.iloc[0]["final_train_loss"], last_step["loss"])
    assert result.compare().empty and result.to_frame().equals(runs)
    assert len(charts.figures(result)) == 7  # no comparison, no sweep
    assert "nothing is chosen" in ot.protocol_text(result)


def test_repeated_learning_rate_scales_run_once_and_colliding_rates_are_refused():
    params = ot.check_params({"optimizers": ["muon"], "lr_scales": [1, 1.0, 2], "seeds": 1})
    assert params["lr_scales"] == [1.0, 2.0] and len(ot.plan(params)) == 2
    with pytest.raises(OrthoscopeError, match="same rate to 6 digits"):
        ot.check_params({"optimizers": ["muon"], "lr_scales": [1, 1.0000001], "seeds": 1})


def test_a_trace_with_validation_evals_but_no_summaries_still_chooses_on_validation():
    header = {"type": "header", "format": tr.TRACE_FORMAT, "version": tr.TRACE_VERSION, "run_id": "r",
              "run": {"optimizer": "sgd", "lr": 0.1, "seed": 0}, "matrices": []}
    evals = [{"type": "eval", "run_id": "r", "step": s, "val_loss": v, "test_loss": t, "test_accuracy": 0.0}
             for s, v, t in ((1, 0.5, 0.1), (2, 0.3, 0.9), (3, 0.4, 0.05))]
    runs = ot.from_trace([header, *evals]).runs()
    row = runs.iloc[0]
    assert row["best_val_step"] == 2 and row["test_loss_at_best_val"] == 0.9 and row["final_test_accuracy"] == 0.0
