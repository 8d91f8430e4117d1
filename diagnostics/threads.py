"""Thread settings shared by diagnostics that run many small torch operations."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread inside the block, restoring the previous count afterwards.

    Forward passes, traversals and small SVD chains are long sequences of small operations; on
    this project's 2-core machines, shared with other processes, two torch threads made them
    3-7x slower than one (the threads wait on each other whenever a core is taken). The setting
    is process-wide while the block runs.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
