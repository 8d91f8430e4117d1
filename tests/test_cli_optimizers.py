"""`python cli.py optimizers`: traces.jsonl, compare.csv, runs.csv and the report; the default protocol;
reloading a trace; bad input."""

import csv
import json

import pytest
import torch

import cli
from diagnostics import optimizer_traces as ot
from diagnostics import trace_recorder as tr


def run(*args) -> int:
    return cli.main(["optimizers", *args])


def test_comparison_writes_traces_runs_compare_and_report(tmp_path, capsys):
    out = tmp_path / "o"
    rc = run("--optimizers", "adamw,muon", "--seeds", "2", "--steps", "20", "--every", "5", "--eval-every", "10",
             "--lr", "muon=0.01", "--lr-scales", "1", "--out", str(out))
    assert rc == 0
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert [(r["optimizer"], r["scope"], float(r["lr"]), r["seed"]) for r in rows] == [
        ("adamw", "", 0.001, "0"), ("adamw", "", 0.001, "1"), ("muon", "hidden_only", 0.01, "0"),
        ("muon", "hidden_only", 0.01, "1")]
    for r in rows:
        assert 0 < float(r["final_test_accuracy"]) <= 1 and 0 < float(r["test_acc_at_best_val"]) <= 1
        assert float(r["best_val_loss"]) <= float(r["final_val_loss"])
        assert float(r["ms_per_step"]) > 0
    compare = list(csv.DictReader(open(out / "compare.csv")))
    assert [r["name"] for r in compare] == ["AdamW", "Muon"] and all(r["seeds"] == "2" for r in compare)
    records = tr.read_trace(out / "traces.jsonl")
    assert sum(r["type"] == "header" for r in records) == 4
    doc = json.loads((out / "report.json").read_text())
    assert doc["results"][0]["diagnostic"] == "optimizer_traces"
    printed = capsys.readouterr()
    assert "traces.jsonl" in printed.out and "test: 450 images, used for no choice" in printed.err

    again = tmp_path / "again"
    assert run("--trace", str(out / "traces.jsonl"), "--out", str(again)) == 0
    assert (again / "runs.csv").read_text() == (out / "runs.csv").read_text()


def test_defaults_run_the_fair_protocol_with_hidden_only_scope(tmp_path, monkeypatch):
    seen = {}

    def fake_run(params, progress=None, sink=None):
        seen.update(params)
        return ot.from_trace([{"type": "header", "format": tr.TRACE_FORMAT, "version": tr.TRACE_VERSION,
                               "run_id": "r", "run": {}, "matrices": []}])

    monkeypatch.setattr(ot, "run", fake_run)
    assert run("--out", str(tmp_path)) == 0
    assert seen["scopes"] == ["hidden_only"] == ot.DEFAULTS["scopes"]
    assert seen["lr_scales"] == ot.DEFAULTS["lr_scales"] and len(seen["lr_scales"]) == 4
    assert seen["seeds"] == ot.DEFAULTS["seeds"] and seen["steps"] == ot.DEFAULTS["steps"]
    assert seen["val_fraction"] == ot.DEFAULTS["val_fraction"] and seen["split_seed"] == 0
    assert run("--scope", "hidden_only,all_but_head", "--out", str(tmp_path)) == 0
    assert seen["scopes"] == ["hidden_only", "all_but_head"]


def test_both_scopes_side_by_side_and_fail_on_checks_the_comparison(tmp_path, capsys):
    rc = run("--optimizers", "adamw,muon", "--seeds", "1", "--steps", "10", "--every", "5", "--eval-every", "5",
             "--lr-scales", "1", "--scope", "hidden_only,all_but_head",
             "--fail-on", "final_test_accuracy<1.01", "--out", str(tmp_path))
    assert rc == 1
    err = capsys.readouterr().err
    assert "name=" not in err and "Muon · hidden-only: final_test_accuracy=" in err and "Muon · all-but-head" in err
    compare = list(csv.DictReader(open(tmp_path / "compare.csv")))
    assert [(r["optimizer"], r["scope"]) for r in compare] == [("adamw", ""), ("muon", "hidden_only"),
                                                             ("muon", "all_but_head")]


