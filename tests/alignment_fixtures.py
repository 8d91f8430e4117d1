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
