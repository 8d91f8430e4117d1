"""Headless Orthoscope: the dashboard's diagnostics and report files, from a command line.

    python cli.py overview --model builtin:minilm --out out/

Exit status: 0 success; 1 a --fail-on check matched; 2 bad input or a model that cannot be
loaded (one line on stderr says why). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import operator
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq, "!=": operator.ne}
_CHECK_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*(-?[0-9.eE+-]+)\s*$")


def parse_checks(text: str | None) -> list[tuple[str, str, float]]:
    """``"alpha<2,alpha>6"`` -> [("alpha", "<", 2.0), ("alpha", ">", 6.0)]."""
    from models import OrthoscopeError

    if not text:
        return []
    checks = []
    for part in text.split(","):
        m = _CHECK_RE.match(part)
        if not m:
            raise OrthoscopeError(f"--fail-on: cannot read {part!r}; write COLUMN OP NUMBER, e.g. alpha<2.")
        try:
            checks.append((m.group(1), m.group(2), float(m.group(3))))
        except ValueError:
            raise OrthoscopeError(f"--fail-on: {m.group(3)!r} is not a number.") from None
    return checks


def failed_checks(frame, checks) -> list[str]:
    """One line per row that matches a check, naming the row and the value."""
    from models import OrthoscopeError

    lines = []
    for column, op, value in checks:
        if column not in frame.columns:
            raise OrthoscopeError(f"--fail-on: no column {column!r}; columns are: {', '.join(frame.columns)}.")
        values = frame[column]
        hit = values.notna() & _OPS[op](values, value)
        for _, row in frame[hit].iterrows():
            lines.append(f"{row.get('name', '?')}: {column}={row[column]:.6g} ({column}{op}{value:g})")
    return lines


class _Bar:
    """A progress bar on stderr, driven by the diagnostics' (fraction, message) callback."""

    def __init__(self, label: str):
        from tqdm import tqdm

        self._bar = tqdm(total=1000, desc=label, file=sys.stderr, leave=False, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def __call__(self, fraction: float, message: str) -> None:
        self._bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
        self._bar.set_postfix_str(message[-60:], refresh=True)

    def close(self) -> None:
        self._bar.close()


def load_model(spec: str):
    from models import load

    print(f"loading {spec} ...", file=sys.stderr)
    return load(spec)


def with_bar(label: str, func):
    """Call ``func(progress)`` with a stderr progress bar, closing the bar afterwards."""
    bar = _Bar(label)
    try:
        return func(bar)
    finally:
        bar.close()


def add_model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="builtin:minilm, builtin:smollm2, a local path, or hf:ORG/NAME")


def cmd_overview(args) -> list:
    from diagnostics import overview

    handle = load_model(args.model)
    return [with_bar("overview", lambda bar: overview.run(handle, {}, progress=bar))]


@dataclass(frozen=True)
class Command:
    run: Callable[[argparse.Namespace], list]  # returns the results to write
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None] = add_model_argument


COMMANDS: dict[str, Command] = {
    "overview": Command(cmd_overview, "every tensor of a model: shape, dtype, norm, analysed or skipped (tensors.csv)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cli.py", description="Orthoscope diagnostics without the dashboard.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.add_argument("--out", required=True, type=Path, help="directory for report.html, report.json and CSV tables")
        p.add_argument("--fail-on", default=None, help='exit 1 when a row of the main table matches, e.g. "alpha<2"')
    return parser


def main(argv: list[str] | None = None) -> int:
    from models import OrthoscopeError
    from reports import write

    args = build_parser().parse_args(argv)
    func = COMMANDS[args.command].run
    try:
        checks = parse_checks(args.fail_on)
        results = func(args)
        written = write(results, args.out)
        failures = [line for r in results for line in failed_checks(r.to_frame(), checks)]
    except OrthoscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    if failures:
        print(f"{len(failures)} check(s) failed:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
