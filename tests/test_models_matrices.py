"""Which stored tensors become weight matrices, in which orientation, and under which kind/block."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import models
from models.matrices import MIN_SIDE, block_namer, block_of, classify, kind_of, tower_of
from tests.conftest import TINY_LLAMA

pytestmark = pytest.mark.usefixtures("offline")


def one(name, tensor, **kw):
    mats, skipped = classify(name, tensor, **kw)
    assert skipped is None, skipped
    assert len(mats) == 1, [m.name for m in mats]
    return mats[0]


def skip_reason(name, tensor, **kw) -> str:
    mats, skipped = classify(name, tensor, **kw)
    assert mats == [] and skipped is not None
    assert skipped.name == name and skipped.shape == tuple(tensor.shape)
    return skipped.reason


# ---------------------------------------------------------------------------------------
# Layer types


def test_linear_keeps_out_in_orientation():
    lin = nn.Linear(16, 40)
    m = one("encoder.layers.2.fc1.weight", lin.weight.detach())
    assert m.shape == (40, 16)
    assert torch.equal(m.tensor, lin.weight)
    assert (m.layer_type, m.kind, m.block) == ("linear", "mlp-up", "2")


def test_generic_linear():
    m = one("proj.weight", torch.randn(12, 20))
    assert (m.layer_type, m.kind, m.block, m.name) == ("linear", "linear", "other", "proj.weight")


def test_embedding():
    emb = nn.Embedding(100, 24)
    m = one("embeddings.word_embeddings.weight", emb.weight.detach())
    assert (m.layer_type, m.kind, m.block, m.shape) == ("embedding", "embedding", "embeddings", (100, 24))


def test_conv1d_kernel():
    conv = nn.Conv1d(16, 32, kernel_size=3)
    m = one("encoder.conv.weight", conv.weight.detach())
    assert (m.layer_type, m.kind, m.shape) == ("conv1d", "conv1d", (32, 16, 3))
    assert torch.equal(m.tensor, conv.weight)


def test_conv2d_kernel():
    conv = nn.Conv2d(8, 16, kernel_size=(3, 5))
    m = one("blocks.1.conv.weight", conv.weight.detach())
    assert (m.layer_type, m.kind, m.block, m.shape) == ("conv2d", "conv2d", "1", (16, 8, 3, 5))


def test_five_d_is_unsupported():
    conv = nn.Conv3d(8, 16, kernel_size=3)
    assert skip_reason("conv3d.weight", conv.weight.detach()) == "unsupported kind: 5-D tensor"


def test_one_d_is_skipped_with_reason():
    assert skip_reason("layers.0.norm.weight", torch.ones(64)) == "1-D (bias, norm or scale)"
    assert skip_reason("layers.0.fc.bias", torch.zeros(64)).startswith("1-D")


def test_too_small_is_skipped_with_reason():
    assert skip_reason("token_type_embeddings.weight", torch.randn(2, 384)) == f"too small: smallest side 2 < {MIN_SIDE}"
    assert skip_reason("classifier.weight", torch.randn(64, MIN_SIDE - 1)).startswith("too small")
    assert skip_reason("cls_token", torch.randn(1, 768)).startswith("too small: a single row")
    one("classifier.weight", torch.randn(64, MIN_SIDE))  # the boundary is analysed


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool, torch.uint8])
def test_non_float_is_skipped(dtype):
    t = torch.zeros(32, 32, dtype=dtype)
    assert skip_reason("embeddings.position_ids", t) == f"not floating point ({str(dtype).removeprefix('torch.')})"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_are_analysed(dtype):
    assert one("fc.weight", torch.randn(16, 16).to(dtype)).tensor.dtype == dtype


# ---------------------------------------------------------------------------------------
# Fused attention weights


def test_gpt2_conv1d_is_transposed_and_c_attn_split():
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    n_embd = 32
    model = GPT2Model(GPT2Config(n_embd=n_embd, n_layer=1, n_head=4, vocab_size=64, n_positions=16)).eval()
    state = model.state_dict()
    c_attn = state["h.0.attn.c_attn.weight"]
    assert c_attn.shape == (n_embd, 3 * n_embd)  # Conv1D stores (in, out)

    mats, skipped = classify("h.0.attn.c_attn.weight", c_attn, model_type="gpt2", num_heads=4)
    assert skipped is None
    assert [m.name for m in mats] == [f"h.0.attn.c_attn.weight:{p}" for p in "qkv"]
    assert [m.kind for m in mats] == ["attention-q", "attention-k", "attention-v"]
    assert all(m.block == "0" and m.layer_type == "linear" and m.shape == (n_embd, n_embd) for m in mats)
    for i, m in enumerate(mats):
        assert torch.equal(m.tensor, c_attn.T[i * n_embd : (i + 1) * n_embd])

    # The parts act like nn.Linear weights: they reproduce GPT-2's own q, k, v projections.
    x = torch.randn(2, 5, n_embd)
    with torch.no_grad():
        q, k, v = model.h[0].attn.c_attn(x).split(n_embd, dim=2)
        bias = state["h.0.attn.c_attn.bias"].split(n_embd)
        for m, ref, b in zip(mats, (q, k, v), bias):
            torch.testing.assert_close(nn.functional.linear(x, m.tensor, b), ref)

    for name, out_in, kind in [
        ("h.0.attn.c_proj.weight", (n_embd, n_embd), "attention-out"),
        ("h.0.mlp.c_fc.weight", (4 * n_embd, n_embd), "mlp-up"),
        ("h.0.mlp.c_proj.weight", (n_embd, 4 * n_embd), "mlp-down"),
    ]:
        m = one(name, state[name], model_type="gpt2")
        assert (m.shape, m.kind) == (out_in, kind)
        assert torch.equal(m.tensor, state[name].T)
    # Not transposed when the model is not GPT-2 style, nor for its embeddings.
    assert one("h.0.mlp.c_fc.weight", state["h.0.mlp.c_fc.weight"], model_type="llama").shape == (n_embd, 4 * n_embd)
    assert one("wte.weight", state["wte.weight"], model_type="gpt2").shape == (64, n_embd)


def test_gpt2_folder_through_the_handle(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16))
    model.save_pretrained(tmp_path / "gpt2")
    handle = models.load(str(tmp_path / "gpt2"))
    assert handle.kind == "causal-lm" and handle.model_type == "gpt2"
    c_attn = model.state_dict()["transformer.h.1.attn.c_attn.weight"]
    got = {m.name: m.tensor for m in handle.iter_matrices(names={"transformer.h.1.attn.c_attn.weight:k"})}
    assert list(got) == ["transformer.h.1.attn.c_attn.weight:k"]
    assert torch.equal(got["transformer.h.1.attn.c_attn.weight:k"], c_attn.T[32:64])
    rows = {r.name: r for r in handle.tensor_rows()}
    assert rows["transformer.h.1.attn.c_attn.weight"].reason == "split into q, k, v"
    assert rows["transformer.h.1.attn.c_attn.weight"].kind == "attention-q+attention-k+attention-v"
    assert [kind for kind, _ in rows["transformer.h.1.attn.c_attn.weight"].parts] == [
        "attention-q", "attention-k", "attention-v"]


def test_generic_fused_qkv_split_in_thirds():
    w = torch.randn(3 * 24, 24)
    mats, _ = classify("blocks.3.attn.qkv.weight", w)
    assert [m.name for m in mats] == [f"blocks.3.attn.qkv.weight:{p}" for p in "qkv"]
    assert [m.kind for m in mats] == ["attention-q", "attention-k", "attention-v"]
    assert all(m.block == "3" for m in mats)
    for m, ref in zip(mats, w.chunk(3)):
        assert torch.equal(m.tensor, ref)


def test_fused_qkv_not_divisible_by_three_stays_whole():
    m = one("blocks.0.attn.qkv.weight", torch.randn(50, 24))
    assert (m.name, m.kind, m.shape) == ("blocks.0.attn.qkv.weight", "attention-qkv", (50, 24))


def test_multihead_attention_in_proj_split():
    torch.manual_seed(0)
    embed = 16
    mha = nn.MultiheadAttention(embed, num_heads=1, batch_first=True).eval()
    w = mha.in_proj_weight.detach()
    mats, _ = classify("layers.0.self_attn.in_proj_weight", w)
    assert [m.name for m in mats] == [f"layers.0.self_attn.in_proj_weight:{p}" for p in "qkv"]
    for m, ref in zip(mats, w.chunk(3)):  # the module's own q/k/v chunks
        assert m.shape == (embed, embed) and torch.equal(m.tensor, ref)

    # The q and k parts reproduce the module's attention weights.
    x = torch.randn(1, 6, embed)
    with torch.no_grad():
        _, attn = mha(x, x, x, need_weights=True)
        bq, bk, _ = mha.in_proj_bias.chunk(3)
        q = nn.functional.linear(x, mats[0].tensor, bq)
        k = nn.functional.linear(x, mats[1].tensor, bk)
        ref = torch.softmax(q @ k.transpose(1, 2) / embed**0.5, dim=-1)
    torch.testing.assert_close(attn, ref)


def test_neox_query_key_value_is_deinterleaved_per_head():
    from transformers import GPTNeoXConfig, GPTNeoXModel

    torch.manual_seed(0)
    heads, hidden = 4, 32
    head_dim = hidden // heads
    model = GPTNeoXModel(GPTNeoXConfig(
        hidden_size=hidden, num_attention_heads=heads, num_hidden_layers=1, intermediate_size=64,
        vocab_size=64, max_position_embeddings=16,
    )).eval()
    attn = model.layers[0].attention
    w = attn.query_key_value.weight.detach()
    mats, _ = classify("gpt_neox.layers.0.attention.query_key_value.weight", w, num_heads=heads)
    assert [m.kind for m in mats] == ["attention-q", "attention-k", "attention-v"]
    assert all(m.shape == (hidden, hidden) for m in mats)

    # GPT-NeoX's own split: view(..., heads, 3 * head_dim) then chunk(3) on the last axis.
    x = torch.randn(1, 5, hidden)
    with torch.no_grad():
        qkv = nn.functional.linear(x, w).view(1, 5, heads, 3 * head_dim)
        refs = [t.reshape(1, 5, hidden) for t in qkv.chunk(3, dim=-1)]
    for m, ref in zip(mats, refs):
        torch.testing.assert_close(nn.functional.linear(x, m.tensor), ref)

    # Without the head count, the plain thirds are not the true projections.
    plain, _ = classify("gpt_neox.layers.0.attention.query_key_value.weight", w)
    assert not torch.equal(plain[0].tensor, mats[0].tensor)


def test_neox_folder_uses_config_head_count(tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(
        hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64,
        vocab_size=64, max_position_embeddings=16,
    ))
    model.save_pretrained(tmp_path / "neox")
    handle = models.load(str(tmp_path / "neox"))
    name = "gpt_neox.layers.0.attention.query_key_value.weight"
    expected, _ = classify(name, model.state_dict()[name], num_heads=4)
    got = {m.name: m.tensor for m in handle.iter_matrices(names={f"{name}:{p}" for p in "qkv"})}
    assert list(got) == [m.name for m in expected]
    for m in expected:
        assert torch.equal(got[m.name], m.tensor)


# ---------------------------------------------------------------------------------------
# Kinds and blocks on real architectures


def _assert_kinds(state: dict, expected: dict, model_type: str) -> None:
    for name, (kind, block, layer_type) in expected.items():
        m = one(name, state[name], model_type=model_type, num_heads=4)
        assert (m.kind, m.block, m.layer_type) == (kind, block, layer_type), name


def test_bert_kinds_and_blocks(tiny_bert):
    expected = {
        "embeddings.word_embeddings.weight": ("embedding", "embeddings", "embedding"),
        "embeddings.position_embeddings.weight": ("embedding", "embeddings", "embedding"),
        "encoder.layer.1.attention.self.query.weight": ("attention-q", "1", "linear"),
        "encoder.layer.1.attention.self.key.weight": ("attention-k", "1", "linear"),
        "encoder.layer.1.attention.self.value.weight": ("attention-v", "1", "linear"),
        "encoder.layer.1.attention.output.dense.weight": ("attention-out", "1", "linear"),
        "encoder.layer.1.intermediate.dense.weight": ("mlp-up", "1", "linear"),
        "encoder.layer.1.output.dense.weight": ("mlp-down", "1", "linear"),
        "pooler.dense.weight": ("pooler", "head", "linear"),
    }
    state = tiny_bert.state_dict()
    _assert_kinds(state, expected, model_type="bert")
    analysed = {n for n, t in state.items() if classify(n, t)[1] is None}
    assert analysed == {n.replace(".1.", f".{i}.") for n in expected for i in (0, 1)}


def test_llama_kinds_and_blocks():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(TINY_LLAMA, num_hidden_layers=2)
    state = LlamaForCausalLM(LlamaConfig(**cfg)).state_dict()
    expected = {
        "model.embed_tokens.weight": ("embedding", "embeddings", "embedding"),
        "model.layers.1.self_attn.q_proj.weight": ("attention-q", "1", "linear"),
        "model.layers.1.self_attn.k_proj.weight": ("attention-k", "1", "linear"),
        "model.layers.1.self_attn.v_proj.weight": ("attention-v", "1", "linear"),
        "model.layers.1.self_attn.o_proj.weight": ("attention-out", "1", "linear"),
        "model.layers.1.mlp.gate_proj.weight": ("mlp-gate", "1", "linear"),
        "model.layers.1.mlp.up_proj.weight": ("mlp-up", "1", "linear"),
        "model.layers.1.mlp.down_proj.weight": ("mlp-down", "1", "linear"),
        "lm_head.weight": ("head", "head", "linear"),
    }
    _assert_kinds(state, expected, model_type="llama")
    assert skip_reason("model.norm.weight", state["model.norm.weight"]).startswith("1-D")
    assert block_of("model.norm.weight") == "head"


@pytest.mark.parametrize(("name", "kind", "block"), [
    ("blk.7.attn_q.weight", "attention-q", "7"),
    ("blk.7.ffn_down.weight", "mlp-down", "7"),
    ("token_embd.weight", "embedding", "embeddings"),
    ("output.weight", "head", "head"),
    ("transformer.resblocks.11.attn.out_proj.weight", "attention-out", "11"),
    ("vision_model.encoder.layers.3.mlp.fc2.weight", "mlp-down", "3"),
    ("gpt_neox.layers.0.mlp.dense_h_to_4h.weight", "mlp-up", "0"),
    ("classifier.weight", "head", "head"),
])
def test_other_naming_schemes(name, kind, block):
    assert (kind_of(name), block_of(name)) == (kind, block)


def test_meta_tensors_plan_the_same_as_data(tiny_bert):
    """tensor_rows() plans from shapes only; the plan must match what the data yields."""
    for name, t in tiny_bert.state_dict().items():
        planned, p_skip = classify(name, torch.empty(t.shape, device="meta", dtype=t.dtype))
        real, r_skip = classify(name, t)
        assert [(m.name, m.kind, m.shape) for m in planned] == [(m.name, m.kind, m.shape) for m in real]
        assert p_skip == r_skip


def test_first_conv_layer_with_three_input_channels_is_analysed():
    # (64, 3, 7, 7): 3 x 49 pooled eigenvalues, as WeightWatcher counts them.
    mats, skipped = classify("conv1.weight", torch.randn(64, 3, 7, 7))
    assert skipped is None and mats[0].layer_type == "conv2d"
    _, skipped = classify("conv1.weight", torch.randn(64, 3, 1, 1))
    assert skipped.reason == "too small: smallest side 3 < 8"
    _, skipped = classify("conv1d.weight", torch.randn(16, 1, 5))
    assert skipped.reason == "too small: smallest side 1 x 5 kernel positions < 8"


# ---------------------------------------------------------------------------------------
# Blocks keyed by tower


@pytest.mark.parametrize(("name", "tower"), [
    ("text_model.encoder.layers.3.mlp.fc2.weight", "text"),
    ("vision_model.embeddings.patch_embedding.weight", "vision"),
    ("visual.transformer.resblocks.3.attn.in_proj_weight", "vision"),
    ("text_projection.weight", "text"),
    ("visual_projection.weight", "vision"),
    ("encoder.block.3.layer.0.SelfAttention.q.weight", "encoder"),
    ("model.decoder.layers.3.fc1.weight", "decoder"),
    ("transformer.encoder.layers.0.self_attention.query_key_value.weight", "encoder"),
    ("enc.blk.0.attn_q.weight", "encoder"),
    ("encoder.layer.3.output.dense.weight", "encoder"),
    # Heads named "decoder" sit below a head module, not at the top: no tower.
    ("cls.predictions.decoder.weight", None),
    ("lm_head.decoder.weight", None),
    ("model.layers.3.mlp.down_proj.weight", None),
    ("transformer.resblocks.3.attn.out_proj.weight", None),
    ("textual.weight", None),
])
def test_tower_of(name, tower):
    assert tower_of(name) == tower


def test_block_namer_keys_blocks_by_tower_only_where_there_are_several():
    clip = ["text_model.embeddings.token_embedding.weight", "text_model.encoder.layers.3.mlp.fc1.weight",
            "text_model.encoder.layers.10.mlp.fc1.weight", "vision_model.encoder.layers.3.mlp.fc1.weight",
            "text_projection.weight", "logit_scale"]
    block = block_namer(clip)
    assert [block(n) for n in clip] == ["text/embeddings", "text/3", "text/10", "vision/3", "text/other", "other"]

    t5 = ["shared.weight", "encoder.block.3.layer.1.DenseReluDense.wi.weight",
          "decoder.block.3.layer.2.DenseReluDense.wo.weight", "lm_head.weight"]
    assert [block_namer(t5)(n) for n in t5] == ["other", "encoder/3", "decoder/3", "head"]
    bart = ["model.shared.weight", "model.encoder.layers.3.fc1.weight", "model.decoder.layers.3.fc1.weight"]
    assert [block_namer(bart)(n) for n in bart] == ["other", "encoder/3", "decoder/3"]

    # OpenCLIP keeps its text tower unprefixed beside visual.*: the two block 3s stay apart.
    open_clip = ["transformer.resblocks.3.attn.in_proj_weight", "visual.transformer.resblocks.3.attn.in_proj_weight"]
    assert [block_namer(open_clip)(n) for n in open_clip] == ["3", "vision/3"]

    for single in (
        ["embeddings.word_embeddings.weight", "encoder.layer.3.output.dense.weight", "cls.predictions.decoder.weight"],
        ["model.embed_tokens.weight", "model.layers.3.mlp.down_proj.weight", "lm_head.weight"],
        ["token_embd.weight", "blk.3.ffn_down.weight", "output.weight"],
        ["vision_model.encoder.layers.3.mlp.fc2.weight", "vision_model.post_layernorm.weight"],
    ):
        block = block_namer(single)
        assert [block(n) for n in single] == [block_of(n) for n in single], single


def _save(model, folder) -> models.ModelHandle:
    model.save_pretrained(folder, safe_serialization=True)
    return models.load(str(folder))


def test_clip_blocks_are_keyed_by_tower_through_spectra(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    import charts.spectra
    import diagnostics.directions
    import diagnostics.spectra

    torch.manual_seed(0)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(tower, vocab_size=64, max_position_embeddings=16, bos_token_id=0, eos_token_id=1),
        vision_config=dict(tower, image_size=32, patch_size=8), projection_dim=16,
    )
    handle = _save(CLIPModel(config), tmp_path / "clip")
    assert handle.kind == "clip-like"
    blocks = {m.block for m in handle.planned_matrices()}
    assert {"text/0", "text/1", "vision/0", "vision/1", "text/embeddings", "vision/embeddings"} <= blocks
    assert handle.block("vision_model.post_layernorm.weight") == "vision/head"

    fig = charts.spectra.mean_alpha_per_block(diagnostics.spectra.run(handle))
    x = list(fig.data[0].x)
    assert len(x) == len(set(x))
    assert x.index("text/0") < x.index("text/1") < x.index("vision/0") < x.index("vision/1")

    # The directions page opens on the middle MLP down-projection of one tower.
    catalog = diagnostics.directions.matrix_catalog(handle)
    default = next(c for c in catalog if c["name"] == diagnostics.directions.default_matrix(catalog))
    assert default["kind"] == "mlp-down" and default["block"] in {"text/1", "vision/1"}


def test_block_order_sorts_numbers_within_each_tower():
    from charts.common import block_order

    assert block_order(["head", "10", "2", "other", "embeddings", "1"]) == ["embeddings", "1", "2", "10", "head", "other"]
    blocks = ["vision/10", "text/2", "head", "text/10", "vision/embeddings", "decoder/1", "text/embeddings",
              "embeddings", "vision/2", "text/head", "encoder/1", "other"]
    assert block_order(blocks) == [
        "embeddings", "text/embeddings", "text/2", "text/10", "text/head", "vision/embeddings", "vision/2",
        "vision/10", "encoder/1", "decoder/1", "head", "other",
    ]


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_encoder_decoder_blocks_are_keyed_by_tower(tmp_path, arch):
    import transformers

    import diagnostics.overview

    torch.manual_seed(0)
    if arch == "t5":
        model = transformers.T5ForConditionalGeneration(transformers.T5Config(
            vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4))
    else:
        model = transformers.BartForConditionalGeneration(transformers.BartConfig(
            vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32))
    handle = _save(model, tmp_path / arch)
    blocks = {m.block for m in handle.planned_matrices()}
    assert {"encoder/0", "encoder/1", "decoder/0", "decoder/1"} <= blocks
    assert not {"0", "1"} & blocks
    # The overview counts the norms and biases a tower's block holds under the same key.
    by_block = diagnostics.overview.run(handle).params_by_block
    assert by_block["encoder/0"] > sum(m.tensor.numel() for m in handle.planned_matrices() if m.block == "encoder/0")


def test_single_tower_builtin_keeps_plain_blocks():
    handle = models.load("builtin:minilm")
    blocks = {m.block for m in handle.planned_matrices()}
    assert {str(i) for i in range(6)} <= blocks
    assert not any("/" in b for b in blocks)
    assert blocks - {str(i) for i in range(6)} <= {"embeddings", "head", "other"}

