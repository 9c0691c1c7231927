"""Dense staging for the backends written in Python: the compiled op's policy (csrc/op_host.h, DenseGroup),
the only one. A tensor that is not dense in its param's layout is stepped through a dense copy, and the
copies the step writes are copied back afterwards."""

from __future__ import annotations

import torch

from . import _extension


def stage_dense(params, grads, square_avgs, acc_deltas, master_params, grad_mode) -> tuple[list[tuple], list, bool]:
    """(rows of (param, grad, square_avg, acc_delta, master or None), (caller's tensor, copy) to write back,
    whether any row holds a copy: a copy lives one step, so its address must not be cached)."""
    ext = _extension.module()
    if ext is None:
        raise RuntimeError(f"staging needs the compiled extension: {_extension.load_error()}")
    rows, write_back, staged = ext.stage_dense(
        params, grads, square_avgs, acc_deltas, list(master_params or []), int(grad_mode)
    )
    return [tuple(row) if len(row) == 5 else (*row, None) for row in rows], write_back, staged


def finish(write_back: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for target, staged in write_back:
        target.copy_(staged)
