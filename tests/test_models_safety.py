"""Bad input: every case ends in an OrthoscopeError with a message for the user, and nothing runs."""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

import models
from models import OrthoscopeError
from models.safety import ALLOWED_ROOTS_ENV, allowed_roots, sniff

pytestmark = pytest.mark.usefixtures("offline")


class Payload:
    """Unpickling this creates ``marker``: proof that code ran during loading."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_malicious(path, marker, style: str) -> None:
    tensor = torch.ones(16, 16)
    if style == "raw-pickle":  # a bare pickle stream (protocol 2, sniffed as a legacy torch pickle)
        path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    elif style == "torch-zip":
        torch.save({"w": tensor, "evil": Payload(marker)}, path)
    elif style == "torch-legacy":
        torch.save({"w": tensor, "evil": Payload(marker)}, path, _use_new_zipfile_serialization=False)
    else:  # pragma: no cover
        raise ValueError(style)


STYLES = ["raw-pickle", "torch-zip", "torch-legacy"]


@pytest.mark.parametrize("style", STYLES)
def test_malicious_payload_is_live(tmp_path, style):
    """Control: loading these files the unsafe way does create the marker."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    write_malicious(path, marker, style)
    if style == "raw-pickle":
        with path.open("rb") as fh:
            pickle.load(fh)
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("filename", ["evil.pt", "evil.safetensors"])
@pytest.mark.parametrize("style", STYLES)
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, style, filename):
    marker = tmp_path / "pwned"
    path = tmp_path / filename
    write_malicious(path, marker, style)
    with pytest.raises(OrthoscopeError, match="was refused: it holds Python objects other than tensors"):
        models.load(str(path))
    assert not marker.exists()


def test_malicious_pickle_in_a_folder_is_refused(tmp_path, tiny_bert):
    marker = tmp_path / "pwned"
    folder = tmp_path / "model"
    folder.mkdir()
    tiny_bert.config.to_json_file(folder / "config.json")
    write_malicious(folder / "pytorch_model.bin", marker, "torch-zip")
    with pytest.raises(OrthoscopeError, match="was refused"):
        models.load(str(folder))
    assert not marker.exists()


# ---------------------------------------------------------------------------------------
# Corrupt or wrong files


def _small_safetensors(path):
    save_file({"a.weight": torch.randn(16, 16), "b.weight": torch.randn(32, 16)}, str(path))
    return path


def test_truncated_safetensors(tmp_path):
    path = _small_safetensors(tmp_path / "model.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(OrthoscopeError, match=r"ends at byte \d+ of the data section.*truncated or corrupt"):
        models.load(str(path))


def test_safetensors_header_longer_than_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b'{"a": {}}')
    with pytest.raises(OrthoscopeError, match="header claims 10000 bytes but the file has only 9"):
        models.load(str(path))


def test_safetensors_header_not_json(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 8) + b"{notjson" + bytes(8))
    with pytest.raises(OrthoscopeError, match="header is not valid JSON"):
        models.load(str(path))


def test_safetensors_unknown_dtype(tmp_path):
    path = tmp_path / "model.safetensors"
    header = b'{"w": {"dtype": "X99", "shape": [2, 2], "data_offsets": [0, 16]}}'
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(OrthoscopeError, match="unknown dtype 'X99'"):
        models.load(str(path))


def test_empty_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(OrthoscopeError, match=r"is empty \(0 bytes\)"):
        models.load(str(path))


