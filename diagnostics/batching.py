"""Batching token sequences of different lengths for causal language models."""

from __future__ import annotations

from typing import Sequence

import torch


def right_padded(seqs: Sequence[Sequence[int] | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and the index of each sequence's last token.

    Right padding leaves every real position's logits unchanged in a causal model, whatever the
    pad id (0 here): real tokens never attend to the later pads.
    """
    length = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask, torch.tensor([len(s) - 1 for s in seqs])