@pytest.mark.parametrize("args, message", [
    (["--optimizers", "adam"], "unknown optimizer adam"),
    (["--lr", "muon:0.1"], "--lr: cannot read 'muon:0.1'"),
    (["--lr-scales", "1,x"], "--lr-scales: cannot read"),
    (["--steps", "0"], "steps must be a whole number"),
    (["--scope", "everything"], "unknown scope 'everything'"),
    (["--val-fraction", "0.9"], "val_fraction"),
    (["--trace", "/nonexistent/t.jsonl"], "--trace: no file"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    assert run(*args, "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]


def test_truncated_trace_names_the_line(tmp_path, capsys):
    path = tmp_path / "cut.jsonl"
    header = {"type": "header", "format": tr.TRACE_FORMAT, "version": tr.TRACE_VERSION, "run_id": "r", "run": {},
              "matrices": []}
    path.write_text(json.dumps(header) + '\n{"type": "step", "ru')
    assert run("--trace", str(path), "--out", str(tmp_path / "o")) == 2
    assert "cut.jsonl, line 2: not valid JSON" in capsys.readouterr().err


# --- checkpoints and fine-tunes ------------------------------------------------------------------

def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _metadata(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_checkpoints_are_written_per_run_at_step_0_every_n_and_the_last_step(tmp_path, capsys):
    ckpt, out = tmp_path / "ckpt", tmp_path / "o"
    rc = run("--optimizers", "adamw,muon", "--seeds", "1", "--lr-scales", "1", "--steps", "20", "--every", "10",
             "--eval-every", "10", "--save-checkpoints", str(ckpt), "--save-every", "8", "--out", str(out))
    assert rc == 0
    params = ot.check_params({"optimizers": ["adamw", "muon"], "seeds": 1, "lr_scales": [1.0]})
    folders = [ot.run_folder(r) for r in ot.plan(params)]
    # One folder per run, named from the run id with only file-name-safe characters.
    assert folders[0] == "adamw-lr-0.001-seed-0" and folders[1].startswith("muon-scope-hidden_only-lr-")
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(folders)
    printed = capsys.readouterr().out
    runs = {r["optimizer"]: r for r in csv.DictReader(open(out / "runs.csv"))}
    bench = ot.benchmark("digits")
    for r, folder in zip(ot.plan(params), folders):
        assert str(ckpt / folder) in printed
        files = sorted(p.name for p in (ckpt / folder).iterdir())
        # Step 0 (the initial weights), every 8 steps and the last step; names sort in step order.
        assert files == ["step_000000.safetensors", "step_000008.safetensors", "step_000016.safetensors",
                         "step_000020.safetensors"]
        assert runs[r["optimizer"]]["checkpoints"] == "4" and runs[r["optimizer"]]["checkpoint_dir"] == folder
        meta = _metadata(ckpt / folder / files[-1])
        assert meta["bench"] == "digits" and meta["optimizer"] == r["optimizer"] and meta["seed"] == "0"
        assert meta["step"] == "20" and float(meta["lr"]) == pytest.approx(r["lr"])
        # Loads back into the benchmark model, tensor for tensor, and scores what the run reported last.
        state = _tensors(ckpt / folder / files[-1])
        model = bench.build_model()
        assert sorted(state) == sorted(model.state_dict())
        model.load_state_dict(state, strict=True)
        for name, tensor in model.state_dict().items():
            assert tensor.dtype == state[name].dtype and torch.equal(tensor, state[name])
        model.eval()
        assert bench.evaluate_val(model)["val_loss"] == pytest.approx(float(runs[r["optimizer"]]["final_val_loss"]),
                                                                      rel=1e-5)
        # Training moved the weights away from step 0's.
        first = _tensors(ckpt / folder / files[0])
        assert not torch.equal(first["2.weight"], state["2.weight"])


def test_fine_tunes_start_from_the_base_checkpoint_and_two_corpora_give_two_task_vectors(tmp_path):
    common = ["--bench", "chars", "--optimizers", "adamw", "--seeds", "1", "--lr-scales", "1", "--steps", "10",
              "--every", "10", "--alpha-every", "10", "--eval-every", "10"]
    folder = "adamw-lr-0.001-seed-0"
    assert run(*common, "--save-checkpoints", str(tmp_path / "base"), "--save-every", "5",
               "--out", str(tmp_path / "o-base")) == 0
    base_file = tmp_path / "base" / folder / "step_000010.safetensors"
    base = _tensors(base_file)
    for corpus in ("license", "typing"):
        assert run(*common, "--init-from", str(base_file), "--corpus", corpus, "--save-checkpoints",
                   str(tmp_path / corpus), "--out", str(tmp_path / f"o-{corpus}")) == 0
        doc = json.loads((tmp_path / f"o-{corpus}" / "report.json").read_text())["results"][0]
        assert doc["params"]["corpus"] == corpus and doc["fingerprint"].endswith("+init:" + _metadata(
            tmp_path / corpus / folder / "step_000010.safetensors")["init_from"].rsplit(":", 1)[1])
    # Each fine-tune starts from exactly the base's weights ...
    task_vectors = {}
    for corpus in ("license", "typing"):
        start = _tensors(tmp_path / corpus / folder / "step_000000.safetensors")
        assert start.keys() == base.keys() and all(torch.equal(start[k], base[k]) for k in base)
        meta = _metadata(tmp_path / corpus / folder / "step_000010.safetensors")
        assert meta["corpus"] == corpus and meta["init_from"].startswith("step_000010.safetensors sha256:")
        end = _tensors(tmp_path / corpus / folder / "step_000010.safetensors")
        task_vectors[corpus] = torch.cat([(end[k] - base[k]).flatten() for k in sorted(base)])
    # ... so its step-0 weights score on the base's validation split what the base run reported last.
    bench = ot.benchmark("chars")
    model = bench.build_model()
    model.load_state_dict(_tensors(tmp_path / "license" / folder / "step_000000.safetensors"))
    model.eval()
    base_run = next(csv.DictReader(open(tmp_path / "o-base" / "runs.csv")))
    assert bench.evaluate_val(model)["val_loss"] == pytest.approx(float(base_run["final_val_loss"]), rel=1e-5)
    # Two texts, two different task vectors from one base.
    a, b = task_vectors["license"], task_vectors["typing"]
    assert a.norm() > 0 and b.norm() > 0
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) < 0.95


def test_a_corpus_is_mapped_onto_the_base_vocabulary_and_counted():
    text, mapped, dropped = ot.to_vocab("a\tb \u00e9\u20ac", ["a", "b", "e", " "])
    assert (text, mapped, dropped) == ("a    b e", 2, 1)
    for corpus in ("license", "inspect", "typing"):
        bench = ot.benchmark("chars", corpus=corpus)
        assert bench.vocab == ot.benchmark("chars").vocab and bench.splits["corpus"] == corpus
        assert bench.build_model().tok.weight.shape == ot.benchmark("chars").build_model().tok.weight.shape


def test_a_missing_licence_is_refused_clearly(monkeypatch, tmp_path):
    from models.errors import OrthoscopeError

    monkeypatch.setattr(ot, "stdlib_dirs", lambda: [tmp_path])
    with pytest.raises(OrthoscopeError, match="ships no LICENSE.txt"):
        ot.corpus_text("license")


def _file(tmp_path, what):
    from safetensors.torch import save_file

    if what == "file":
        (tmp_path / "f").write_text("x")
        return str(tmp_path / "f")
    if what == "text":
        (tmp_path / "notes.safetensors").write_text("not weights at all\n")
        return str(tmp_path / "notes.safetensors")
    if what == "wrong-shapes":
        save_file({"0.weight": torch.zeros(3, 3)}, str(tmp_path / "w.safetensors"))
        return str(tmp_path / "w.safetensors")
    if what == "other-vocab":
        state = {k: v.contiguous() for k, v in ot.benchmark("chars").build_model().state_dict().items()}
        save_file(state, str(tmp_path / "v.safetensors"), metadata={"vocab": json.dumps("abc")})
        return str(tmp_path / "v.safetensors")
    if what == "used":
        (tmp_path / "ck" / "adamw-lr-0.001-seed-0").mkdir(parents=True)
        (tmp_path / "ck" / "adamw-lr-0.001-seed-0" / "step_000000.safetensors").write_bytes(b"")
        return str(tmp_path / "ck")
    if what == "trace":
        path = tmp_path / "t.jsonl"
        path.write_text(json.dumps({"type": "header", "format": tr.TRACE_FORMAT, "version": tr.TRACE_VERSION,
                                    "run_id": "r", "run": {}, "matrices": []}) + "\n")
        return str(path)
    return str(tmp_path / what)


@pytest.mark.parametrize("args, message", [
    (["--save-checkpoints", "{file}"], "--save-checkpoints: "),
    (["--save-checkpoints", "{ck}", "--save-every", "0"], "--save-every must be a whole number"),
    (["--save-every", "5"], "--save-every needs --save-checkpoints"),
    (["--init-from", "{missing.safetensors}"], "--init-from: no file"),
    (["--init-from", "{text}"], "init_from: notes.safetensors is a text file"),
    (["--init-from", "{wrong-shapes}"], "does not fit the digits model: missing 0.bias"),
    (["--bench", "chars", "--init-from", "{other-vocab}"], "another character vocabulary"),
    (["--corpus", "license"], "a corpus applies to the chars benchmark only"),
    (["--bench", "chars", "--corpus", "poems"], "invalid choice: 'poems'"),
    (["--save-checkpoints", "{used}"], "ck/adamw-lr-0.001-seed-0 already holds checkpoints"),
    (["--trace", "{trace}", "--save-checkpoints", "{ck}"], "--save-checkpoints needs training"),
])
def test_bad_checkpoint_options_exit_2_with_one_line(tmp_path, capsys, args, message):
    args = [_file(tmp_path, a[1:-1]) if a.startswith("{") else a for a in args]
    with_small = ["--optimizers", "adamw", "--seeds", "1", "--lr-scales", "1", "--steps", "5"]
    try:
        rc = run(*with_small, *args, "--out", str(tmp_path / "o"))
    except SystemExit as exc:  # argparse's own refusal of a choice
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and (err[-1].startswith("error: ") or "invalid choice" in err[-1])
    if "invalid choice" not in message:
        assert len([line for line in err if line.startswith("error: ")]) == 1
