"""The overview diagnostic: every tensor listed, norms computed in float64, NaN/Inf and all-zero tensors
flagged, sums consistent."""

import math

import torch
from safetensors.torch import save_file

from diagnostics import overview
from models import load


def test_overview_lists_every_tensor_with_norms_and_fates(tmp_path):
    tensors = {
        "layers.0.mlp.up_proj.weight": torch.arange(64 * 32, dtype=torch.float32).reshape(64, 32) / 100,
        "layers.0.mlp.up_proj.bias": torch.ones(64),
        "layers.1.self_attn.q_proj.weight": torch.eye(32),
        "position_ids": torch.arange(10),
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, path)
    result = overview.run(load(str(path)))
    frame = result.to_frame().set_index("name")

    assert set(frame.index) == set(tensors)
    w = tensors["layers.0.mlp.up_proj.weight"].double()
    assert math.isclose(frame.loc["layers.0.mlp.up_proj.weight", "frobenius_norm"], float(w.norm()), rel_tol=1e-12)
    assert frame.loc["layers.1.self_attn.q_proj.weight", "frobenius_norm"] == math.sqrt(32)
    assert math.isnan(frame.loc["position_ids", "frobenius_norm"])
    assert frame.loc["position_ids", "status"] == "not floating point"
    assert (frame.drop(index="position_ids")["status"] == "finite").all()
    assert bool(frame.loc["layers.0.mlp.up_proj.weight", "analysed"])
    assert frame.loc["layers.0.mlp.up_proj.bias", "reason"].startswith("1-D")
    assert frame.loc["position_ids", "reason"].startswith("not floating point")
    assert result.num_params == sum(t.numel() for t in tensors.values())
    assert sum(result.params_by_block.values()) == result.num_params
    assert sum(result.params_by_kind.values()) == result.num_params
    assert result.params_by_block["0"] == 64 * 32 + 64
    assert result.params_by_kind["attention-q"] == 32 * 32


def test_nan_inf_and_all_zero_matrices_are_flagged_and_not_analysed(tmp_path):
    nan, inf = torch.randn(16, 8), torch.randn(16, 8)
    nan[2, 3], inf[0, 0] = float("nan"), float("-inf")
    path = tmp_path / "m.safetensors"
    save_file({"a.weight": nan, "b.weight": inf, "c.weight": torch.zeros(16, 8), "d.bias": torch.zeros(16),
               "e.weight": torch.ones(16, 8)}, path)
    frame = overview.run(load(str(path))).to_frame().set_index("name")
    assert dict(frame["status"]) == {"a.weight": "not finite", "b.weight": "not finite", "c.weight": "all zero",
                                     "d.bias": "all zero", "e.weight": "finite"}
    assert dict(frame["analysed"]) == {"a.weight": False, "b.weight": False, "c.weight": False, "d.bias": False,
                                       "e.weight": True}
    assert frame.loc["a.weight", "reason"] == frame.loc["b.weight", "reason"] == "contains NaN or Inf"
    assert frame.loc["c.weight", "reason"] == "all zeros" and frame.loc["d.bias", "reason"].startswith("1-D")
    assert math.isnan(frame.loc["a.weight", "frobenius_norm"]) and frame.loc["c.weight", "frobenius_norm"] == 0.0
    assert frame.loc["e.weight", "frobenius_norm"] == math.sqrt(128)


def test_overview_reports_progress_to_the_end(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.zeros(16, 16), "b.weight": torch.zeros(16, 16)}, path)
    seen = []
    overview.run(load(str(path)), progress=lambda f, m: seen.append((f, m)))
    assert [f for f, _ in seen] == [0.5, 1.0]
    assert {m for _, m in seen} == {"a.weight", "b.weight"}


def test_overview_result_round_trips_through_its_dict(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.randn(16, 16), "ids": torch.arange(3)}, path)
    result = overview.run(load(str(path)))
    again = overview.OverviewResult.from_dict(result.to_dict())
    assert again.to_dict() == result.to_dict()
    assert again.tensors[0]["name"] == result.tensors[0]["name"]


def test_a_fused_attention_weight_counts_once_per_part(tmp_path):
    """nn.MultiheadAttention's in_proj_weight stacks q, k and v: 'Parameters per tensor kind' counts
    each third under its own kind (spectra analyses them apart too), never the whole under q."""
    mha = torch.nn.MultiheadAttention(16, 4)
    tensors = {"layers.0.self_attn.in_proj_weight": mha.in_proj_weight.detach().clone(),
               "layers.0.self_attn.out_proj.weight": mha.out_proj.weight.detach().clone()}
    path = tmp_path / "mha.safetensors"
    save_file(tensors, path)
    result = overview.run(load(str(path)))
    assert result.params_by_kind == {"attention-q": 16 * 16, "attention-k": 16 * 16, "attention-v": 16 * 16,
                                     "attention-out": 16 * 16}
    row = result.to_frame().set_index("name").loc["layers.0.self_attn.in_proj_weight"]
    assert row["kind"] == "attention-q+attention-k+attention-v" and row["reason"] == "split into q, k, v"
    assert sum(result.params_by_kind.values()) == result.num_params
