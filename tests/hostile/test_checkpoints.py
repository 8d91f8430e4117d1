"""Hostile checkpoints and model folders, each run through the CLI in a forked child (tests/hostile/harness.py).

Every case writes its payload into tmp_path in a few lines. Most must be refused: exit 2, one ``error:`` line, no
traceback, within 10 s and 1.5 GB, and no marker file written by any payload. A few have a defined non-error
result (a tensor of an unsupported dtype, layout or device is skipped with its reason while the rest of the model
is analysed) and assert exit 0 and the reason in the output CSV instead. The session ends with a summary: cases
by surface, the slowest case and the largest peak RSS.

The memory budget (ORTHOSCOPE_MAX_MEMORY) is 1 GiB here, within the harness's 1.5 GB bound.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import resource
import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import torch

from tests.conftest import TINY_BERT, TINY_LLAMA
from tests.hostile.harness import MAX_RSS_MB, MAX_SECONDS, Outcome, assert_refused, run_cli

pytestmark = pytest.mark.usefixtures("offline")

# (surface, case id, outcome, child CPU s, refused?) for the closing summary
OUTCOMES: list[tuple[str, str, Outcome, float, bool]] = []


@dataclass(frozen=True)
class Case:
    id: str
    surface: str
    build: Callable[[Path, "Fixtures"], list[str] | Path]  # the argv, or the model path for `overview`
    contains: str | None = None  # a phrase of the one error line
    ok: tuple[str, str] | None = None  # exit 0 expected instead: (CSV file, text that must appear in it)
    rest_analysed: bool = True  # with ok: some other tensor of the model is analysed
    # Wall-clock bound of the child. Only the 16,000-tensor case gets more than MAX_SECONDS, and for it MAX_SECONDS
    # bounds the child's CPU time instead: its ~4 s of work can take over 10 s of wall time on a loaded 2-core box.
    timeout: float = MAX_SECONDS


@dataclass(frozen=True)
class Fixtures:
    bert: Path  # an HF folder: tiny BERT config.json + model.safetensors
    llama: Path  # an HF folder: tiny llama (causal LM) config.json + model.safetensors
    marker: Path  # a file no payload may create


CASES: list[Case] = []


def case(surface: str, contains: str | None = None, ok: tuple[str, str] | None = None, rest_analysed: bool = True,
         timeout: float = MAX_SECONDS):
    def register(build):
        CASES.append(Case(build.__name__.removeprefix("_"), surface, build, contains, ok, rest_analysed, timeout))
        return build

    return register


# ---------------------------------------------------------------------------------------------------------------
# Payload helpers


def st_bytes(header: dict | bytes, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def write_st(path: Path, header: dict | bytes, data: bytes = b"") -> Path:
    path.write_bytes(st_bytes(header, data))
    return path


def tiny_tensors(n: int) -> tuple[bytes, bytes]:
    """A header of n 2x2 F32 tensors (16 bytes each), built as text so 200,000 take a fraction of a second."""
    parts = ",".join(f'"layers.{i}.w":{{"dtype":"F32","shape":[2,2],"data_offsets":[{16 * i},{16 * i + 16}]}}'
                     for i in range(n))
    return ("{" + parts + "}").encode(), bytes(16 * n)


def copy_folder(src: Path, tmp: Path, name: str = "model") -> Path:
    dst = tmp / name
    shutil.copytree(src, dst)
    return dst


def edit_config(folder: Path, **changes) -> Path:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def bert_with_config_text(tmp: Path, fx: Fixtures, text: str | bytes) -> Path:
    folder = copy_folder(fx.bert, tmp)
    (folder / "config.json").write_bytes(text.encode() if isinstance(text, str) else text)
    return folder


def sharded(tmp: Path, fx: Fixtures, weight_map) -> Path:
    """The tiny BERT as one shard behind an index whose weight_map is ``weight_map``."""
    folder = copy_folder(fx.bert, tmp)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def steering(path: Path, tmp: Path) -> list[str]:
    return ["steering", "--model", str(path), "--out", str(tmp / "out")]


def spectra(path: Path, tmp: Path) -> list[str]:
    return ["spectra", "--model", str(path), "--out", str(tmp / "out")]


class Payload:
    """Unpickling this calls open(marker, "w"): a file appears if the pickle is ever executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def rezip(src: Path, dst: Path, replace: dict[str, bytes] | None = None, deflate: dict[str, bytes] | None = None) -> Path:
    """Rewrite a torch.save zip, replacing members (stored) or adding deflated ones."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            for suffix, new in (replace or {}).items():
                if info.filename.endswith(suffix):
                    data = new
            zout.writestr(info.filename, data, compress_type=zipfile.ZIP_STORED)
        for name, data in (deflate or {}).items():
            zout.writestr(f"{zin.infolist()[0].filename.split('/')[0]}/{name}", data, compress_type=zipfile.ZIP_DEFLATED)
    return dst


def gguf_file(path: Path) -> Path:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("blk.0.ffn_up.weight", np.ones((16, 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ---------------------------------------------------------------------------------------------------------------
# safetensors files


@case("safetensors", "is empty")
def _st_empty_file(tmp, fx):
    (tmp / "model.safetensors").write_bytes(b"")
    return tmp / "model.safetensors"


@case("safetensors", "truncated")
def _st_truncated(tmp, fx):
    path = tmp / "model.safetensors"
    data = (fx.bert / "model.safetensors").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@case("safetensors", "header claims")
def _st_header_length_beyond_file(tmp, fx):
    (tmp / "m.safetensors").write_bytes(struct.pack("<Q", 10_000) + b'{"a": 1}')
    return tmp / "m.safetensors"


@case("safetensors", "not a recognised checkpoint")
def _st_header_length_2_63(tmp, fx):
    (tmp / "m.safetensors").write_bytes(struct.pack("<Q", 2**63) + b"{}")
    return tmp / "m.safetensors"


@case("safetensors", "not valid JSON")
def _st_header_not_json(tmp, fx):
    return write_st(tmp / "m.safetensors", b"{not json at all")


@case("safetensors", "nested deeper")
def _st_metadata_nested_100k(tmp, fx):
    deep = b'{"__metadata__": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return write_st(tmp / "m.safetensors", deep)


@case("safetensors", "digits")
def _st_5000_digit_integer(tmp, fx):
    header = b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}'
    return write_st(tmp / "m.safetensors", header, bytes(4))


@case("safetensors", "malformed header entry")
def _st_negative_offsets(tmp, fx):
    return write_st(tmp / "m.safetensors", {"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}, bytes(4))


@case("safetensors", "malformed header entry")
def _st_nan_in_shape(tmp, fx):
    return write_st(tmp / "m.safetensors", b'{"w": {"dtype": "F32", "shape": [NaN, 2], "data_offsets": [0, 8]}}', bytes(8))


@case("safetensors", "data offsets span")
def _st_huge_shape(tmp, fx):
    return write_st(tmp / "m.safetensors", {"w": {"dtype": "F32", "shape": [10**30, 10**30], "data_offsets": [0, 4]}},
                    bytes(4))


@case("safetensors", "data offsets span")
def _st_declared_bytes_differ_from_span(tmp, fx):
    return write_st(tmp / "m.safetensors", {"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 8]}}, bytes(8))


@case("safetensors", "appears more than once")
def _st_duplicate_keys(tmp, fx):
    entry = b'{"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}'
    return write_st(tmp / "m.safetensors", b'{"w": ' + entry + b', "w": ' + entry + b"}", bytes(8))


@case("safetensors", "overlaps")
def _st_overlapping_offsets(tmp, fx):
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "b": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    return write_st(tmp / "m.safetensors", header, bytes(16))


@case("safetensors", "unknown dtype")
def _st_unknown_dtype(tmp, fx):
    return write_st(tmp / "m.safetensors", {"w": {"dtype": "X99", "shape": [1], "data_offsets": [0, 4]}}, bytes(4))


@case("safetensors", "__metadata__")
def _st_metadata_not_strings(tmp, fx):
    header = {"__metadata__": {"format": [1, 2]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    return write_st(tmp / "m.safetensors", header, bytes(4))


@case("safetensors", "malformed header entry")
def _st_seventeen_dims(tmp, fx):
    return write_st(tmp / "m.safetensors", {"w": {"dtype": "F32", "shape": [1] * 17, "data_offsets": [0, 4]}}, bytes(4))


@case("safetensors", "65,536 tensors")
def _st_200k_tiny_tensors(tmp, fx):
    return write_st(tmp / "m.safetensors", *tiny_tensors(200_000))


@case("safetensors", "not a regular file")
def _st_fifo(tmp, fx):
    os.mkfifo(tmp / "model.safetensors")
    return tmp / "model.safetensors"


@case("safetensors", ok=("tensors.csv", "dtype F4 not supported"))
def _st_f4_tensor_skipped(tmp, fx):
    w = torch.randn(16, 16).numpy().tobytes()
    header = {"w": {"dtype": "F32", "shape": [16, 16], "data_offsets": [0, 1024]},
              "q": {"dtype": "F4", "shape": [16, 16], "data_offsets": [1024, 1152]}}
    return write_st(tmp / "m.safetensors", header, w + bytes(128))


@case("safetensors", ok=("skipped.csv", "dtype F6_E2M3 not supported"))
def _st_f6_and_c64_skipped_by_spectra(tmp, fx):
    w = torch.randn(16, 16).numpy().tobytes()
    header = {"w": {"dtype": "F32", "shape": [16, 16], "data_offsets": [0, 1024]},
              "f6": {"dtype": "F6_E2M3", "shape": [16, 16], "data_offsets": [1024, 1216]},
              "c": {"dtype": "C64", "shape": [16, 16], "data_offsets": [1216, 3264]},
              "e8": {"dtype": "F8_E8M0", "shape": [16, 16], "data_offsets": [3264, 3520]}}
    return spectra(write_st(tmp / "m.safetensors", header, w + bytes(192 + 2048 + 256)), tmp)


@case("safetensors", ok=("tensors.csv", "layers.15999.w"), rest_analysed=False, timeout=60.0)
def _st_16000_tiny_tensors_linear(tmp, fx):
    # 1.3 MB of 2x2 tensors (all "too small"): took 332 s when each read reparsed the header. Bounded by
    # 10 s of CPU (the test asserts it); the wall limit allows for a busy shared machine.
    return write_st(tmp / "m.safetensors", *tiny_tensors(16_000))


# ---------------------------------------------------------------------------------------------------------------
# Model folders and config.json


@case("folder", "not a regular file")
def _folder_config_json_fifo(tmp, fx):
    folder = copy_folder(fx.bert, tmp)
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    return folder


@case("folder", "not a regular file")
def _folder_tokenizer_config_fifo(tmp, fx):
    folder = copy_folder(fx.bert, tmp)
    os.mkfifo(folder / "tokenizer_config.json")
    return folder


@case("folder", "is a folder where a file was expected")
def _folder_directory_named_safetensors(tmp, fx):
    folder = copy_folder(fx.bert, tmp)
    (folder / "model.safetensors").unlink()
    (folder / "x.safetensors").mkdir()
    return folder


@case("folder", "is a folder where a file was expected")
def _folder_directory_named_pytorch_model_bin(tmp, fx):
    folder = copy_folder(fx.bert, tmp)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").mkdir()
    return folder


@case("folder", "named like a weights file")
def _spec_is_a_directory_named_safetensors(tmp, fx):
    (tmp / "x.safetensors").mkdir()
    return tmp / "x.safetensors"


@case("folder", "link loop")
def _folder_symlink_loop(tmp, fx):
    folder = copy_folder(fx.bert, tmp)
    os.symlink("tokenizer.json", folder / "tokenizer.json")
    return folder


@case("folder", "link loop")
def _spec_symlink_loop(tmp, fx):
    os.symlink(tmp / "b.safetensors", tmp / "a.safetensors")
    os.symlink(tmp / "a.safetensors", tmp / "b.safetensors")
    return tmp / "a.safetensors"


@case("folder", ok=("tensors.csv", "encoder.layer.1.output.dense.weight"))
def _folder_linking_to_itself_is_not_walked(tmp, fx):
    folder = copy_folder(fx.bert, tmp)
    os.symlink(".", folder / "again")
    return folder


@case("folder", "contains Python files")
def _folder_with_python_code(tmp, fx):
    folder = copy_folder(fx.bert, tmp)
    (folder / "modeling_evil.py").write_text(f"open({str(fx.marker)!r}, 'w').close()\n")
    return folder


@case("config", "nested deeper")
def _config_nested_100k(tmp, fx):
    return bert_with_config_text(tmp, fx, '{"model_type": "bert", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")


@case("config", "digits")
def _config_5000_digit_integer(tmp, fx):
    return bert_with_config_text(tmp, fx, '{"model_type": "bert", "vocab_size": ' + "9" * 5000 + "}")


@case("config", "UTF-8")
def _config_not_utf8(tmp, fx):
    return bert_with_config_text(tmp, fx, b'{"model_type": "b\xff\xfe"}')


@case("config", "not a JSON object")
def _config_is_a_list(tmp, fx):
    return bert_with_config_text(tmp, fx, "[1, 2, 3]")


@case("config", "appears more than once")
def _config_duplicate_keys(tmp, fx):
    return bert_with_config_text(tmp, fx, '{"model_type": "bert", "model_type": "llama"}')


@case("config", "architectures")
def _config_architectures_int(tmp, fx):
    return edit_config(copy_folder(fx.bert, tmp), architectures=5)


@case("config", "architectures")
def _config_architectures_ints(tmp, fx):
    return edit_config(copy_folder(fx.bert, tmp), architectures=[1, 2])


@case("config", "model_type")
def _config_model_type_list(tmp, fx):
    return edit_config(copy_folder(fx.bert, tmp), model_type=["bert"])


@case("config", "num_attention_heads")
def _config_heads_string(tmp, fx):
    return edit_config(copy_folder(fx.bert, tmp), num_attention_heads="x")


@case("config", "num_attention_heads")
def _config_heads_negative(tmp, fx):
    return edit_config(copy_folder(fx.bert, tmp), num_attention_heads=-1)


@case("config", "hidden_size")
def _config_hidden_size_bool(tmp, fx):
    return edit_config(copy_folder(fx.bert, tmp), hidden_size=True)


@case("config", "num_hidden_layers")
def _config_layers_10_6(tmp, fx):
    return edit_config(copy_folder(fx.bert, tmp), num_hidden_layers=10**6)


@case("config", "vocab_size")
def _config_vocab_10_9(tmp, fx):
    return edit_config(copy_folder(fx.bert, tmp), vocab_size=10**9)


@case("config", "auto_map")
def _config_auto_map(tmp, fx):
    return edit_config(copy_folder(fx.bert, tmp), auto_map={"AutoModel": "evil.Model"})


@case("config", "nested deeper")
def _generation_config_nested(tmp, fx):
    folder = copy_folder(fx.bert, tmp)
    (folder / "generation_config.json").write_text("[" * 5000 + "]" * 5000)
    return folder


@case("config", "modules.json")
def _modules_json_wrong_types(tmp, fx):
    folder = copy_folder(fx.bert, tmp)
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "path": 5, "type": ["x"]}]))
    return folder


@case("config", "outside its folder")
def _modules_json_escaping_path(tmp, fx):
    folder = copy_folder(fx.bert, tmp)
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "path": "../../etc", "type": "Pooling"}]))
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Shard index


@case("index", "weight_map")
def _index_weight_map_list(tmp, fx):
    return sharded(tmp, fx, ["model-00001-of-00001.safetensors"])


@case("index", "weight_map")
def _index_weight_map_int_values(tmp, fx):
    return sharded(tmp, fx, {"embeddings.word_embeddings.weight": 1})


@case("index", "UTF-8")
def _index_not_utf8(tmp, fx):
    folder = sharded(tmp, fx, {})
    (folder / "model.safetensors.index.json").write_bytes(b'{"weight_map": {"\xff": "a"}}')
    return folder


@case("index", "outside its folder")
def _index_shard_parent_path(tmp, fx):
    return sharded(tmp, fx, {"embeddings.word_embeddings.weight": "../model-00001-of-00001.safetensors"})


@case("index", "outside its folder")
def _index_shard_absolute_path(tmp, fx):
    return sharded(tmp, fx, {"embeddings.word_embeddings.weight": "/etc/passwd"})


@case("index", "no shard holds it")
def _index_names_a_tensor_no_shard_holds(tmp, fx):
    return sharded(tmp, fx, {"no.such.tensor": "model-00001-of-00001.safetensors"})


@case("index", "nested deeper")
def _index_nested(tmp, fx):
    folder = sharded(tmp, fx, {})
    (folder / "model.safetensors.index.json").write_text('{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Config against the stored weights: the module is never built (steering builds it first thing)


@case("module", "5,000 layers")
def _module_layers_beyond_the_weights(tmp, fx):
    return steering(edit_config(copy_folder(fx.llama, tmp), num_hidden_layers=5000), tmp)


@case("module", "embedding")
def _module_vocab_beyond_the_weights(tmp, fx):
    return steering(edit_config(copy_folder(fx.llama, tmp), vocab_size=10**6), tmp)


@case("module", "describes a module of")
def _module_layers_beyond_the_weights_on_meta(tmp, fx):
    # 200 layers pass the cheap bounds (weight sharing allows up to 256); the module planned on the meta device
    # holds some 2 million parameters against the ~14,000 stored, and is never allocated.
    return steering(edit_config(copy_folder(fx.llama, tmp), num_hidden_layers=200), tmp)


@case("module", "the weights store 64x32")
def _module_intermediate_differs_from_the_weights(tmp, fx):
    return steering(edit_config(copy_folder(fx.llama, tmp), intermediate_size=10**6), tmp)


@case("module", "the weights store 64x32")
def _module_shape_differs_from_the_weights(tmp, fx):
    return steering(edit_config(copy_folder(fx.llama, tmp), hidden_size=64), tmp)


@case("module", "no tokenizer")
def _one_source_weights_safetensors_beside_a_bin(tmp, fx):
    # Built from weights.safetensors, the file the analysis reads; a corrupt pytorch_model.bin beside it is never
    # opened (from_pretrained would have picked it). The run then stops at the missing tokenizer.
    folder = copy_folder(fx.llama, tmp)
    (folder / "model.safetensors").rename(folder / "weights.safetensors")
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 corrupt")
    return steering(folder, tmp)


@case("module", "no tokenizer")
def _one_source_model_safetensors_beside_a_bin(tmp, fx):
    folder = copy_folder(fx.llama, tmp)
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 corrupt")
    return steering(folder, tmp)


# ---------------------------------------------------------------------------------------------------------------
# .pt / .bin state dicts


@case("state-dict", "memory")
def _pt_zero_stride_terabytes(tmp, fx):
    torch.save({"w": torch.zeros(1).as_strided((10**6, 10**6), (0, 0))}, tmp / "m.pt")
    return tmp / "m.pt"


@case("state-dict", ok=("tensors.csv", "10000"))
def _pt_zero_stride_within_budget(tmp, fx):
    torch.save({"w": torch.ones(1).as_strided((100, 100), (0, 0))}, tmp / "m.pt")
    return tmp / "m.pt"


@case("state-dict", ok=("tensors.csv", "sparse layout (sparse_coo) not supported"))
def _pt_sparse_coo(tmp, fx):
    # One stored value in a 10^6 x 10^6 matrix: densified, 4 TB.
    torch.save({"w": torch.randn(16, 16), "s": torch.sparse_coo_tensor([[0], [0]], [1.0], (10**6, 10**6))}, tmp / "m.pt")
    return tmp / "m.pt"


@case("state-dict", ok=("tensors.csv", "sparse layout (sparse_csr) not supported"))
def _pt_sparse_csr(tmp, fx):
    torch.save({"w": torch.randn(16, 16), "s": torch.eye(16).to_sparse_csr()}, tmp / "m.pt")
    return tmp / "m.pt"


@case("state-dict", ok=("tensors.csv", "meta device"))
def _pt_meta_device(tmp, fx):
    torch.save({"w": torch.randn(16, 16), "m": torch.empty(10**6, 10**6, device="meta")}, tmp / "m.pt")
    return tmp / "m.pt"


@case("state-dict", ok=("tensors.csv", "dtype complex64 not supported"))
def _pt_complex(tmp, fx):
    torch.save({"w": torch.randn(16, 16), "c": torch.randn(16, 16, dtype=torch.complex64)}, tmp / "m.pt")
    return tmp / "m.pt"


@case("state-dict", "compressed")
def _pt_zip_bomb_deflated_member(tmp, fx):
    torch.save({"w": torch.randn(4, 4)}, tmp / "real.pt")
    return rezip(tmp / "real.pt", tmp / "m.pt", deflate={"data/1": bytes(64 * 2**20)})


@case("state-dict", "memory")
def _pt_zip_member_declares_4_gib(tmp, fx):
    torch.save({"w": torch.randn(4, 4)}, tmp / "m.pt")
    data = bytearray((tmp / "m.pt").read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:  # every central-directory record: declare an uncompressed size of ~4 GiB
        name = bytes(data[at + 46: at + 46 + struct.unpack("<H", data[at + 28: at + 30])[0]])
        if name.endswith(b"data/0"):
            data[at + 24: at + 28] = struct.pack("<I", 0xFFFFFFF0)
        at = data.find(b"PK\x01\x02", at + 4)
    (tmp / "m.pt").write_bytes(bytes(data))
    return tmp / "m.pt"


@case("state-dict", "was refused")
def _pt_pickle_payload_legacy(tmp, fx):
    (tmp / "m.bin").write_bytes(pickle.dumps({"w": Payload(fx.marker)}, protocol=2))
    return tmp / "m.bin"


@case("state-dict", "was refused")
def _pt_pickle_payload_in_zip(tmp, fx):
    torch.save({"w": torch.randn(4, 4)}, tmp / "real.pt")
    return rezip(tmp / "real.pt", tmp / "m.pt", replace={"data.pkl": pickle.dumps({"w": Payload(fx.marker)}, protocol=2)})


def legacy_declaring(tmp: Path, numel: int) -> Path:
    """A legacy (non-zip) torch.save of 16 floats whose pickle declares ``numel`` elements for their storage."""
    torch.save({"w": torch.ones(16)}, tmp / "real.bin", _use_new_zipfile_serialization=False)
    data = (tmp / "real.bin").read_bytes()
    at = data.find(b"cpuq\x06K\x10N") + 5  # BININT1 16 in the persistent id ('storage', type, key, 'cpu', 16)
    if numel < 2**31:
        number = b"J" + struct.pack("<i", numel)
    else:
        raw = numel.to_bytes((numel.bit_length() + 8) // 8, "little", signed=True)
        number = b"\x8a" + bytes([len(raw)]) + raw
    (tmp / "m.bin").write_bytes(data[:at] + number + data[at + 2:])
    return tmp / "m.bin"


@case("state-dict", "not a readable PyTorch checkpoint")
def _pt_legacy_storage_declares_8_gib(tmp, fx):
    return legacy_declaring(tmp, 2**31 - 1)


@case("state-dict", "not a readable PyTorch checkpoint")
def _pt_legacy_storage_declares_4_tb(tmp, fx):
    return legacy_declaring(tmp, 10**12)


@case("state-dict", "not a readable PyTorch checkpoint")
def _pt_truncated_zip(tmp, fx):
    torch.save({"w": torch.randn(64, 64)}, tmp / "m.pt")
    data = (tmp / "m.pt").read_bytes()
    (tmp / "m.pt").write_bytes(data[: len(data) // 2])
    return tmp / "m.pt"


@case("state-dict", "not a recognised checkpoint")
def _pt_random_bytes(tmp, fx):
    (tmp / "m.pt").write_bytes(random.Random(0).randbytes(4096))
    return tmp / "m.pt"


# ---------------------------------------------------------------------------------------------------------------
# GGUF


@case("gguf", "GGUF")
def _gguf_garbage(tmp, fx):
    (tmp / "m.gguf").write_bytes(b"GGUF" + random.Random(1).randbytes(4096))
    return tmp / "m.gguf"


@case("gguf", "truncated")
def _gguf_magic_only(tmp, fx):
    (tmp / "m.gguf").write_bytes(b"GGUF")
    return tmp / "m.gguf"


@case("gguf", "declares 1,099,511,627,776 tensors")
def _gguf_huge_tensor_count(tmp, fx):
    (tmp / "m.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 0) + bytes(64))
    return tmp / "m.gguf"


@case("gguf", "not a readable GGUF file")
def _gguf_huge_string_length(tmp, fx):
    (tmp / "m.gguf").write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**62) + bytes(64))
    return tmp / "m.gguf"


@case("gguf", "not a readable GGUF file")
def _gguf_truncated(tmp, fx):
    data = gguf_file(tmp / "real.gguf").read_bytes()
    (tmp / "m.gguf").write_bytes(data[: int(len(data) * 0.6)])
    return tmp / "m.gguf"


# ---------------------------------------------------------------------------------------------------------------
# The run


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Fixtures:
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("hostile-checkpoints")
    torch.manual_seed(0)
    BertModel(BertConfig(**TINY_BERT)).save_pretrained(root / "bert")
    LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).save_pretrained(root / "llama")
    return Fixtures(root / "bert", root / "llama", root / "marker-written-by-a-payload")


def run_timed(argv: list[str], timeout: float) -> tuple[Outcome, float]:
    """run_cli, and the child's CPU seconds (it is joined, so its usage is added to RUSAGE_CHILDREN)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    outcome = run_cli(argv, timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return outcome, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_checkpoint(case: Case, tmp_path, fixtures, monkeypatch):
    monkeypatch.setenv("ORTHOSCOPE_MAX_MEMORY", "1G")
    built = case.build(tmp_path, fixtures)
    argv = built if isinstance(built, list) else ["overview", "--model", str(built), "--out", str(tmp_path / "out")]
    outcome, cpu = run_timed(argv, case.timeout)
    OUTCOMES.append((case.surface, case.id, outcome, cpu, case.ok is None))
    assert not fixtures.marker.exists(), "a payload ran"
    if case.ok is None:
        assert_refused(outcome, marker=fixtures.marker, contains=case.contains)
        return
    assert outcome.code == 0, f"exit {outcome.code}, stderr:\n{outcome.stderr}"
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.seconds <= case.timeout and cpu <= MAX_SECONDS, f"{outcome.seconds:.1f} s wall, {cpu:.1f} s CPU"
    assert not outcome.peak_mb > MAX_RSS_MB, f"peak RSS {outcome.peak_mb:.0f} MB"
    table, text = case.ok
    csv = (tmp_path / "out" / table).read_text(encoding="utf-8")
    assert text in csv, csv[:2000]
    if table == "tensors.csv" and case.rest_analysed:
        frame = pd.read_csv(tmp_path / "out" / table)
        assert frame["analysed"].any(), "the rest of the model should still be analysed"


