"""Small helpers every chart module uses."""

from __future__ import annotations


def block_order(blocks) -> list[str]:
    """Embeddings first, numbered blocks in numeric order, then everything else."""
    blocks = list(dict.fromkeys(blocks))
    numbered = sorted((b for b in blocks if str(b).isdigit()), key=int)
    first = [b for b in blocks if b == "embeddings"]
    rest = sorted(b for b in blocks if b not in numbered and b not in first)
    return first + numbered + rest
