"""Every loader path of ``models.load``: built-ins, HF folders, safetensors, state dicts, GGUF, hub."""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import models
from models import OrthoscopeError
from models.safety import sniff
from models.sources import GGUFSource, SafetensorsSource, StateDictSource
from tests.conftest import llama_cpp_permute

pytestmark = pytest.mark.usefixtures("offline")

TINY_BERT_MATRICES = 2 * 6 + 3  # per layer q, k, v, attn-out, up, down; word/position embeddings, pooler


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


def _assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name], tensor), name


def _stored(handle) -> dict[str, torch.Tensor]:
    return {meta.name: handle.source.get(meta.name) for meta in handle.source.metas()}


# ---------------------------------------------------------------------------------------
# builtin:minilm


@pytest.fixture(scope="module")
def minilm():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield models.load("builtin:minilm")


def _minilm_expected_names() -> set[str]:
    per_layer = [
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense",
    ]
    names = {f"encoder.layer.{i}.{p}.weight" for i in range(6) for p in per_layer}
    return names | {
        "embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight", "pooler.dense.weight",
    }


def test_minilm_metadata(minilm):
    assert minilm.name == "all-MiniLM-L6-v2"
    assert minilm.spec == "builtin:minilm"
    assert minilm.kind == "encoder"
    assert minilm.model_type == "bert"
    assert minilm.num_params == 22713728
    assert len(minilm.fingerprint) == 64 and int(minilm.fingerprint, 16) >= 0
    assert isinstance(minilm.source, SafetensorsSource)
    assert set(minilm.matrix_names()) == _minilm_expected_names()
    skipped = {s.name: s.reason for s in minilm.skipped()}
    assert skipped["embeddings.token_type_embeddings.weight"].startswith("too small")
    assert skipped["embeddings.position_ids"].startswith("not floating point")
    assert skipped["encoder.layer.0.attention.self.query.bias"].startswith("1-D")
    rows = minilm.tensor_rows()
    assert len(rows) == len(minilm.source.metas())
    assert sum(r.analysed for r in rows) == 39


def test_minilm_matrices_equal_the_safetensors_file(minilm):
    file_tensors = load_file(str(minilm.source.files[0]))
    mats = list(minilm.iter_matrices())
    assert len(mats) == 39
    assert {m.name for m in mats} == _minilm_expected_names()
    for m in mats:
        assert torch.equal(m.tensor, file_tensors[m.name]), m.name
    query = next(m for m in mats if m.name == "encoder.layer.3.attention.self.query.weight")
    assert (query.kind, query.block, query.layer_type, query.shape) == ("attention-q", "3", "linear", (384, 384))


def test_minilm_module_and_tokenizer(minilm):
    from transformers import BertModel

    module = minilm.module()
    assert type(module) is BertModel
    assert not module.training
    state = module.state_dict()
    for m in minilm.iter_matrices():
        assert torch.equal(state[m.name], m.tensor), m.name
    tok = minilm.tokenizer()
    enc = tok("hello world", return_tensors="pt")
    assert enc["input_ids"].tolist() == [[101, 7592, 2088, 102]]
    with torch.no_grad():
        out = module(**enc).last_hidden_state
    assert out.shape == (1, 4, 384) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------
# builtin:smollm2 (GGUF Q4_1); transformers' own GGUF load takes ~30 s, so it happens once.


@pytest.fixture(scope="module")
def smollm2():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        handle = models.load("builtin:smollm2")
        state = {k: v.detach() for k, v in handle.module().state_dict().items()}
        yield handle, state


