"""Model overview: every stored tensor, its size and Frobenius norm, whether its values are finite and not
all zero, and what the analysis does with it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, ClassVar

import pandas as pd
import torch

from diagnostics.result import Result
from models import ModelHandle

Progress = Callable[[float, str], None]


@dataclass
class OverviewResult(Result):
    diagnostic: ClassVar[str] = "overview"
    kind: str
    num_params: int
    tensors: list  # one dict per stored tensor, the columns of tensors.csv
    params_by_block: dict
    params_by_kind: dict

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.tensors, columns=list(TENSOR_COLUMNS))

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"tensors": self.to_frame()}


TENSOR_COLUMNS = ("name", "shape", "dtype", "numel", "frobenius_norm", "status", "analysed", "reason", "kind", "block")
# status values; the reasons match the ones the spectra diagnostic gives when it skips such a matrix.
FINITE, NOT_FINITE, ALL_ZERO, NOT_FLOAT = "finite", "not finite", "all zero", "not floating point"
_SKIPPED = {NOT_FINITE: "contains NaN or Inf", ALL_ZERO: "all zeros"}


def _status(data: torch.Tensor) -> tuple[str, float]:
    """The tensor's status and its Frobenius norm in float64 (NaN for integer tensors)."""
    if not data.is_floating_point():
        return NOT_FLOAT, float("nan")
    if not bool(torch.isfinite(data).all()):
        return NOT_FINITE, float("nan")
    norm = float(torch.linalg.vector_norm(data.to(torch.float64)))
    return (ALL_ZERO if norm == 0 else FINITE), norm


def run(handle: ModelHandle, params: dict | None = None, progress: Progress | None = None) -> OverviewResult:
    """Read each tensor once (streamed) for its Frobenius norm, computed in float64. A matrix with a NaN or
    an infinity, or with only zeros, is marked as such and not analysed: the spectra skip it."""
    start = time.perf_counter()
    rows = handle.tensor_rows()
    tensors = []
    # At most ~200 progress calls: a terminal bar redrawn per tensor cost more than the tensors themselves
    # (16,000 tiny tensors: 7 s of redrawing).
    every = max(1, len(rows) // 200)
    for i, row in enumerate(rows):
        data = handle.source.get(row.name)
        status, norm = _status(data)
        del data
        skipped = row.analysed and status in _SKIPPED
        tensors.append(
            {
                "name": row.name, "shape": "x".join(map(str, row.shape)) or "scalar", "dtype": row.dtype,
                "numel": row.numel, "frobenius_norm": norm, "status": status, "analysed": row.analysed and not skipped,
                "reason": _SKIPPED[status] if skipped else row.reason, "kind": row.kind, "block": row.block,
            }
        )
        if progress is not None and ((i + 1) % every == 0 or i + 1 == len(rows)):
            progress((i + 1) / len(rows), f"{row.name}")
    params_by_block: dict[str, int] = {}
    params_by_kind: dict[str, int] = {}
    for row in rows:
        block = row.block if row.analysed else handle.block(row.name)
        params_by_block[block] = params_by_block.get(block, 0) + row.numel
        for kind, numel in row.parts if row.analysed else (("norms, biases, buffers", row.numel),):
            params_by_kind[kind] = params_by_kind.get(kind, 0) + numel
    return OverviewResult(
        model_name=handle.name,
        fingerprint=handle.fingerprint,
        params=dict(params or {}),
        timings={"total_s": time.perf_counter() - start},
        kind=handle.kind,
        num_params=handle.num_params,
        tensors=tensors,
        params_by_block=params_by_block,
        params_by_kind=params_by_kind,
    )