def test_enough_cases_on_every_surface():
    surfaces = {c.surface for c in CASES}
    assert len(CASES) >= 35
    assert {"safetensors", "folder", "config", "index", "module", "state-dict", "gguf"} <= surfaces


def test_summary(capsys):
    """Runs last: the cases by surface, the slowest and the largest, printed even under -q."""
    if not OUTCOMES:
        pytest.skip("no hostile case ran in this session")
    by_surface: dict[str, int] = {}
    for surface, *_ in OUTCOMES:
        by_surface[surface] = by_surface.get(surface, 0) + 1
    slowest = max(OUTCOMES, key=lambda o: o[2].seconds)
    busiest = max(OUTCOMES, key=lambda o: o[3])
    largest = max(OUTCOMES, key=lambda o: o[2].peak_mb if o[2].peak_mb == o[2].peak_mb else 0.0)
    with capsys.disabled():
        print(f"\nhostile checkpoints: {len(OUTCOMES)} cases ("
              + ", ".join(f"{s} {n}" for s, n in sorted(by_surface.items())) + ")")
        print(f"  slowest (wall): {slowest[1]} {slowest[2].seconds:.2f} s ({slowest[3]:.2f} s CPU); most CPU: "
              f"{busiest[1]} {busiest[3]:.2f} s; largest peak RSS: {largest[1]} {largest[2].peak_mb:.0f} MB")
        refused = [o for o in OUTCOMES if o[4]]
        if refused:
            r_slow = max(refused, key=lambda o: o[2].seconds)
            r_large = max(refused, key=lambda o: o[2].peak_mb if o[2].peak_mb == o[2].peak_mb else 0.0)
            print(f"  refused cases ({len(refused)}): slowest {r_slow[1]} {r_slow[2].seconds:.2f} s; largest peak RSS "
                  f"{r_large[1]} {r_large[2].peak_mb:.0f} MB")
    assert busiest[3] <= MAX_SECONDS and not largest[2].peak_mb > MAX_RSS_MB