def test_smollm2_metadata_and_names(smollm2):
    handle, state = smollm2
    assert handle.name == "SmolLM2-135M-Instruct (GGUF Q4_1)"
    assert handle.kind == "causal-lm"
    assert handle.model_type == "llama"
    assert isinstance(handle.source, GGUFSource)
    metas = {m.name: m for m in handle.source.metas()}
    # Transformers names, not llama.cpp's (blk.0.attn_q.weight).
    assert metas["model.layers.0.self_attn.q_proj.weight"].shape == (576, 576)
    assert metas["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert metas["model.layers.0.self_attn.q_proj.weight"].dtype == "Q4_1"
    assert not any(n.startswith(("blk.", "token_embd", "output")) for n in metas)
    # Every stored tensor is a tensor of the transformers module (lm_head is tied to the embedding).
    assert set(metas) | {"lm_head.weight"} == set(state)
    assert len(handle.matrix_names()) == 30 * 7 + 1
    assert handle.num_params == sum(v.numel() for k, v in state.items() if k != "lm_head.weight")


def test_smollm2_matrices_equal_transformers_gguf_load(smollm2):
    handle, state = smollm2
    seen = set()
    for m in handle.iter_matrices():
        assert m.tensor.dtype == torch.float32
        assert torch.equal(m.tensor, state[m.name]), m.name
        seen.add(m.name)
    assert {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(30) for p in "qk"} <= seen
    for meta in handle.source.metas():  # the 1-D norms too
        if len(meta.shape) == 1:
            assert torch.equal(handle.source.get(meta.name), state[meta.name]), meta.name


def test_smollm2_unpermute_is_needed(smollm2):
    """Control: the raw dequantised q/k rows are in llama.cpp's order and differ from transformers'."""
    from gguf.quants import dequantize

    handle, state = smollm2
    raw = handle.source._tensors["model.layers.0.self_attn.q_proj.weight"]
    data = torch.from_numpy(np.asarray(dequantize(raw.data, raw.tensor_type)).reshape(576, 576).copy())
    assert not torch.equal(data, state["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(torch.from_numpy(llama_cpp_permute(state["model.layers.0.self_attn.q_proj.weight"].numpy(), 9)), data)


# ---------------------------------------------------------------------------------------
# Local HF folders


def test_hf_folder(tiny_bert_folder, tiny_bert):
    from transformers import BertModel

    handle = models.load(str(tiny_bert_folder))
    assert handle.name == "tiny-bert"
    assert handle.kind == "encoder"
    assert isinstance(handle.source, SafetensorsSource)
    _assert_same_tensors(_stored(handle), _state(tiny_bert))
    mats = list(handle.iter_matrices())
    assert len(mats) == TINY_BERT_MATRICES
    module = handle.module()
    assert type(module) is BertModel
    state = module.state_dict()
    for m in mats:
        assert torch.equal(state[m.name], m.tensor), m.name
    with pytest.raises(OrthoscopeError, match="comes with no tokenizer"):
        handle.tokenizer()


def test_sharded_hf_folder(tmp_path, tiny_bert):
    folder = tmp_path / "sharded"
    tiny_bert.save_pretrained(folder, max_shard_size="20KB")
    shards = sorted(folder.glob("*.safetensors"))
    assert (folder / "model.safetensors.index.json").exists() and len(shards) > 2
    handle = models.load(str(folder))
    assert sorted(handle.source.files) == [p.resolve() for p in shards]
    _assert_same_tensors(_stored(handle), _state(tiny_bert))
    assert len(list(handle.iter_matrices())) == TINY_BERT_MATRICES
    _assert_same_tensors({k: v for k, v in handle.module().state_dict().items()}, _state(tiny_bert))


def test_hf_folder_with_pickled_weights_builds_module(tmp_path, tiny_bert):
    folder = tmp_path / "bin-folder"
    folder.mkdir()
    tiny_bert.config.to_json_file(folder / "config.json")
    torch.save(_state(tiny_bert), folder / "pytorch_model.bin")
    handle = models.load(str(folder))
    assert isinstance(handle.source, StateDictSource) and handle.kind == "encoder"
    _assert_same_tensors(_stored(handle), _state(tiny_bert))
    _assert_same_tensors(dict(handle.module().state_dict()), _state(tiny_bert))


# ---------------------------------------------------------------------------------------
# Bare weight files


def test_bare_safetensors_file(tmp_path, tiny_bert):
    path = tmp_path / "weights.safetensors"
    save_file(_state(tiny_bert), str(path))
    handle = models.load(str(path))
    assert handle.name == "weights.safetensors"
    assert handle.kind == "state-dict"
    assert isinstance(handle.source, SafetensorsSource)
    _assert_same_tensors(_stored(handle), _state(tiny_bert))
    assert len(list(handle.iter_matrices())) == TINY_BERT_MATRICES
    with pytest.raises(OrthoscopeError, match="no architecture"):
        handle.module()


@pytest.mark.parametrize(
    ("filename", "zip_format", "fmt"),
    [("model.pt", True, "torch-zip"), ("pytorch_model.bin", False, "torch-pickle")],
)
def test_state_dict_file(tmp_path, tiny_bert, filename, zip_format, fmt):
    path = tmp_path / filename
    torch.save(_state(tiny_bert), path, _use_new_zipfile_serialization=zip_format)
    assert sniff(path) == fmt
    handle = models.load(str(path))
    assert handle.kind == "state-dict"
    assert isinstance(handle.source, StateDictSource)
    _assert_same_tensors(_stored(handle), _state(tiny_bert))
    assert len(list(handle.iter_matrices())) == TINY_BERT_MATRICES


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_wrapped_state_dict(tmp_path, tiny_bert, key):
    path = tmp_path / "checkpoint.pt"
    torch.save({key: _state(tiny_bert), "epoch": 3, "lr": 0.1}, path)
    handle = models.load(str(path))
    _assert_same_tensors(_stored(handle), _state(tiny_bert))


def test_format_is_sniffed_from_content_not_name(tmp_path, tiny_bert):
    path = tmp_path / "misnamed.safetensors"
    torch.save(_state(tiny_bert), path)
    handle = models.load(str(path))
    assert isinstance(handle.source, StateDictSource)
    _assert_same_tensors(_stored(handle), _state(tiny_bert))


@pytest.mark.parametrize("save", ["safetensors", "pt"])
def test_bare_file_with_config_path_builds_module(tmp_path, tiny_bert, save):
    from transformers import BertModel

    cfg = tmp_path / "cfg" / "config.json"
    cfg.parent.mkdir()
    tiny_bert.config.to_json_file(cfg)
    path = tmp_path / "weights" / f"w.{save}"
    path.parent.mkdir()
    if save == "safetensors":
        save_file(_state(tiny_bert), str(path))
    else:
        torch.save(_state(tiny_bert), path)
    handle = models.load(str(path), config_path=cfg)
    assert handle.kind == "encoder"
    module = handle.module()
    assert type(module) is BertModel
    _assert_same_tensors(dict(module.state_dict()), _state(tiny_bert))


def test_config_that_does_not_match_the_weights(tmp_path, tiny_bert):
    from transformers import GPT2Config

    cfg = tmp_path / "config.json"
    GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=64).to_json_file(cfg)
    path = tmp_path / "w.safetensors"
    save_file(_state(tiny_bert), str(path))
    handle = models.load(str(path), config_path=cfg)
    with pytest.raises(OrthoscopeError, match="do not match config.json"):
        handle.module()


# ---------------------------------------------------------------------------------------
# GGUF


def test_gguf_llama_file(tiny_llama_gguf):
    from transformers import LlamaForCausalLM

    path, state = tiny_llama_gguf
    handle = models.load(str(path))
    assert handle.name == "tiny-llama"
    assert handle.kind == "causal-lm"
    assert handle.model_type == "llama"
    metas = {m.name: m for m in handle.source.metas()}
    assert set(metas) == set(state)  # llama.cpp names mapped back to transformers names
    assert all(m.dtype == "F32" for m in metas.values())
    assert {n: m.shape for n, m in metas.items()} == {n: tuple(t.shape) for n, t in state.items()}
    # Values round-trip, q/k un-permuted back to the transformers order.
    _assert_same_tensors(_stored(handle), state)
    assert {m.name for m in handle.iter_matrices()} == {n for n, t in state.items() if t.ndim == 2}
    module = handle.module()
    assert type(module) is LlamaForCausalLM
    _assert_same_tensors(dict(module.state_dict()), state)


def test_gguf_other_architecture_round_trips(tmp_path):
    import gguf

    rng = np.random.default_rng(0)
    tensors = {
        "blk.0.attn_q.weight": rng.standard_normal((24, 16)).astype(np.float32),
        "blk.0.ffn_up.weight": rng.standard_normal((40, 16)).astype(np.float16),
        "blk.0.attn_norm.weight": rng.standard_normal(16).astype(np.float32),
    }
    path = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(path), "phi2")
    writer.add_head_count(2)
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    handle = models.load(str(path))
    assert handle.name == "other"  # no general.name: the file stem
    assert handle.model_type == "phi2"
    metas = {m.name: m for m in handle.source.metas()}
    assert {n: (m.shape, m.dtype) for n, m in metas.items()} == {
        "blk.0.attn_q.weight": ((24, 16), "F32"),
        "blk.0.ffn_up.weight": ((40, 16), "F16"),
        "blk.0.attn_norm.weight": ((16,), "F32"),
    }
    for name, data in tensors.items():  # no renaming and no un-permuting outside llama
        assert torch.equal(handle.source.get(name), torch.from_numpy(data.astype(np.float32))), name
    assert [m.name for m in handle.iter_matrices()] == ["blk.0.attn_q.weight", "blk.0.ffn_up.weight"]


def test_folder_with_one_gguf(tiny_llama_gguf):
    path, state = tiny_llama_gguf
    handle = models.load(str(path.parent))
    assert isinstance(handle.source, GGUFSource) and handle.name == "tiny-llama"
    _assert_same_tensors(_stored(handle), state)


# ---------------------------------------------------------------------------------------
# Specs, hub, fingerprints, streaming


def test_hub_without_network_gives_a_clear_message(offline):
    with pytest.raises(OrthoscopeError, match="cannot reach the Hugging Face hub") as info:
        models.load("hf:sentence-transformers/all-MiniLM-L6-v2")
    assert "sentence-transformers/all-MiniLM-L6-v2" in str(info.value)
    assert not (offline / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots").exists()


@pytest.mark.parametrize("spec", ["hf:", "hf:just-a-name", "hf:a/b/c", "hf:/name", "hf:org/", "hf: "])
def test_malformed_hub_spec(spec):
    with pytest.raises(OrthoscopeError, match="is not a hub id; write hf:ORG/NAME"):
        models.load(spec)


@pytest.mark.parametrize(("spec", "phrase"), [("", "no model given"), ("  ", "no model given"),
                                             ("builtin:nope", "unknown built-in model 'nope'")])
def test_bad_specs(spec, phrase):
    with pytest.raises(OrthoscopeError, match=phrase):
        models.load(spec)


def test_fingerprint_depends_on_content_not_location(tmp_path, tiny_bert):
    a = tmp_path / "a" / "model.safetensors"
    a.parent.mkdir()
    save_file(_state(tiny_bert), str(a))
    b = tmp_path / "b" / "model.safetensors"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    c = tmp_path / "c" / "model.safetensors"
    c.parent.mkdir()
    data = bytearray(a.read_bytes())
    data[-1] ^= 0x01  # one byte of tensor data
    c.write_bytes(bytes(data))
    fa, fb, fc = (models.load(str(p)).fingerprint for p in (a, b, c))
    assert fa == fb
    assert fc != fa
    assert len(fa) == 64
    # A folder holding the same file has the same weights, hence the same fingerprint.
    assert models.load(str(a.parent)).fingerprint == fa


def test_iter_matrices_reads_only_what_is_asked(tiny_bert_folder, monkeypatch):
    handle = models.load(str(tiny_bert_folder))
    reads: list[str] = []
    real_get = handle.source.get

    def spy(name):
        reads.append(name)
        return real_get(name)

    monkeypatch.setattr(handle.source, "get", spy)
    wanted = "encoder.layer.1.attention.self.key.weight"
    mats = list(handle.iter_matrices(names={wanted}))
    assert [m.name for m in mats] == [wanted]
    assert reads == [wanted]

    reads.clear()
    all_mats = list(handle.iter_matrices())
    assert len(all_mats) == TINY_BERT_MATRICES
    assert sorted(reads) == sorted(m.name for m in all_mats)  # each read once; skipped tensors never read

    reads.clear()
    handle.tensor_rows(), handle.matrix_names(), handle.skipped()
    assert reads == []  # planning uses shapes only


def test_iter_matrices_does_not_load_safetensors_eagerly(tiny_bert_folder, monkeypatch):
    """The safetensors source maps the file; it never materialises all tensors up front."""
    import safetensors.torch

    def boom(*args, **kwargs):
        raise AssertionError("whole-file load")

    monkeypatch.setattr(safetensors.torch, "load_file", boom)
    monkeypatch.setattr(safetensors.torch, "load", boom)
    handle = models.load(str(tiny_bert_folder))
    assert len(list(handle.iter_matrices(names={"pooler.dense.weight"}))) == 1


def test_safetensors_header_is_validated_before_mapping(tmp_path):
    path = tmp_path / "weird.safetensors"
    header = b'{"w": {"dtype": "F32", "shape": [8, 8], "data_offsets": [0, 256]}}'
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(256))
    handle = models.load(str(path))
    (mat,) = handle.iter_matrices()
    assert mat.shape == (8, 8) and torch.equal(mat.tensor, torch.zeros(8, 8))
