"""Shared fixtures: tiny checkpoints written into tmp_path, and a hub-free environment."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# `pytest` (not only `python -m pytest`) should find the project's packages.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Pages run their diagnostics as background jobs and poll them from the browser; a scripted run
# (AppTest) waits for the job instead. The browser tests' server does not inherit this.
os.environ["ORTHOSCOPE_WAIT_FOR_JOBS"] = "1"

TINY_BERT = dict(
    vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    max_position_embeddings=32, type_vocab_size=2,
)
TINY_LLAMA = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=32, rms_norm_eps=1e-6, tie_word_embeddings=False,
)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub: HF_HUB_OFFLINE=1 and an empty HF_HOME, also for an already imported huggingface_hub."""
    hf_home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    return hf_home


@pytest.fixture(scope="session", autouse=True)
def gguf_cache_dir(tmp_path_factory):
    """One GGUF module cache for the whole run (models/module_cache.py), never the user's: SmolLM2 is then
    dequantised once, not once per test module that builds it. Removed at the end, as it holds ~0.5 GB."""
    folder = tmp_path_factory.mktemp("orthoscope-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ORTHOSCOPE_CACHE_DIR", str(folder))
        yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def tiny_bert():
    """A seeded 2-layer BertModel (hidden 32)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(**TINY_BERT)).eval()


@pytest.fixture
def tiny_bert_folder(tmp_path, tiny_bert) -> Path:
    """An HF folder (config.json + model.safetensors) written by ``save_pretrained``."""
    folder = tmp_path / "tiny-bert"
    tiny_bert.save_pretrained(folder)
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    return folder


# llama.cpp's tensor names for the llama architecture.
_GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def gguf_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    parts = hf_name.split(".")  # model.layers.N.<module...>.weight
    return f"blk.{parts[2]}.{_GGUF_NAMES['.'.join(parts[3:-1])]}.{parts[-1]}"


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf does to q_proj/k_proj rows (rotary halves interleaved)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture
def tiny_llama_gguf(tmp_path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A llama GGUF file (F32) converted the way llama.cpp does it, and the HF state dict it came from."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    c = TINY_LLAMA
    path = tmp_path / "gguf" / "tiny-llama.F32.gguf"
    path.parent.mkdir()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(c["num_hidden_layers"])
    writer.add_context_length(c["max_position_embeddings"])
    writer.add_embedding_length(c["hidden_size"])
    writer.add_feed_forward_length(c["intermediate_size"])
    writer.add_head_count(c["num_attention_heads"])
    writer.add_head_count_kv(c["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(c["rms_norm_eps"])
    writer.add_rope_dimension_count(c["hidden_size"] // c["num_attention_heads"])
    writer.add_vocab_size(c["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for name, tensor in state.items():
        data = tensor.numpy()
        if "q_proj" in name:
            data = llama_cpp_permute(data, c["num_attention_heads"])
        elif "k_proj" in name:
            data = llama_cpp_permute(data, c["num_key_value_heads"])
        writer.add_tensor(gguf_name(name), np.ascontiguousarray(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, state


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="session")
def tiny_chat_llama(tmp_path_factory) -> Path:
    """An HF folder: a random tiny llama with a byte-level BPE tokenizer (trained here on the built-in
    steering texts: ' dog' is one token, ' puppy' and ' bark' are split) and a chat template."""
    from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    data = Path(__file__).resolve().parents[1] / "data" / "steering"
    texts = [line for f in sorted(data.glob("*.jsonl")) for line in f.read_text(encoding="utf-8").splitlines()]
    texts += (data / "neutral.txt").read_text(encoding="utf-8").splitlines()
    tok = Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHAT_TEMPLATE
    folder = tmp_path_factory.mktemp("tiny-chat-llama")
    torch.manual_seed(0)
    config = LlamaConfig(**{**TINY_LLAMA, "vocab_size": len(fast), "num_hidden_layers": 4, "tie_word_embeddings": True,
                            "max_position_embeddings": 256,
                            "eos_token_id": fast.eos_token_id, "pad_token_id": fast.pad_token_id,
                            "bos_token_id": fast.bos_token_id})
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
