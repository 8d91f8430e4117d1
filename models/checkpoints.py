"""Checkpoint series: the models a comparison runs over, in the order of their training step.

A series is a folder whose entries are checkpoints of one run: Hugging Face Trainer folders
``checkpoint-500/``, or weight files whose names carry the step (``step_500.safetensors``,
``model-00100.pt``, ``epoch_3.bin``). The step is read from the name with a regular expression
of exactly one group (:data:`STEP_PATTERN` unless the user gives another) and the series is
ordered by it, so ``step_1000`` comes after ``step_500`` whatever the names' sort order.
A plain list of model specs (:func:`from_specs`) has no steps and keeps the order given.

Only names are read here; what a checkpoint holds is checked when ``models.load`` opens it.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from models.errors import OrthoscopeError
from models.limits import MAX_CHECKPOINTS, MAX_FOLDER_ENTRIES

# The step follows one of the words training loops name their checkpoints with, after an optional
# separator; the longer words come first so that "iteration_5" is not read as "iter" + "ation".
STEP_PATTERN = r"(?i)(?:checkpoint|global_step|step|ckpt|iteration|iter|epoch|model)[-_.]?(\d+)"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".gguf")
# "model-00001-of-00002.safetensors": one shard of one model, which the default pattern would read as step 1.
_SHARD = re.compile(r"-\d+-of-\d+\.")


@dataclass(frozen=True)
class Checkpoint:
    """One member of a comparison.

    spec: what ``models.load`` takes (a file or folder path, ``builtin:...``, ``hf:...``).
    name: the name shown ("checkpoint-500", "step_500.safetensors", or the spec of a listed model).
    step: the training step parsed from the name; None for a list of models.
    """

    spec: str
    name: str
    step: int | None


def _compile(pattern: str | None) -> re.Pattern:
    text = STEP_PATTERN if pattern is None else pattern
    try:
        compiled = re.compile(text)
    except re.error as exc:
        raise OrthoscopeError(f"the step pattern {text!r} is not a regular expression ({exc}).") from None
    if compiled.groups != 1:
        raise OrthoscopeError(
            f"the step pattern {text!r} has {compiled.groups} groups; it needs exactly one, around the step's digits, "
            r"e.g. step_(\d+)."
        )
    return compiled


def _step(compiled: re.Pattern, name: str) -> int | None:
    match = compiled.search(name)
    if match is None:
        return None
    digits = match.group(1)
    if digits is None or not digits.isdigit():
        raise OrthoscopeError(
            f"the step pattern's group matched {digits!r} in {name!r}, which is not a whole number; put the group "
            r"around the digits only, e.g. step_(\d+)."
        )
    return int(digits)


def discover(folder: str | Path, pattern: str | None = None) -> list[Checkpoint]:
    """The checkpoints directly inside ``folder``, ordered by (step, name).

    A subfolder counts when its name matches the pattern (``checkpoint-500/``); a file when its
    suffix is one of :data:`WEIGHT_SUFFIXES` and its name matches. The first match of the
    pattern's group (``re.search``) is the step. Other entries (``trainer_state.json``,
    ``optimizer.pt``) are not checkpoints and are passed over. Refused with a message for the
    user: a missing folder, a pattern without exactly one group, a folder with no checkpoint,
    shards of one model (``model-00001-of-00002.safetensors``) and more than
    ``MAX_CHECKPOINTS`` checkpoints.
    """
    compiled = _compile(pattern)
    root = Path(folder)
    if not root.exists():
        raise OrthoscopeError(f"the checkpoint folder {str(folder)!r} does not exist.")
    if not root.is_dir():
        raise OrthoscopeError(f"{str(folder)!r} is not a folder; give the folder that holds the checkpoints.")
    found: list[Checkpoint] = []
    others: list[str] = []
    try:
        with os.scandir(root) as entries:
            for i, entry in enumerate(entries):
                if i >= MAX_FOLDER_ENTRIES:
                    raise OrthoscopeError(f"{root.name} holds more than {MAX_FOLDER_ENTRIES:,} entries.")
                is_dir = entry.is_dir()
                step = _step(compiled, entry.name) if is_dir or entry.name.endswith(WEIGHT_SUFFIXES) else None
                if step is None:
                    others.append(entry.name)
                    continue
                if not is_dir and _SHARD.search(entry.name):
                    raise OrthoscopeError(
                        f"{root.name} holds {entry.name}, a shard of one model, not a checkpoint series: give the "
                        "folder as a model, or the folder above its checkpoints."
                    )
                found.append(Checkpoint(spec=str(root / entry.name), name=entry.name, step=step))
                if len(found) > MAX_CHECKPOINTS:
                    raise OrthoscopeError(f"{root.name} holds more than {MAX_CHECKPOINTS:,} checkpoints.")
    except OSError as exc:
        raise OrthoscopeError(f"{root.name} cannot be read ({exc.strerror}).") from None
    if not found:
        seen = ", ".join(sorted(others)[:5]) + (" ..." if len(others) > 5 else "") if others else "nothing"
        raise OrthoscopeError(
            f"{root.name} holds no checkpoints: expected checkpoint-N/ folders, or weight files "
            f"({', '.join(WEIGHT_SUFFIXES)}) named with their step such as step_500.safetensors or model-00100.pt, "
            f"matching {compiled.pattern!r}; it holds {seen}."
        )
    return sorted(found, key=lambda c: (c.step, c.name))


def from_specs(specs: list[str]) -> list[Checkpoint]:
    """A list of model specs as members of a comparison, in the order given (no steps)."""
    cleaned = [s.strip() for s in specs]
    if not cleaned or not all(cleaned):
        raise OrthoscopeError("give at least one model to compare, and no empty model spec.")
    if len(cleaned) > MAX_CHECKPOINTS:
        raise OrthoscopeError(f"{len(cleaned):,} models given; at most {MAX_CHECKPOINTS:,} are compared at once.")
    twice = sorted(s for s, n in Counter(cleaned).items() if n > 1)
    if twice:
        raise OrthoscopeError(f"{twice[0]} is given more than once.")
    return [Checkpoint(spec=s, name=s, step=None) for s in cleaned]
