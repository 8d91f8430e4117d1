"""Model access: specs, safe checkpoint reading, and weight matrices for the diagnostics."""

from models.builtin import BUILTINS, DEFAULT_BUILTIN
from models.errors import OrthoscopeError
from models.handle import ModelHandle, TensorRow, load
from models.matrices import Skipped, WeightMatrix

__all__ = [
    "BUILTINS", "DEFAULT_BUILTIN", "ModelHandle", "OrthoscopeError", "Skipped", "TensorRow", "WeightMatrix", "load",
]
