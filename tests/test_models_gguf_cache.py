"""The on-disk cache of GGUF-built modules (models/module_cache.py): written once, read back identical, and
never trusted when damaged, stale or turned off."""

from __future__ import annotations

import json
import logging
import os
import time

import pytest
import torch

import models
from models import module_cache

INPUT = torch.tensor([[1, 5, 9, 2, 33, 7]])


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """A cache of the test's own, empty: the session's shared one may already hold the entry."""
    root = tmp_path / "cache"
    monkeypatch.setenv(module_cache.ENV, str(root))
    return root


@pytest.fixture
def conversions(monkeypatch):
    """Counts transformers' GGUF reads (every GGUF module build reads the file's config through it)."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    calls = []
    original = gguf_utils.load_gguf_checkpoint

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", counting)
    return calls


def _build(path) -> tuple[torch.nn.Module, models.ModelHandle]:
    handle = models.load(str(path))
    return handle.module(), handle


def _logits(module: torch.nn.Module, ids: torch.Tensor = INPUT) -> torch.Tensor:
    with torch.no_grad():
        return module(input_ids=ids).logits


def _entry(root, handle):
    return root / module_cache.MODULES / handle.fingerprint


def test_second_build_reads_the_cache(tiny_llama_gguf, cache, conversions):
    path, state = tiny_llama_gguf
    first, handle = _build(path)
    assert conversions, "the first build converts the GGUF"
    entry = _entry(cache, handle)
    assert {"config.json", "model.safetensors", module_cache.MANIFEST} <= {p.name for p in entry.iterdir()}
    assert "quantization_config" not in json.loads((entry / "config.json").read_text())
    conversions.clear()

    second, _ = _build(path)
    assert conversions == []
    assert type(second) is type(first) and not second.training
    assert second.state_dict().keys() == first.state_dict().keys() == state.keys()
    for name, tensor in first.state_dict().items():
        assert torch.equal(second.state_dict()[name], tensor), name
    assert torch.equal(_logits(second), _logits(first))


def _no_weights(entry):
    (entry / "model.safetensors").unlink()


def _truncated_weights(entry):
    data = (entry / "model.safetensors").read_bytes()
    (entry / "model.safetensors").write_bytes(data[: len(data) // 2])


def _no_manifest(entry):
    (entry / module_cache.MANIFEST).unlink()


def _other_transformers(entry):
    (entry / module_cache.MANIFEST).write_text(json.dumps({**module_cache._manifest(), "transformers": "0.0.1"}))


def _missing_tensor(entry):
    from safetensors.torch import load_file, save_file

    state = load_file(entry / "model.safetensors")
    del state["model.layers.0.mlp.up_proj.weight"]
    save_file(state, entry / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("damage", [_no_weights, _truncated_weights, _no_manifest, _other_transformers, _missing_tensor])
def test_damaged_or_stale_entry_is_rebuilt(tiny_llama_gguf, cache, conversions, damage):
    path, _ = tiny_llama_gguf
    first, handle = _build(path)
    damage(_entry(cache, handle))
    conversions.clear()

    rebuilt, _ = _build(path)
    assert conversions, "a damaged entry is not read; the GGUF is converted again"
    assert torch.equal(_logits(rebuilt), _logits(first))
    conversions.clear()
    again, _ = _build(path)
    assert conversions == [], "the rebuild replaced the damaged entry"
    assert torch.equal(_logits(again), _logits(first))


def test_leftover_temporary_folders_are_never_read(tiny_llama_gguf, cache, conversions):
    path, _ = tiny_llama_gguf
    fingerprint = models.load(str(path)).fingerprint
    section = cache / module_cache.MODULES
    fresh, stale = section / f".tmp-{fingerprint}-fresh", section / f".tmp-{fingerprint}-stale"
    for half in (fresh, stale):  # what a writer that died mid-way leaves: a config, no weights, no manifest
        half.mkdir(parents=True)
        (half / "config.json").write_text("{}")
    old = time.time() - 2 * module_cache._STALE_TMP_S
    os.utime(stale, (old, old))

    first, handle = _build(path)
    assert conversions
    assert (_entry(cache, handle) / "model.safetensors").exists()
    assert fresh.exists(), "a young temporary folder may belong to a writer still at work"
    assert not stale.exists(), "an old one is a dead writer's and is removed"
    conversions.clear()
    second, _ = _build(path)
    assert conversions == []
    assert torch.equal(_logits(second), _logits(first))


def test_unwritable_cache_falls_back_to_the_gguf(tiny_llama_gguf, monkeypatch, tmp_path, caplog, conversions):
    path, state = tiny_llama_gguf
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    # A path under a regular file cannot be created, even by root (which chmod would not stop).
    monkeypatch.setenv(module_cache.ENV, str(blocker / "cache"))
    with caplog.at_level(logging.WARNING, logger=module_cache.__name__):
        module, _ = _build(path)
    assert conversions
    assert any("could not cache" in r.getMessage() for r in caplog.records)
    assert module.state_dict().keys() == state.keys()
    assert torch.isfinite(_logits(module)).all()
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("value", ["", "off", "OFF", " off "])
def test_cache_can_be_turned_off(tiny_llama_gguf, monkeypatch, tmp_path, conversions, value):
    path, _ = tiny_llama_gguf
    monkeypatch.setenv(module_cache.ENV, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert module_cache.cache_root() is None
    first, _ = _build(path)
    conversions.clear()
    second, _ = _build(path)
    assert conversions, "with the cache off every build converts the GGUF"
    assert torch.equal(_logits(second), _logits(first))
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(module_cache.ENV, str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert module_cache.cache_root() == tmp_path / "mine"
    monkeypatch.delenv(module_cache.ENV)
    assert module_cache.cache_root() == tmp_path / "xdg" / "orthoscope"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert module_cache.cache_root() == tmp_path / "home" / ".cache" / "orthoscope"


def test_smollm2_warm_start_is_fast_and_identical(cache, monkeypatch):
    """The real case: SmolLM2 (Q4_1, tied lm_head), module and tokenizer, cold then warm."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = ["The quick brown fox jumps over the lazy dog.", "Dogs bark; puppies  play!\n\tÜber 42 émojis 🐶"]
    chat = [{"role": "user", "content": "Tell me about dogs."}]

    timings, outputs = {}, {}
    for start in ("cold", "warm"):
        handle = models.load("builtin:smollm2")
        t0 = time.perf_counter()
        module = handle.module()
        timings[start] = time.perf_counter() - t0
        t0 = time.perf_counter()
        tok = handle.tokenizer()
        timings[f"{start} tokenizer"] = time.perf_counter() - t0
        ids = tok(texts[0], return_tensors="pt")["input_ids"]
        outputs[start] = dict(
            logits=_logits(module, ids), encodings=[tok(t)["input_ids"] for t in texts],
            chat=tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False),
            special=(tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, module.generation_config.eos_token_id),
            tied=module.lm_head.weight.data_ptr() == module.model.embed_tokens.weight.data_ptr(),
        )
    print("SmolLM2 build times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))

    cold, warm = outputs["cold"], outputs["warm"]
    assert torch.equal(warm["logits"], cold["logits"])
    assert warm["encodings"] == cold["encodings"] and warm["chat"] == cold["chat"]
    assert warm["special"] == cold["special"]
    assert cold["tied"] and warm["tied"]
    assert timings["warm"] < timings["cold"] / 3
    assert timings["warm tokenizer"] < timings["cold tokenizer"] / 3
