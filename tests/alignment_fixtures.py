"""Small inputs shared by the alignment page and CLI tests: planted arrays, tiny text encoders, texts."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import scipy.linalg as sl

WORDS = "the a cat dog sat ran on mat far rain sun cold hot ball game team won lost song band play loud quiet".split()


def planted_pair(n: int = 120, d: int = 8, noise: float = 0.0, seed: int = 0):
    """Y = X Q + mu (+ noise), Q random orthogonal; labels cycle over four classes."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    Q = sl.qr(rng.standard_normal((d, d)))[0]
    Y = X @ Q + rng.standard_normal(d) + noise * rng.standard_normal((n, d))
    labels = [f"class{i % 4}" for i in range(n)]
    return X.astype(np.float32), Y.astype(np.float32), labels


def classes_and_templates(n_classes: int = 100, n_templates: int = 12, d: int = 48, noise: float = 0.6,
                          spread: float = 0.3, seed: int = 0):
    """Items ``class + template`` (the shape of "a photo of a {class}" sets), seen by A and B through
    independent noise, B rotated and shifted: ``Y = (Z + e') Q + mu``. Labels are the classes.

    The template vectors are small beside the class vectors, so an item's nearest rivals are its
    own class's other templates: a gallery made of whole classes (the unseen-classes split) is
    harder than one with a few items of every class.
    """
    rng = np.random.default_rng(seed)
    classes = rng.standard_normal((n_classes, d))
    templates = spread * rng.standard_normal((n_templates, d))
    Z = (classes[:, None, :] + templates[None]).reshape(-1, d)
    Q = sl.qr(rng.standard_normal((d, d)))[0]
    X = Z + noise * rng.standard_normal(Z.shape)
    Y = (Z + noise * rng.standard_normal(Z.shape)) @ Q + 2 * rng.standard_normal(d)
    labels = [f"class{i // n_templates}" for i in range(len(Z))]
    return X, Y, labels


def npy_bytes(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def tiny_bert_with_tokenizer(folder: Path, seed: int, hidden: int = 32) -> Path:
    """A 2-layer BertModel saved with save_pretrained, plus a word-level vocab.txt it can tokenize with."""
    import torch
    from transformers import BertConfig, BertModel

    from tests.conftest import TINY_BERT

    torch.manual_seed(seed)
    BertModel(BertConfig(**{**TINY_BERT, "hidden_size": hidden})).eval().save_pretrained(folder)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    assert len(vocab) <= TINY_BERT["vocab_size"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return folder


def texts_csv(n: int = 40) -> bytes:
    """Short texts from WORDS with two labels, as a CSV with a header."""
    rng = np.random.default_rng(0)
    lines = ["text,label"]
    for i in range(n):
        words = rng.choice(WORDS, size=5)
        lines.append(f"{' '.join(words)} {i % 7},{'odd' if i % 2 else 'even'}")
    return ("\n".join(lines) + "\n").encode()


def tiny_clip_folder(folder: Path, seed: int) -> Path:
    """A randomly initialised CLIPModel (save_pretrained) with a tiny BPE tokenizer and image processor."""
    import json

    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=40, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(cfg).eval().save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def image_set(n: int = 24) -> tuple[list[tuple[str, bytes]], tuple[str, bytes]]:
    """``n`` generated PNG squares in three colours, and a captions.csv naming each with its colour."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    files, rows = [], ["image,text,label"]
    for i in range(n):
        label = list(colours)[i % 3]
        pixels = np.clip(np.array(colours[label]) + rng.normal(0, 30, (24 + i % 5, 28, 3)), 0, 255).astype("uint8")
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        files.append((f"img{i}.png", buf.getvalue()))
        rows.append(f"img{i}.png,a {label} square number {i},{label}")
    return files, ("captions.csv", ("\n".join(rows) + "\n").encode())
