"""`python cli.py steering`: samples.csv, grid.csv and the report; built-in concept list; bad input."""

import csv
import json

import pytest

import cli
from diagnostics import steering_data

SMALL = ["--strengths", "1,2", "--penalties", "0,1", "--grid-samples", "2", "--heldout-prompts", "2",
         "--neutral-sentences", "2", "--gen-tokens", "3", "--gen-prompts", "1", "--sectors", "4"]


@pytest.fixture
def tiny(tiny_chat_llama, monkeypatch):
    monkeypatch.setenv("ORTHOSCOPE_ALLOWED_ROOTS", str(tiny_chat_llama.parent))
    return str(tiny_chat_llama)


def test_list_concepts_prints_one_name_a_line(capsys):
    assert cli.main(["steering", "--list-concepts"]) == 0
    assert capsys.readouterr().out.split() == steering_data.concept_names()


def test_steering_writes_samples_grid_and_report(tiny, tmp_path):
    out = tmp_path / "o"
    assert cli.main(["steering", "--model", tiny, "--concept", "dogs", "--layer", "2", *SMALL, "--out", str(out)]) == 0
    samples = list(csv.DictReader(open(out / "samples.csv")))
    assert len(samples) == 40
    assert {"cos_theta", "norm", "sector", "min_strength"} <= set(samples[0])
    assert sum(r["split"] == "fit" for r in samples) == 30
    for r in samples:
        if r["split"] == "fit":
            assert -1 <= float(r["cos_theta"]) <= 1 and float(r["norm"]) > 0 and 0 <= int(r["sector"]) < 4
    grid = list(csv.DictReader(open(out / "grid.csv")))
    assert [(float(g["s"]), float(g["p"])) for g in grid] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert {"concept_gain", "corruption"} <= set(grid[0])
    doc = json.loads((out / "report.json").read_text())
    (result,) = doc["results"]
    assert result["diagnostic"] == "steering" and result["layer"] == 2


def test_own_triples_and_tokens(tiny, tmp_path):
    rows = steering_data.builtin_triples("rain")[:12]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "o"
    rc = cli.main(["steering", "--model", tiny, "--concept", "wet weather", "--triples", str(path),
                   "--tokens", " rain, umbrella", *SMALL, "--no-sweep", "--out", str(out)])
    assert rc == 0
    (result,) = json.loads((out / "report.json").read_text())["results"]
    assert result["params"]["tokens"] == [" rain", " umbrella"] and result["n_fit"] + result["n_heldout"] == 12
    assert result["sweep"] == []


@pytest.mark.parametrize("args, message", [
    (["--layer", "4"], "layer 4 is out of range: this model has 4 blocks, numbered 0 to 3"),
    (["--strengths", "1,x"], "--strengths: cannot read"),
    (["--penalties", "2"], "penalties must be numbers from 0"),
    (["--concept", "cats"], "no built-in concept 'cats'"),
    (["--triples", "/nonexistent.jsonl"], "--triples: no file"),
])
def test_bad_input_exits_2_with_one_line(tiny, tmp_path, capsys, args, message):
    assert cli.main(["steering", "--model", tiny, *args, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


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
