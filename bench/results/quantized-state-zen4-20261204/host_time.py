"""The host time per param of an optimizer step, as measured for this folder's README: one thread, 1024 params
of 256 elements against one param of 256 (the first measure), and against one param of 256 Ki elements, the same
bytes (host time alone: the 8-bit arithmetic of 256 elements is in the first), best of 7 x 20 steps, per state
layout.

    python bench/results/quantized-state-zen4-20261204/host_time.py
"""

import time

import torch

from adadelta_fused import Adadelta


def seconds_per_step(n_params: int, numel: int, **options) -> float:
    params = [torch.nn.Parameter(torch.randn(numel)) for _ in range(n_params)]
    for p in params:
        p.grad = torch.randn(numel) * 0.1
    optimizer = Adadelta(params, lr=1.0, **options)
    for _ in range(5):
        optimizer.step()
    best = float("inf")
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(20):
            optimizer.step()
        best = min(best, (time.perf_counter() - started) / 20)
    return best


if __name__ == "__main__":
    torch.set_num_threads(1)
    for options in ({}, {"state_dtype": torch.uint8}, {"flatten": True}, {"flatten": True, "state_dtype": torch.uint8}):
        one, many = seconds_per_step(1, 256, **options), seconds_per_step(1024, 256, **options)
        same_bytes = seconds_per_step(1, 1024 * 256, **options)
        print(f"{options}: 1 param {one * 1e6:.1f} us, 1024 params {many * 1e6:.0f} us, "
              f"{(many - one) / 1023 * 1e6:.2f} us a param; 1 param of 256 Ki {same_bytes * 1e6:.0f} us, "
              f"{(many - same_bytes) / 1023 * 1e6:.2f} us a param")
