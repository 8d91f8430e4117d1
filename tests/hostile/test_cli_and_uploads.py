"""Hostile command lines, and names from files on their way to a terminal or a CSV, through the CLI in a forked
child (tests/hostile/harness.py); plus the upload directory of the dashboard against a local attacker.

A refused case must exit 2 with one ``error:`` line, no traceback, within 10 s and 1.5 GB, and with no escape
(ESC), bell (BEL) or C1 control byte anywhere on stderr. Cases with another defined outcome (a --fail-on check
that matches: exit 1; a report written: exit 0; an internal error: exit 3; Ctrl-C: exit 130) assert it instead.
The session prints the cases by surface, the slowest and the largest peak RSS.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import save_file

import cli
from models import OrthoscopeError
from tests.hostile.harness import MAX_RSS_MB, MAX_SECONDS, Outcome, assert_refused, run_cli

pytestmark = pytest.mark.usefixtures("offline")

OUTCOMES: list[tuple[str, str, Outcome]] = []  # (surface, case id, outcome) for the closing summary
ESCAPES = "\x1b[2J\x1b]0;pwned\x07"  # clear the screen, retitle the terminal
FORMULA = "=cmd|' /C calc'!A0"
TERMINAL_BYTES = "\x1b\x07\x9b\x9d"


def tiny_checkpoint(path: Path, names: list[str] | None = None) -> Path:
    names = names or ["layers.0.fc1.weight"]
    save_file({n: torch.full((16, 16), 2.0 + i) for i, n in enumerate(names)}, path)
    return path


def clean_terminal(outcome: Outcome) -> None:
    assert not any(c in outcome.stderr for c in TERMINAL_BYTES), repr(outcome.stderr)


def in_bounds(outcome: Outcome) -> None:
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.seconds <= MAX_SECONDS, f"{outcome.seconds:.1f} s"
    assert not outcome.peak_mb > MAX_RSS_MB, f"peak RSS {outcome.peak_mb:.0f} MB"


# ---------------------------------------------------------------------------------------------------------------
# Refused: exit 2, one error line


@dataclass(frozen=True)
class Case:
    id: str
    surface: str
    build: Callable[[Path], list[str]]
    contains: str


CASES: list[Case] = []


def case(surface: str, contains: str):
    def register(build):
        CASES.append(Case(build.__name__.removeprefix("_"), surface, build, contains))
        return build

    return register


def overview(tmp: Path, *extra: str, out: str | None = None) -> list[str]:
    return ["overview", "--model", str(tiny_checkpoint(tmp / "m.safetensors")), "--out",
            out if out is not None else str(tmp / "out"), *extra]


@case("--out", "is a file, not a folder")
def _out_an_existing_file(tmp):
    (tmp / "report.txt").write_text("keep")
    return overview(tmp, out=str(tmp / "report.txt"))


@case("--out", "/dev/null is not a folder")
def _out_under_dev_null(tmp):
    return overview(tmp, out="/dev/null/x")


@case("--out", "is not a folder")
def _out_dev_null_itself(tmp):
    return overview(tmp, out="/dev/null")


@case("--out", "is not a folder")
def _out_through_a_file(tmp):
    (tmp / "f").write_text("x")
    return overview(tmp, out=str(tmp / "f" / "deeper" / "out"))


@case("--out", "symbolic link to nothing")
def _out_a_dangling_link(tmp):
    (tmp / "link").symlink_to(tmp / "nowhere")
    return overview(tmp, out=str(tmp / "link"))


@case("--out", "not writable")
def _out_on_a_filesystem_that_refuses_folders(tmp):
    return overview(tmp, out="/proc/orthoscope-out")


@case("--out", "too long")
def _out_a_name_too_long(tmp):
    return overview(tmp, out=str(tmp / ("a" * 5000)))


@case("--out", "is not a folder")
def _out_a_fifo(tmp):
    os.mkfifo(tmp / "fifo")
    return overview(tmp, out=str(tmp / "fifo"))


@case("--fail-on", "the column 'name' holds text, not numbers; the numeric columns are: numel")
def _fail_on_a_text_column(tmp):
    return overview(tmp, "--fail-on", "name<2")


@case("--fail-on", "the column 'shape' holds text")
def _fail_on_another_text_column(tmp):
    return overview(tmp, "--fail-on", "frobenius_norm>1,shape>1")


@case("--fail-on", "no column 'nosuch'; the numeric columns are: numel, frobenius_norm")
def _fail_on_an_unknown_column(tmp):
    return overview(tmp, "--fail-on", "nosuch>1")


@case("--fail-on", "cannot read")
def _fail_on_a_doubled_operator(tmp):
    return overview(tmp, "--fail-on", "alpha<<2")


@case("--fail-on", "cannot read")
def _fail_on_without_a_number(tmp):
    return overview(tmp, "--fail-on", "alpha<")


@case("--fail-on", "cannot read")
def _fail_on_shell_and_python_injection(tmp):
    return overview(tmp, "--fail-on", "alpha<2;__import__('os').system('touch x')")


@case("--fail-on", "is not a number")
def _fail_on_a_malformed_number(tmp):
    return overview(tmp, "--fail-on", "alpha<1.2.3")


@case("--fail-on", "cannot read")
def _fail_on_an_empty_check(tmp):
    return overview(tmp, "--fail-on", "alpha<2,,")


@case("--fail-on", "cannot read")
def _fail_on_escapes_in_the_expression(tmp):
    return overview(tmp, "--fail-on", f"alpha{ESCAPES}<2")


@case("terminal", "does not exist")
def _model_path_with_escapes(tmp):
    return ["overview", "--model", str(tmp / f"m{ESCAPES}.safetensors"), "--out", str(tmp / "out")]


@case("terminal", "--out")
def _out_path_with_escapes_under_a_file(tmp):
    (tmp / "f").write_text("x")
    return overview(tmp, out=str(tmp / "f" / f"o{ESCAPES}"))


@case("input files", "not a regular file")
def _trace_a_fifo(tmp):
    os.mkfifo(tmp / "traces.jsonl")
    return ["optimizers", "--trace", str(tmp / "traces.jsonl"), "--out", str(tmp / "out")]


@case("input files", "folder where a file was expected")
def _trace_a_folder(tmp):
    (tmp / "traces.jsonl").mkdir()
    return ["optimizers", "--trace", str(tmp / "traces.jsonl"), "--out", str(tmp / "out")]


@case("input files", "not a regular file")
def _triples_a_fifo(tmp):
    os.mkfifo(tmp / "triples.jsonl")
    return ["steering", "--triples", str(tmp / "triples.jsonl"), "--out", str(tmp / "out")]


@case("input files", "not a regular file")
def _triples_dev_zero(tmp):
    return ["steering", "--triples", "/dev/zero", "--out", str(tmp / "out")]


@case("options", "--strengths: cannot read")
def _strengths_not_numbers(tmp):
    return ["steering", "--strengths", "1,zz", "--out", str(tmp / "out")]


@case("options", "--lr: cannot read")
def _lr_not_a_rate(tmp):
    return ["optimizers", "--lr", "muon=abc", "--out", str(tmp / "out")]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_cli_input_is_refused(case: Case, tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHOSCOPE_MAX_MEMORY", "1G")
    argv = case.build(tmp_path)
    outcome = run_cli(argv)
    OUTCOMES.append((case.surface, case.id, outcome))
    assert_refused(outcome, contains=case.contains)
    clean_terminal(outcome)
    if case.surface == "--out":
        assert not (tmp_path / "out").exists()
    if case.id == "out_an_existing_file":
        assert (tmp_path / "report.txt").read_text() == "keep"


# ---------------------------------------------------------------------------------------------------------------
# Other defined outcomes


def record(surface: str, name: str, outcome: Outcome) -> Outcome:
    OUTCOMES.append((surface, name, outcome))
    in_bounds(outcome)
    clean_terminal(outcome)
    return outcome


def test_a_tensor_name_with_terminal_escapes_fails_a_check_without_reaching_the_terminal(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "m.safetensors", [f"layers.0{ESCAPES}.weight", "\u202eevil.weight"])
    outcome = record("terminal", "escapes_in_a_failing_tensor_name",
                     run_cli(["overview", "--model", str(ckpt), "--out", str(tmp_path / "out"),
                              "--fail-on", "frobenius_norm>10"]))
    assert outcome.code == 1, outcome.stderr
    assert "  layers.0.weight: frobenius_norm=32 (frobenius_norm>10)" in outcome.lines
    assert "\u202e" not in outcome.stderr
    text = (tmp_path / "out" / "tensors.csv").read_text(encoding="utf-8")
    assert "\x1b" not in text and "\x07" not in text and "layers.0.weight" in text


def test_a_tensor_name_cannot_forge_an_output_line(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "m.safetensors", ["w\nerror: forged\r\n0 check(s) failed:"])
    outcome = record("terminal", "newlines_in_a_tensor_name",
                     run_cli(["overview", "--model", str(ckpt), "--out", str(tmp_path / "out"),
                              "--fail-on", "frobenius_norm>10"]))
    assert outcome.code == 1, outcome.stderr
    assert not any(line.startswith(("error:", "0 check")) for line in outcome.lines), outcome.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "tensors.csv").open(encoding="utf-8")))
    assert [r["name"] for r in rows] == ["w error: forged 0 check(s) failed:"]


def test_a_formula_in_a_tensor_name_is_quoted_in_the_csv(tmp_path):
    names = [FORMULA, "@SUM(1+1)*cmd|' /C calc'!A0", "+1+cmd|' /C calc'!A0", "layers.0.fc1.weight"]
    ckpt = tiny_checkpoint(tmp_path / "m.safetensors", names)
    outcome = record("csv", "formula_in_a_tensor_name",
                     run_cli(["overview", "--model", str(ckpt), "--out", str(tmp_path / "out")]))
    assert outcome.code == 0, outcome.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "tensors.csv").open(encoding="utf-8")))
    shown = {r["name"] for r in rows}
    assert shown == {"'" + FORMULA, "'@SUM(1+1)*cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0", "layers.0.fc1.weight"}
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "@", "-")) or value == "-", row


def test_an_internal_error_is_one_line_and_exit_3(tmp_path, monkeypatch):
    # Patched in this process before the fork: the child inherits it.
    def broken(args):
        raise RecursionError(f"maximum recursion depth exceeded{ESCAPES}")

    monkeypatch.setitem(cli.COMMANDS, "overview", dataclasses.replace(cli.COMMANDS["overview"], run=broken))
    outcome = record("failures", "internal_error",
                     run_cli(["overview", "--model", "x", "--out", str(tmp_path / "out")]))
    assert outcome.code == 3, outcome.stderr
    assert outcome.lines == [f"internal error (RecursionError: maximum recursion depth exceeded), please report it at "
                             f"{cli.REPORT_TO} \u2014 rerun with --debug for the traceback"]


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "overview", dataclasses.replace(cli.COMMANDS["overview"], run=interrupted))
    outcome = record("failures", "keyboard_interrupt",
                     run_cli(["overview", "--model", "x", "--out", str(tmp_path / "out")]))
    assert outcome.code == 130 and outcome.lines == ["interrupted."], outcome.stderr


@pytest.mark.parametrize("argv", [
    ["overview", "--model", "x", "--out", "o", "--no-such-flag"],
    ["directions", "--model", "x", "--matrix", "m", "--k", "many", "--out", "o"],
    ["spectra", "--model", "x", "--fix-fingers", f"x{ESCAPES}", "--out", "o"],
], ids=["unknown_flag", "int_not_an_int", "choice_with_escapes"])
def test_argparse_errors_stay_exit_2(argv):
    outcome = run_cli(argv)
    OUTCOMES.append(("options", f"argparse_{argv[0]}", outcome))
    assert outcome.code == 2, outcome.stderr
    assert "Traceback" not in outcome.stderr and outcome.seconds <= MAX_SECONDS
    assert any(": error: " in line for line in outcome.lines), outcome.stderr


# ---------------------------------------------------------------------------------------------------------------
# The dashboard's upload directory against a local user


@pytest.fixture()
def fresh_uploads(monkeypatch, tmp_path):
    from ui import uploads

    shared_tmp = tmp_path / "tmp"
    shared_tmp.mkdir()
    monkeypatch.setattr(uploads.tempfile, "tempdir", str(shared_tmp))
    monkeypatch.setattr(uploads, "_root", None)
    monkeypatch.setattr(uploads, "_root_pid", None)
    yield uploads, shared_tmp
    root = uploads.current_root()
    if root is not None:
        uploads._remove_root(root, os.getpid())


def test_a_link_planted_at_the_old_fixed_path_is_never_written_through(fresh_uploads, tmp_path):
    uploads, shared_tmp = fresh_uploads
    victim = tmp_path / "victim"
    victim.mkdir()
    (shared_tmp / "orthoscope-uploads").symlink_to(victim)  # the attack on the old fixed directory
    folder = uploads.save_files([("m.safetensors", b"data")], keep_folders=False)
    assert list(victim.iterdir()) == []
    assert folder.parent.parent == shared_tmp.resolve() and folder.parent.name.startswith("orthoscope-uploads-")
    assert stat.S_IMODE(os.lstat(folder.parent).st_mode) == 0o700


def test_an_upload_name_cannot_escape_or_plant(fresh_uploads):
    uploads, _ = fresh_uploads
    for name in ("../../etc/passwd", "/etc/passwd", "a/../../b", ""):
        with pytest.raises(OrthoscopeError):
            uploads.save_files([(name, b"x")], keep_folders=True)
    folder = uploads.save_files([("..\\..\\evil.bin", b"x")], keep_folders=False)
    assert [p.name for p in folder.iterdir()] == ["evil.bin"]


def test_a_path_that_only_looks_like_an_upload_is_checked_against_the_allowed_roots(fresh_uploads, monkeypatch):
    from models.safety import ALLOWED_ROOTS_ENV
    from ui import model_picker

    uploads, shared_tmp = fresh_uploads
    monkeypatch.delenv(ALLOWED_ROOTS_ENV, raising=False)
    fake = shared_tmp / "orthoscope-uploads" / "0123456789abcdef01234567"
    fake.mkdir(parents=True)
    tiny_checkpoint(fake / "m.safetensors")
    with pytest.raises(OrthoscopeError, match="turned off"):
        model_picker.ref_of(str(fake / "m.safetensors"), None, None, None).open()
    real = uploads.save_files([("m.safetensors", (fake / "m.safetensors").read_bytes())], keep_folders=False)
    handle = model_picker.ref_of(str(real / "m.safetensors"), None, 1.0, "m.safetensors").open()
    assert handle.num_params == 256


# ---------------------------------------------------------------------------------------------------------------


def test_enough_cases_on_every_surface():
    assert len(CASES) >= 12
    assert {"--out", "--fail-on", "terminal", "input files", "options"} <= {c.surface for c in CASES}


def test_summary(capsys):
    """Runs last: the cases by surface, the slowest and the largest, printed even under -q."""
    if not OUTCOMES:
        pytest.skip("no hostile case ran in this session")
    by_surface: dict[str, int] = {}
    for surface, _, _ in OUTCOMES:
        by_surface[surface] = by_surface.get(surface, 0) + 1
    slowest = max(OUTCOMES, key=lambda o: o[2].seconds)
    largest = max(OUTCOMES, key=lambda o: o[2].peak_mb if o[2].peak_mb == o[2].peak_mb else 0.0)
    with capsys.disabled():
        print(f"\nhostile CLI: {len(OUTCOMES)} cases (" + ", ".join(f"{s} {n}" for s, n in sorted(by_surface.items()))
              + ")")
        print(f"  slowest: {slowest[1]} {slowest[2].seconds:.2f} s; "
              f"largest peak RSS: {largest[1]} {largest[2].peak_mb:.0f} MB")
