"""Memory layout facts shared by the specification and the flat buffers."""

from __future__ import annotations

import torch


def is_dense(t: torch.Tensor) -> bool:
    """Every element of the tensor's span is one of its elements exactly once (any dim order)."""
    expected = 1
    for stride, size in sorted((stride, size) for size, stride in zip(t.shape, t.stride()) if size != 1):
        if stride != expected:
            return False
        expected *= size
    return True
