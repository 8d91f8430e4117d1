"""The typed boundary of models/: config.json, the shard index and safetensors headers validated before use,
one weight source per model folder, unsupported tensors skipped with a reason, and reads linear in the
number of tensors. The CLI-level hostile corpus is tests/hostile/test_checkpoints.py."""

from __future__ import annotations

import gc
import json
import struct
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import models
from models import OrthoscopeError
from models.config import ModelConfig, read_weight_map, validate_config
from models.limits import MAX_JSON_DEPTH, check_json_bounds, loads_json
from models.safety import validate_safetensors
from models.sources import SafetensorsSource, StateDictSource
from tests.conftest import TINY_BERT

pytestmark = pytest.mark.usefixtures("offline")


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _write_st(path, header: dict, data: bytes):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


# ---------------------------------------------------------------------------------------
# config.json


def test_a_real_config_validates_with_its_extra_fields(tiny_bert):
    data = tiny_bert.config.to_dict()
    typed = validate_config(data)
    assert isinstance(typed, ModelConfig)
    assert (typed.model_type, typed.num_hidden_layers, typed.hidden_size) == ("bert", 2, 32)
    assert typed.layers() == 2 and typed.width() == 32
    assert typed.model_extra["hidden_act"] == "gelu"  # unknown fields are kept, not refused


