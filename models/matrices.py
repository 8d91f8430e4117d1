"""Which stored tensors are weight matrices worth analysing, and in which orientation.

Every analysed matrix is yielded in the ``nn.Linear`` convention, ``(out_features,
in_features)``: GPT-2's ``Conv1D`` stores ``(in, out)`` and is transposed; fused
query/key/value weights are split into their three projections; convolution kernels keep
their full shape (``(out, in, k)`` or ``(out, in, kh, kw)``) so that diagnostics can choose
how to treat them. Tensors that are not analysed are reported with the reason, never
dropped silently.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

# Smallest side a matrix needs to carry a spectrum worth looking at. Smaller ones (BERT's
# 2-row token-type table, classifier heads with two classes) are listed as "too small".
MIN_SIDE = 8

_BLOCK_RE = re.compile(r"(?:^|\.)(?:layers?|h|blocks?|blk|resblocks)\.(\d+)(?:\.|$)")

# A tower is the name's first part after wrapper prefixes: dual encoders (CLIP, SigLIP, OpenCLIP's
# visual) and encoder-decoders (T5, BART, Whisper; GGUF's enc./dec.). CLIP's text_projection and
# visual_projection end their towers. Anchored at the start, so that heads such as BERT's
# cls.predictions.decoder are no tower.
_TOWER_RE = re.compile(
    r"^(?:(?:model|module|transformer|base_model)\.)*"
    r"(text_model|vision_model|text|visual|vision|encoder|decoder|enc|dec)(?:\.|_projection\b)"
)
_TOWER_NAMES = {"text_model": "text", "vision_model": "vision", "visual": "vision", "enc": "encoder", "dec": "decoder"}

# Ordered: the first pattern that matches a (lower-cased) name gives the kind.
_KIND_PATTERNS: list[tuple[str, str]] = [
    (r"(in_proj_weight|c_attn|qkv|query_key_value|wqkv)", "attention-qkv"),
    (r"(q_proj|\.query\b|attn_q\b|\.q\b|\.wq\b)", "attention-q"),
    (r"(k_proj|\.key\b|attn_k\b|\.k\b|\.wk\b)", "attention-k"),
    (r"(v_proj|\.value\b|attn_v\b|\.v\b|\.wv\b)", "attention-v"),
    (r"(o_proj|out_proj|attention\.output\.dense|attn\.c_proj|attn_output|\.wo\b)", "attention-out"),
    (r"(gate_proj|ffn_gate|\.w1\b)", "mlp-gate"),
    (r"(up_proj|ffn_up|intermediate\.dense|mlp\.c_fc|\.fc1\b|\.w3\b|dense_h_to_4h)", "mlp-up"),
    (r"(down_proj|ffn_down|output\.dense|mlp\.c_proj|\.fc2\b|\.w2\b|dense_4h_to_h)", "mlp-down"),
    (r"(lm_head|output\.weight$|^output\b|classifier|\bhead\b)", "head"),
    (r"(embed|wte|wpe|token_embd|word_embeddings|position_embeddings|token_type)", "embedding"),
    (r"pooler", "pooler"),
]


@dataclass(frozen=True)
class Skipped:
    """A stored tensor that is not analysed, and why."""

    name: str
    shape: tuple[int, ...]
    reason: str


@dataclass
class WeightMatrix:
    """One analysable weight, in (out, in) orientation (conv kernels keep their trailing dims).

    ``name`` is the identifier every diagnostic accepts: the stored tensor name, plus
    ``:q``/``:k``/``:v`` for the parts of a fused attention weight.
    """

    name: str
    tensor: torch.Tensor
    kind: str
    block: str
    layer_type: str  # linear, embedding, conv1d, conv2d

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)


def block_of(name: str) -> str:
    """The transformer block a tensor belongs to ("3"), or a coarse group for the rest, ignoring towers;
    :func:`block_namer` adds the tower where a model has several."""
    m = _BLOCK_RE.search(name)
    if m:
        return m.group(1)
    low = name.lower()
    if any(t in low for t in ("embed", "wte", "wpe", "token_embd")):
        return "embeddings"
    if any(t in low for t in ("lm_head", "classifier", "output", "head", "pooler", "norm")):
        return "head"
    return "other"


def tower_of(name: str) -> str | None:
    """The tower a tensor belongs to ("text", "vision", "encoder", "decoder"), or None."""
    m = _TOWER_RE.match(name)
    return _TOWER_NAMES.get(m.group(1), m.group(1)) if m else None


def block_namer(names: Iterable[str]) -> Callable[[str], str]:
    """A function giving each tensor of the model with these tensor names its block: "text/3" and
    "vision/3" where the model has several towers, plain "3" where it has one (BERT's encoder.layer.3
    is its only tower). Numbered blocks outside any tower count as one more tower: OpenCLIP keeps its
    text tower at the top level beside visual.*, and its two block 3s must not merge."""
    towers = set()
    for name in names:
        tower = tower_of(name)
        if tower is not None or _BLOCK_RE.search(name):
            towers.add(tower)
    if len(towers) < 2:
        return block_of

    def block(name: str) -> str:
        tower = tower_of(name)
        return f"{tower}/{block_of(name)}" if tower else block_of(name)

    return block


def kind_of(name: str) -> str:
    low = name.lower()
    for pattern, kind in _KIND_PATTERNS:
        if re.search(pattern, low):
            return kind
    return "linear"


def _is_gpt2_conv1d(name: str, model_type: str | None) -> bool:
    # GPT-2 style checkpoints store their projections as Conv1D with (in, out) weights.
    return model_type in {"gpt2", "gpt_bigcode", "openai-gpt"} and bool(
        re.search(r"\.(c_attn|c_proj|c_fc|q_attn)\.weight$", name)
    )


def _split_fused_qkv(name: str, w: torch.Tensor, num_heads: int | None) -> list[tuple[str, torch.Tensor]] | None:
    """Split a fused (3E, E) attention weight into q, k and v, or None if it cannot be."""
    out = w.shape[0]
    if out % 3:
        return None
    if "query_key_value" in name.lower() and num_heads and out % (3 * num_heads) == 0:
        # GPT-NeoX / BLOOM interleave per head: rows are (head, [q|k|v], head_dim).
        head_dim = out // (3 * num_heads)
        parts = w.reshape(num_heads, 3, head_dim, -1)
        return [(f"{name}:{p}", parts[:, i].reshape(num_heads * head_dim, -1)) for i, p in enumerate("qkv")]
    size = out // 3
    return [(f"{name}:{p}", w[i * size : (i + 1) * size]) for i, p in enumerate("qkv")]


def classify(
    name: str,
    tensor: torch.Tensor,
    *,
    model_type: str | None = None,
    num_heads: int | None = None,
    block_name: Callable[[str], str] = block_of,
) -> tuple[list[WeightMatrix], Skipped | None]:
    """Turn one stored tensor into the weight matrices it holds, or the reason it holds none.

    ``block_name``: the model's :func:`block_namer`; the default knows no towers."""
    shape = tuple(tensor.shape)
    if not tensor.is_floating_point():
        return [], Skipped(name, shape, f"not floating point ({str(tensor.dtype).removeprefix('torch.')})")
    if tensor.ndim < 2:
        return [], Skipped(name, shape, "1-D (bias, norm or scale)")
    if tensor.ndim > 4:
        return [], Skipped(name, shape, f"unsupported kind: {tensor.ndim}-D tensor")
    low = name.lower()
    if tensor.ndim == 2 and tensor.shape[0] == 1:
        return [], Skipped(name, shape, "too small: a single row (a buffer or learned token)")
    # A conv kernel pools one (out, in) slice per kernel position, so a first layer such as
    # (64, 3, 7, 7) still has 3 x 49 eigenvalues; count those, not its smallest side.
    positions = math.prod(shape[2:])
    if min(shape[:2]) * positions < MIN_SIDE:
        what = f"smallest side {min(shape[:2])}" + (f" x {positions} kernel positions" if positions > 1 else "")
        return [], Skipped(name, shape, f"too small: {what} < {MIN_SIDE}")
    block = block_name(name)
    if tensor.ndim == 3:
        return [WeightMatrix(name, tensor, "conv1d", block, "conv1d")], None
    if tensor.ndim == 4:
        return [WeightMatrix(name, tensor, "conv2d", block, "conv2d")], None

    if _is_gpt2_conv1d(name, model_type):
        tensor = tensor.T
    kind = kind_of(name)
    layer_type = "embedding" if kind == "embedding" else "linear"
    if kind == "attention-qkv":
        parts = _split_fused_qkv(name, tensor, num_heads)
        if parts is not None:
            return [
                WeightMatrix(f"{name}:{part_name[-1]}", part, f"attention-{part_name[-1]}", block, "linear")
                for part_name, part in parts
            ], None
    return [WeightMatrix(name, tensor, kind, block, layer_type)], None