def test_text_file_renamed_pt(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("these are not the weights you are looking for\n")
    with pytest.raises(OrthoscopeError, match="is a text file, not a checkpoint"):
        models.load(str(path))


def test_random_bytes(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(bytes(range(200, 256)) * 4)
    with pytest.raises(OrthoscopeError, match="not a recognised checkpoint"):
        models.load(str(path))


def test_truncated_torch_zip(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.randn(64, 64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert sniff(path) == "torch-zip"
    with pytest.raises(OrthoscopeError, match="not a readable PyTorch checkpoint"):
        models.load(str(path))


@pytest.mark.parametrize(("payload", "error"), [
    (b"\x80\x02h\x05.", "KeyError"),  # BINGET of a memo slot never filled
    (b"\x80\x02K", "IndexError"),  # truncated inside the first opcode
    (b"\x80\x02.", "IndexError"),  # STOP on an empty stack
])
def test_corrupt_legacy_pickle(tmp_path, payload, error):
    path = tmp_path / "model.bin"
    path.write_bytes(payload)
    assert sniff(path) == "torch-pickle"
    with pytest.raises(OrthoscopeError, match=f"not a readable PyTorch checkpoint \\({error}"):
        models.load(str(path))


@pytest.mark.parametrize(("obj", "phrase"), [
    (torch.ones(16, 16), "holds a Tensor, not a state dict"),
    ({"epoch": 3, "lr": 0.1}, "holds no tensors"),
])
def test_pickle_without_a_state_dict(tmp_path, obj, phrase):
    path = tmp_path / "model.pt"
    torch.save(obj, path)
    with pytest.raises(OrthoscopeError, match=phrase):
        models.load(str(path))


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_gguf(tiny_llama_gguf, keep):
    path, _ = tiny_llama_gguf
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    assert sniff(path) == "gguf"
    with pytest.raises(OrthoscopeError, match="is not a readable GGUF file"):
        models.load(str(path))


def test_gguf_head_count_inconsistent_with_shapes(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "bad-heads.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_head_count(3)  # 16 rows cannot hold 3 heads of rotary pairs
    writer.add_tensor("blk.0.attn_q.weight", np.ones((16, 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    handle = models.load(str(path))
    with pytest.raises(OrthoscopeError, match=r"16 rows do not split into the file's head count \(3\)"):
        list(handle.iter_matrices())


# ---------------------------------------------------------------------------------------
# Folders


def test_folder_with_python_file_is_refused_and_not_imported(tiny_bert_folder, tmp_path):
    marker = tmp_path / "pwned"
    (tiny_bert_folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(OrthoscopeError, match=r"contains Python files \(modeling_evil.py\)"):
        models.load(str(tiny_bert_folder))
    assert not marker.exists()


def test_config_with_auto_map_is_refused(tiny_bert_folder):
    cfg_path = tiny_bert_folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(OrthoscopeError, match="has 'auto_map', which asks to run code"):
        models.load(str(tiny_bert_folder))


def test_config_path_with_auto_map_is_refused(tiny_bert_folder, tmp_path):
    cfg = json.loads((tiny_bert_folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(OrthoscopeError, match="auto_map"):
        models.load(str(tiny_bert_folder / "model.safetensors"), config_path=cfg_path)


def test_folder_with_config_but_no_weights(tiny_bert_folder):
    (tiny_bert_folder / "model.safetensors").unlink()
    with pytest.raises(OrthoscopeError, match="has a config.json but no weights"):
        models.load(str(tiny_bert_folder))


def test_folder_with_invalid_config(tiny_bert_folder):
    (tiny_bert_folder / "config.json").write_text("{not json")
    with pytest.raises(OrthoscopeError, match="is not valid JSON"):
        models.load(str(tiny_bert_folder))


def test_shard_index_naming_a_missing_shard(tmp_path, tiny_bert):
    folder = tmp_path / "sharded"
    tiny_bert.save_pretrained(folder, max_shard_size="20KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[0]
    (folder / victim).unlink()
    with pytest.raises(OrthoscopeError, match=f"names the shard {victim}, which is missing"):
        models.load(str(folder))


def test_shard_index_pointing_outside_the_folder(tmp_path, tiny_bert):
    folder = tmp_path / "sharded"
    tiny_bert.save_pretrained(folder, max_shard_size="20KB")
    _small_safetensors(tmp_path / "outside.safetensors")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../outside.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(OrthoscopeError, match="names a shard outside its folder"):
        models.load(str(folder))


# ---------------------------------------------------------------------------------------
# Paths: existence, allowed roots, size


def test_missing_path(tmp_path):
    with pytest.raises(OrthoscopeError, match="does not exist"):
        models.load(str(tmp_path / "nope.safetensors"))


@pytest.fixture
def roots(tmp_path):
    """An allowed root with a model in it, and a model outside it."""
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    return root, _small_safetensors(root / "inside.safetensors"), _small_safetensors(outside / "model.safetensors")


def test_path_inside_allowed_root(roots):
    root, inside, _ = roots
    handle = models.load(str(inside), allowed_roots=[root])
    assert len(list(handle.iter_matrices())) == 2


def test_path_outside_allowed_roots(roots):
    root, _, outside = roots
    with pytest.raises(OrthoscopeError, match="is outside the allowed directories"):
        models.load(str(outside), allowed_roots=[root])
    with pytest.raises(OrthoscopeError, match="is outside the allowed directories"):
        models.load(str(root / ".." / "outside" / "model.safetensors"), allowed_roots=[root])


def test_symlink_escaping_the_root(roots):
    root, _, outside = roots
    link = root / "link.safetensors"
    link.symlink_to(outside)
    with pytest.raises(OrthoscopeError, match="is outside the allowed directories"):
        models.load(str(link), allowed_roots=[root])
    linked_dir = root / "linked-dir"
    linked_dir.symlink_to(outside.parent, target_is_directory=True)
    with pytest.raises(OrthoscopeError, match="is outside the allowed directories"):
        models.load(str(linked_dir), allowed_roots=[root])


def test_symlink_inside_a_folder_escaping_the_root(roots, tiny_bert_folder):
    """A folder under the root whose weights file links outside it must not be read."""
    root, _, outside = roots
    folder = root / "model"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_bert_folder / "config.json").read_text())
    (folder / "model.safetensors").symlink_to(outside)
    with pytest.raises(OrthoscopeError, match="is outside the allowed directories"):
        models.load(str(folder), allowed_roots=[root])


def test_allowed_root_given_as_relative_or_linked_path(roots, tmp_path, monkeypatch):
    root, inside, _ = roots
    monkeypatch.chdir(tmp_path)
    assert models.load(str(inside), allowed_roots=[root.relative_to(tmp_path)]).num_params == 16 * 16 + 32 * 16
    alias = tmp_path / "alias"
    alias.symlink_to(root, target_is_directory=True)
    assert models.load(str(alias / "inside.safetensors"), allowed_roots=[alias]).num_params == 16 * 16 + 32 * 16


def test_reading_local_paths_turned_off(roots):
    _, inside, _ = roots
    with pytest.raises(OrthoscopeError, match=f"Reading local paths is turned off. Set {ALLOWED_ROOTS_ENV}"):
        models.load(str(inside), allowed_roots=[])


def test_allowed_roots_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b")]))
    assert allowed_roots() == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, "")
    assert allowed_roots() == []


def test_file_over_size_limit(roots):
    _, inside, _ = roots
    size_mib = inside.stat().st_size / 2**20
    with pytest.raises(OrthoscopeError, match=r"MiB, over the 0.001 MiB limit"):
        models.load(str(inside), max_mb=0.001)
    assert models.load(str(inside), max_mb=size_mib * 1.01).num_params > 0


def test_folder_over_size_limit(tiny_bert_folder):
    with pytest.raises(OrthoscopeError, match="over the 0.01 MiB limit"):
        models.load(str(tiny_bert_folder), max_mb=0.01)
