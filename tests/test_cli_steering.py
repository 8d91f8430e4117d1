"""`python cli.py steering`: the tables and the report, the flags that reach the run, --reference,
the verdict on stderr, the built-in concept list and bad input."""

import csv
import io
import json
from contextlib import redirect_stderr, redirect_stdout

import pytest

import cli
from diagnostics import steering, steering_data

# Small enough for seconds per run on the tiny model: 2 strengths x 2 penalties on 2 held-out prompts.
SMALL = ["--strengths", "1,2", "--penalties", "0,1", "--max-heldout", "2", "--window", "2", "--gen-tokens", "3",
         "--neutral-sentences", "1", "--boot", "20", "--sectors", "4"]
DIRECTIONS = ["axis", "pc1", "probe", "control", "random"]


@pytest.fixture
def tiny(tiny_chat_llama, monkeypatch):
    monkeypatch.setenv("ORTHOSCOPE_ALLOWED_ROOTS", str(tiny_chat_llama.parent))
    return str(tiny_chat_llama)


def rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def report(out):
    (result,) = json.loads((out / "report.json").read_text())["results"]
    return result


@pytest.fixture(scope="module")
def dogs(tiny_chat_llama, tmp_path_factory):
    """One full run on the built-in dogs set (40 triples: 30 fit, 10 held out, 2 of them steered), with the sweep."""
    out = tmp_path_factory.mktemp("dogs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ORTHOSCOPE_ALLOWED_ROOTS", str(tiny_chat_llama.parent))
        stdout, stderr = io.StringIO(), io.StringIO()
        with redirect_stdout(stdout), redirect_stderr(stderr):
            rc = cli.main(["steering", "--model", str(tiny_chat_llama), "--concept", "dogs", "--layer", "2", *SMALL,
                           "--out", str(out)])
    return {"rc": rc, "out": out, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def test_list_concepts_prints_one_name_a_line(capsys):
    assert cli.main(["steering", "--list-concepts"]) == 0
    assert capsys.readouterr().out.split() == steering_data.concept_names()


def test_every_table_is_written_and_listed_on_stdout(dogs):
    assert dogs["rc"] == 0
    names = ["samples", "self_steering", "grid", "directions", "sectors", "steered", "sweep"]
    listed = dogs["stdout"].splitlines()
    for name in names:
        assert str(dogs["out"] / f"{name}.csv") in listed
    assert str(dogs["out"] / "report.json") in listed and str(dogs["out"] / "report.html") in listed


def test_samples_and_self_steering(dogs):
    samples = rows(dogs["out"] / "samples.csv")
    assert len(samples) == 40 and sum(r["split"] == "fit" for r in samples) == 30
    for r in samples:
        assert -1 <= float(r["cos_theta"]) <= 1 and float(r["norm"]) > 0 and 0 <= int(r["sector"]) < 4
    held = {int(r["index"]) for r in samples if r["split"] == "held-out"}
    mine = rows(dogs["out"] / "self_steering.csv")
    assert len(mine) == 2 and {int(r["index"]) for r in mine} <= held
    for r in mine:
        assert {"cos_theta", "phi_deg", "sector", "min_strength", "rate", "gain_at_max"} <= set(r)
        assert 0 <= float(r["phi_deg"]) < 360 and 0 <= float(r["rate"]) <= 1 and float(r["p"]) == 0
        assert r["min_strength"] in ("", "1.0", "2.0")  # a strength of the grid, or never


def test_grid_directions_and_sectors(dogs):
    grid = rows(dogs["out"] / "grid.csv")
    assert [(float(g["s"]), float(g["p"])) for g in grid] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for g in grid:
        assert {"null_gain", "null_rate", "concept_gain", "concept_rate", "ppl_ratio", "reaching"} <= set(g)
        assert g["reaching"] in ("True", "False") and float(g["ppl_ratio"]) > 0 and int(g["n"]) == 2
    directions = rows(dogs["out"] / "directions.csv")
    assert [(d["direction"], float(d["s"])) for d in directions] == [(n, s) for s in (1, 2) for n in DIRECTIONS]
    assert all(d["reaching"] == "" for d in directions if d["direction"] == "random")
    sectors = rows(dogs["out"] / "sectors.csv")
    assert [int(r["sector"]) for r in sectors] == [0, 1, 2, 3] and sum(int(r["count"]) for r in sectors) == 2
    assert [int(r["layer"]) for r in rows(dogs["out"] / "sweep.csv")] == [0, 1, 2, 3]


def test_steered_rows_hold_every_kind_with_its_text(dogs):
    steered = rows(dogs["out"] / "steered.csv")
    # per prompt: unsteered once; per strength 2 self (p = 0, 1), 2 nulls (one draw at each norm), 4 directions
    assert len(steered) == 2 * (1 + 2 * (2 + 2 + 4))
    kinds = {}
    for r in steered:
        kinds.setdefault(r["kind"], set()).add(r["direction"])
    assert kinds == {"unsteered": {"none"}, "self": {"own"}, "random": {"random"},
                     "direction": {"axis", "pc1", "probe", "control"}}
    assert "text" in steered[0]  # empty here: the tiny model's greedy choice is a newline, stripped
    assert all(float(r["gain"]) == 0 for r in steered if r["kind"] == "unsteered")


def test_report_and_verdict_on_stderr(dogs):
    result = report(dogs["out"])
    assert result["diagnostic"] == "steering" and result["layer"] == 2 and result["n_steered"] == 2
    assert {k: result["params"][k] for k in steering.REFERENCE} == steering.REFERENCE  # the defaults
    assert result["params"]["tokens"] == ["dog", "dogs", "puppy", "bark"]
    err = dogs["stderr"]
    assert result["summary"]["verdict"] in err
    assert "dogs at block 2 of 4: 2 held-out prompts steered (fit on 30)" in err
    if result["summary"]["axis_gain"]:
        assert result["summary"]["axis_gain"] in err
    assert result["summary"]["verdict"] not in dogs["stdout"]


def test_own_triples_tokens_and_protocol_flags(tiny, tmp_path, capsys):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in steering_data.builtin_triples("rain")[:12]))
    out = tmp_path / "o"
    rc = cli.main(["steering", "--model", tiny, "--concept", "wet weather", "--triples", str(path),
                   "--tokens", " rain, umbrella,", "--control", "music", "--position", "mean", "--unit", "mean_d",
                   "--steer-tokens", "from_last", "--hook", "output", "--template", "plain", "--null-draws", "2",
                   "--seed", "3", "--temperature", "1", *SMALL, "--no-sweep", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    result = report(out)
    p = result["params"]
    assert p["tokens"] == ["rain", "umbrella"] and result["concept"]["name"] == "wet weather"
    assert (p["position"], p["unit"], p["steer_tokens"], p["hook"], p["template"]) == ("mean", "mean_d", "from_last",
                                                                                        "output", "plain")
    assert p["control"] == "music" and p["null_draws"] == 2 and p["seed"] == 3 and p["temperature"] == 1
    assert p["source"] == "uploaded triples" and result["concept"]["control"]["name"] == "music"
    assert result["n_fit"] + result["n_heldout"] == 12 and result["n_steered"] == 2
    assert result["unit_value"] == pytest.approx(result["mean_norm"])
    assert result["sweep"] == []
    # two null draws per norm: per strength 2 self, 2 x 2 nulls, 4 directions
    steered = rows(out / "steered.csv")
    assert len(steered) == 2 * (1 + 2 * (2 + 4 + 4))
    assert sorted({int(r["draw"]) for r in steered if r["kind"] == "random"}) == [0, 1]
    assert any(r["text"] for r in steered)  # sampled, so not the greedy newlines


def test_reference_sets_the_reference_protocol(tiny, tmp_path):
    out = tmp_path / "o"
    # an explicit flag that agrees with the reference is accepted
    assert cli.main(["steering", "--model", tiny, "--layer", "1", "--reference", "--hook", "input", *SMALL,
                     "--no-sweep", "--out", str(out)]) == 0
    p = report(out)["params"]
    assert {k: p[k] for k in steering.REFERENCE} == steering.REFERENCE


def test_reference_refuses_a_contradicting_flag(tiny, tmp_path, capsys):
    assert cli.main(["steering", "--model", tiny, "--reference", "--unit", "mean_d", "--hook", "output",
                     "--out", str(tmp_path)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: --reference sets --position last, --unit axis") and \
        "drop --unit mean_d and --hook output or --reference" in line


@pytest.mark.parametrize("args, message", [
    (["--layer", "4"], "layer 4 is out of range: this model has 4 blocks, numbered 0 to 3"),
    (["--strengths", "1,x"], "--strengths: cannot read"),
    (["--strengths", "0,1"], "strengths must be positive numbers"),
    (["--penalties", "0,1.5"], "penalties must be numbers from 0"),
    (["--heldout-fraction", "1"], "the held-out fraction must lie between 0 and 1"),
    (["--control", "cats"], "no built-in concept 'cats' to use as the control"),
    (["--triples", "/nonexistent.jsonl"], "--triples: no file"),
])
def test_bad_input_exits_2_with_one_line(tiny, tmp_path, capsys, args, message):
    assert cli.main(["steering", "--model", tiny, *args, "--out", str(tmp_path)]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error:")]
    assert len(err) == 1 and message in err[0]


@pytest.mark.parametrize("args, message", [
    (["--concept", "cats"], "no built-in concept 'cats'; the built-in concepts are dogs, "),
    (["--concept", "wet weather", "--triples", "TRIPLES"], "--tokens: give the words that signal 'wet weather'"),
    (["--tokens", " , "], "--tokens: give the words that signal 'dogs'"),
    (["--window", "0"], "window must be a whole number from 1 to 32"),
    (["--reference", "--position", "mean"], "drop --position mean or --reference"),
])
def test_settings_are_refused_before_the_model_loads(tmp_path, capsys, args, message):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in steering_data.builtin_triples("rain")[:12]))
    args = [str(path) if a == "TRIPLES" else a for a in args]
    assert cli.main(["steering", "--model", str(tmp_path / "no-such-model"), *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "loading" not in err and message in err.strip().splitlines()[-1]
    assert not (tmp_path / "o").exists()


def test_unknown_choice_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["steering", "--unit", "norm", "--out", "x"])
    assert exc.value.code == 2 and "invalid choice: 'norm'" in capsys.readouterr().err


def test_encoder_and_empty_responses_are_refused(tiny_bert_folder, tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ORTHOSCOPE_ALLOWED_ROOTS", f"{tiny_bert_folder.parent}:{tmp_path}")
    assert cli.main(["steering", "--model", str(tiny_bert_folder), "--out", str(tmp_path / "a")]) == 2
    assert "without a causal LM head" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,positive,negative\n" + "".join(f"q{i},a dog {i},a cat {i}\n" for i in range(9)) + "q9,,x\n")
    assert cli.main(["steering", "--model", tiny, "--triples", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "bad.csv, row 10: the response with the concept is empty" in capsys.readouterr().err


def test_out_is_required_unless_listing(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["steering", "--model", "builtin:smollm2"])
    assert exc.value.code == 2 and "--out" in capsys.readouterr().err
