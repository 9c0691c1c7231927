"""What older torch releases, down to the floor in _requirements (2.11), lack or do differently."""

from __future__ import annotations

import torch
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype


def group_by_device_and_dtype(lists: list[list[torch.Tensor]]) -> dict:
    """torch's grouping of tensor lists by the (device, dtype) of the first list, in its result format.

    torch 2.11 refuses lists whose tensors at one index differ in dtype ("Tensors of the same index must be on
    the same device and the same dtype"), which bf16 params with fp32 state or fp32 masters are; 2.14 groups
    them. There, group in Python by the param's (device, dtype) instead.
    """
    try:
        return _group_tensors_by_device_and_dtype(lists, with_indices=True)
    except RuntimeError as error:
        if "same dtype" not in str(error):
            raise
    grouped: dict = {}
    for index, param in enumerate(lists[0]):
        columns, indices = grouped.setdefault((param.device, param.dtype), ([[] for _ in lists], []))
        for column, tensors in zip(columns, lists):
            column.append(tensors[index])
        indices.append(index)
    return grouped
