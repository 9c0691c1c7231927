"""One 8-bit-state step of 32 Mi fp32 params on the CPU, two threads (torch's default here): median of 40 steps.

    PYTHONPATH=<tree> python bench/results/quantized-zen4-prefetch-20261204/step_time.py LABEL
"""

import statistics
import sys
import time

import torch

from adadelta_fused import Adadelta

torch.manual_seed(0)
n = 32 * 2**20
p = torch.randn(n, requires_grad=True)
p.grad = torch.randn(n) * 1e-3
opt = Adadelta([p], lr=1.0, state_dtype=torch.uint8, backend="cpp")
for _ in range(5):
    opt.step()
times = []
for _ in range(40):
    start = time.perf_counter()
    opt.step()
    times.append(time.perf_counter() - start)
times.sort()
print(f"{sys.argv[1]}: median {statistics.median(times) * 1e3:.2f} ms p10 {times[4] * 1e3:.2f}")