@pytest.mark.parametrize(("changes", "field"), [
    ({"architectures": 5}, "architectures"),
    ({"architectures": [1, 2]}, "architectures.0"),
    ({"model_type": ["bert"]}, "model_type"),
    ({"num_attention_heads": "x"}, "num_attention_heads"),
    ({"num_attention_heads": -1}, "num_attention_heads"),
    ({"num_attention_heads": 4.0}, "num_attention_heads"),
    ({"hidden_size": True}, "hidden_size"),
    ({"num_hidden_layers": 10**6}, "num_hidden_layers"),
    ({"vocab_size": 10**9}, "vocab_size"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
    ({"text_config": {"hidden_size": "wide"}}, "text_config.hidden_size"),
])
def test_config_fields_of_the_wrong_type_name_the_field(changes, field):
    data = {"model_type": "bert", "hidden_size": 32, **changes}
    with pytest.raises(OrthoscopeError, match=rf"config.json: field '{field}': ") as info:
        validate_config(data)
    assert "\n" not in str(info.value)


def test_config_with_auto_map_is_refused_by_the_validator():
    with pytest.raises(OrthoscopeError, match="auto_map"):
        validate_config({"model_type": "bert", "auto_map": {}})


def test_a_folder_with_a_bad_config_is_refused_at_load(tiny_bert_folder):
    cfg = json.loads((tiny_bert_folder / "config.json").read_text())
    cfg["num_attention_heads"] = "x"
    (tiny_bert_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(OrthoscopeError, match="num_attention_heads"):
        models.load(str(tiny_bert_folder))


# ---------------------------------------------------------------------------------------
# bounded JSON


def test_loads_json_bounds():
    assert loads_json('{"a": [1, "b", {"c": null}]}', "x") == {"a": [1, "b", {"c": None}]}
    with pytest.raises(OrthoscopeError, match="nested deeper"):
        loads_json("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "x")
    loads_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "x")
    with pytest.raises(OrthoscopeError, match="nested deeper"):
        loads_json("[" * 100_000 + "]" * 100_000, "x")
    with pytest.raises(OrthoscopeError, match="digits"):
        loads_json("[" + "9" * 5000 + "]", "x")
    with pytest.raises(OrthoscopeError, match="'k' appears more than once"):
        loads_json('{"k": 1, "k": 2}', "x", unique_keys=True)
    assert loads_json('{"k": 1, "k": 2}', "x") == {"k": 2}


def test_check_json_bounds_measures_keys_and_nested_strings(monkeypatch):
    import models.limits as limits

    monkeypatch.setattr(limits, "MAX_STRING_CHARS", 5)
    check_json_bounds({"abc": ["abcde", {"x": "y"}]}, "x")
    for value in ({"abcdef": 1}, ["abcdef"], {"a": [{"b": "abcdef"}]}, "abcdef"):
        with pytest.raises(OrthoscopeError, match="a string of 6 characters"):
            check_json_bounds(value, "x")


# ---------------------------------------------------------------------------------------
# shard index


@pytest.mark.parametrize(("weight_map", "phrase"), [
    (["a.safetensors"], "weight_map"),
    ({"w": 1}, "weight_map.w"),
    ({"w": "../a.safetensors"}, "outside its folder"),
    ({"w": "/etc/passwd"}, "outside its folder"),
    ({"w": "sub\\a.safetensors"}, "outside its folder"),
])
def test_index_weight_map_is_typed(tmp_path, weight_map, phrase):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(OrthoscopeError, match=phrase):
        read_weight_map(index)


def test_index_placing_a_tensor_in_the_wrong_shard(tmp_path, tiny_bert):
    folder = tmp_path / "sharded"
    tiny_bert.save_pretrained(folder, max_shard_size="20KB")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    name = next(k for k, v in index["weight_map"].items() if v == shards[0])
    index["weight_map"][name] = shards[1]
    index_path.write_text(json.dumps(index))
    with pytest.raises(OrthoscopeError, match=f"places tensor '{name}' in {shards[1]}, but it is in {shards[0]}"):
        models.load(str(folder))


# ---------------------------------------------------------------------------------------
# safetensors headers and reads


def test_header_spans_must_tile_the_data_section(tmp_path):
    w = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    gap = {"a": w, "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}}
    with pytest.raises(OrthoscopeError, match="leaves a gap at byte 8"):
        validate_safetensors(_write_st(tmp_path / "gap.safetensors", gap, bytes(24)))
    with pytest.raises(OrthoscopeError, match="the tensors end at byte 8 of the data section, but it holds 12"):
        validate_safetensors(_write_st(tmp_path / "tail.safetensors", {"a": w}, bytes(12)))
    with pytest.raises(OrthoscopeError, match="declares 3 F4"):
        validate_safetensors(_write_st(tmp_path / "f4.safetensors",
                                       {"a": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, bytes(2)))


def test_tensors_read_by_offset_equal_safetensors_own_reader(tmp_path):
    torch.manual_seed(0)
    tensors = {
        "f64": torch.randn(3, 5, dtype=torch.float64), "f32": torch.randn(4, 4), "f16": torch.randn(2, 8).half(),
        "bf16": torch.randn(8, 2).bfloat16(), "i64": torch.arange(6).reshape(2, 3), "i32": torch.arange(5, dtype=torch.int32),
        "i16": torch.arange(4, dtype=torch.int16), "i8": torch.arange(-3, 3, dtype=torch.int8),
        "u8": torch.arange(7, dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "all.safetensors"
    save_file(tensors, str(path))
    source = SafetensorsSource([path])
    expected = load_file(str(path))
    for name, tensor in expected.items():
        got = source.get(name)
        assert got.dtype == tensor.dtype and got.shape == tensor.shape and torch.equal(got, tensor), name


def test_each_read_costs_one_tensor_not_the_header(tmp_path, monkeypatch):
    """The quadratic overview: every read reparsed the whole header. Reads now use the checked offsets only."""
    path = tmp_path / "many.safetensors"
    save_file({f"layers.{i}.w": torch.full((2, 2), float(i)) for i in range(2000)}, str(path))
    handle = models.load(str(path))
    import safetensors

    import models.sources as sources

    def refuse(*args, **kwargs):
        raise AssertionError("a read reparsed the header")

    monkeypatch.setattr(sources, "validate_safetensors", refuse)
    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(json, "loads", refuse)
    for meta in handle.source.metas():
        assert float(handle.source.get(meta.name)[0, 0]) == int(meta.name.split(".")[1])


def test_overview_cost_is_linear_in_the_number_of_tensors(tmp_path):
    """CPU time (robust to a loaded machine) of load + overview for 1,000 and 8,000 tiny tensors: about 8x when
    linear; it was about 64x when each read reparsed the header (16,000 tensors took 332 s). The garbage
    collector is paused and each size timed at its best of three, so a collection or a scheduler hiccup in
    one run does not pass for quadratic cost."""
    from diagnostics import overview

    def cost(n: int) -> float:
        path = tmp_path / f"{n}.safetensors"
        save_file({f"layers.{i}.w": torch.ones(2, 2) for i in range(n)}, str(path))
        best = float("inf")
        for _ in range(3):
            gc.collect()
            gc.disable()
            try:
                start = time.process_time()
                result = overview.run(models.load(str(path)))
                best = min(best, time.process_time() - start)
            finally:
                gc.enable()
            assert len(result.tensors) == n
        return best

    cost(200)  # warm up
    small, large = cost(1000), cost(8000)
    assert large < 24 * small, (small, large)


def test_unsupported_dtypes_are_skipped_with_their_reason(tmp_path):
    w = torch.randn(16, 16).numpy().tobytes()
    header = {"w": {"dtype": "F32", "shape": [16, 16], "data_offsets": [0, 1024]},
              "q": {"dtype": "F4", "shape": [16, 16], "data_offsets": [1024, 1152]},
              "c": {"dtype": "C64", "shape": [2, 2], "data_offsets": [1152, 1184]}}
    handle = models.load(str(_write_st(tmp_path / "m.safetensors", header, w + bytes(128 + 32))))
    reasons = {s.name: s.reason for s in handle.skipped()}
    assert reasons == {"q": "dtype F4 not supported", "c": "dtype C64 not supported"}
    assert [m.name for m in handle.iter_matrices()] == ["w"]
    rows = {r.name: r for r in handle.tensor_rows()}
    assert not rows["q"].analysed and rows["q"].reason == "dtype F4 not supported"
    assert handle.source.get("q").numel() == 0  # never read as data of the declared type


# ---------------------------------------------------------------------------------------
# .pt / .bin state dicts


def test_zero_stride_view_is_checked_against_the_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHOSCOPE_MAX_MEMORY", "1M")
    small, big = tmp_path / "small.pt", tmp_path / "big.pt"
    torch.save({"w": torch.ones(1).as_strided((100, 100), (0, 0))}, small)  # 40 KB materialised
    torch.save({"w": torch.ones(1).as_strided((1000, 1000), (0, 0))}, big)  # 4 MB materialised
    handle = models.load(str(small))
    assert handle.source.get("w").shape == (100, 100)
    with pytest.raises(OrthoscopeError, match=r"tensor 'w' \(a 1000x1000 view of 4 B of stored data\) would need "
                                              r"3.8 MiB of memory, above this server's limit of 1.0 MiB"):
        models.load(str(big))


def test_sparse_meta_and_quantized_tensors_are_skipped(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({
        "w": torch.randn(16, 16),
        "coo": torch.sparse_coo_tensor([[0], [0]], [1.0], (10**6, 10**6)),
        "meta": torch.empty(10**6, 10**6, device="meta"),
        "q": torch.quantize_per_tensor(torch.randn(16, 16), 0.1, 0, torch.qint8),
        "f8": torch.randn(16, 16).to(torch.float8_e4m3fn),
    }, path)
    handle = models.load(str(path))
    assert isinstance(handle.source, StateDictSource)
    reasons = {s.name: s.reason for s in handle.skipped()}
    assert reasons == {
        "coo": "sparse layout (sparse_coo) not supported", "meta": "stored on the meta device: it holds no data",
        "q": "quantized tensor (qint8) not supported", "f8": "dtype float8_e4m3fn not supported",
    }
    assert [m.name for m in handle.iter_matrices()] == ["w"]


def test_compressed_zip_member_is_refused_before_torch_reads_it(tmp_path):
    import zipfile

    real, bomb = tmp_path / "real.pt", tmp_path / "bomb.pt"
    torch.save({"w": torch.randn(4, 4)}, real)
    with zipfile.ZipFile(real) as zin, zipfile.ZipFile(bomb, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(OrthoscopeError, match="is compressed"):
        models.load(str(bomb))


# ---------------------------------------------------------------------------------------
# One weight source per folder, and the module checked against it


def test_folder_with_safetensors_and_a_bin_is_read_and_built_from_the_safetensors(tmp_path, tiny_bert):
    from transformers import BertConfig, BertModel

    folder = tmp_path / "both"
    folder.mkdir()
    tiny_bert.config.to_json_file(folder / "config.json")
    save_file(_state(tiny_bert), str(folder / "weights.safetensors"))
    torch.manual_seed(1)
    other = _state(BertModel(BertConfig(**TINY_BERT)))
    torch.save(other, folder / "pytorch_model.bin")
    handle = models.load(str(folder))
    assert isinstance(handle.source, SafetensorsSource) and handle.source.files == [folder / "weights.safetensors"]
    assert handle.notes == ["both: analysed, and its module built, from weights.safetensors; ignored: pytorch_model.bin."]
    module_state = handle.module().state_dict()
    for meta in handle.source.metas():
        assert torch.equal(module_state[meta.name], handle.source.get(meta.name)), meta.name
    assert not torch.equal(module_state["embeddings.word_embeddings.weight"], other["embeddings.word_embeddings.weight"])


def test_model_safetensors_beside_a_bin_builds_from_model_safetensors(tiny_bert_folder, tiny_bert):
    from transformers import BertConfig, BertModel

    torch.manual_seed(1)
    torch.save(_state(BertModel(BertConfig(**TINY_BERT))), tiny_bert_folder / "pytorch_model.bin")
    handle = models.load(str(tiny_bert_folder))
    assert handle.source.files == [tiny_bert_folder / "model.safetensors"]
    assert "ignored: pytorch_model.bin" in handle.notes[0]
    module_state = handle.module().state_dict()
    for name, tensor in _state(tiny_bert).items():
        assert torch.equal(module_state[name], tensor), name


@pytest.mark.parametrize(("changes", "phrase"), [
    ({"num_hidden_layers": 5000}, "it declares 5,000 layers"),
    ({"vocab_size": 10**6}, "it declares a 1,000,000 x 32 embedding"),
    ({"num_hidden_layers": 200}, "it describes a module of"),
    ({"intermediate_size": 128}, "it makes encoder.layer.0.intermediate.dense.weight 128x32, the weights store 64x32"),
])
def test_a_config_that_does_not_describe_the_weights_builds_nothing(tiny_bert_folder, monkeypatch, changes, phrase):
    import transformers

    cfg = json.loads((tiny_bert_folder / "config.json").read_text())
    cfg.update(changes)
    (tiny_bert_folder / "config.json").write_text(json.dumps(cfg))
    handle = models.load(str(tiny_bert_folder))

    def never(*args, **kwargs):
        raise AssertionError("a module was built for real")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", never)
    with pytest.raises(OrthoscopeError, match=f"the weights do not match config.json: {phrase}"):
        handle.module()


def test_gguf_header_counts_are_checked_before_the_reader(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 0) + bytes(64))
    with pytest.raises(OrthoscopeError, match="declares 1,099,511,627,776 tensors"):
        models.load(str(path))
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1000, 0) + bytes(64))
    with pytest.raises(OrthoscopeError, match="truncated: it declares 1,000 tensors"):
        models.load(str(path))
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 99, 0, 0) + bytes(64))
    with pytest.raises(OrthoscopeError, match="format version 99"):
        models.load(str(path))


def test_the_cli_says_which_weight_file_of_a_folder_it_read(tmp_path, capsys):
    import cli

    folder = tmp_path / "both"
    folder.mkdir()
    save_file({"a.weight": torch.ones(16, 16)}, str(folder / "weights.safetensors"))
    torch.save({"a.weight": torch.zeros(16, 16)}, folder / "pytorch_model.bin")
    assert cli.main(["overview", "--model", str(folder), "--out", str(tmp_path / "out")]) == 0
    assert "note: both: analysed, and its module built, from weights.safetensors; ignored: pytorch_model.bin." \
        in capsys.readouterr().err
