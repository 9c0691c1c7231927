"""ns per element of the 8-bit CPU op (fp32 params), at 64 Ki, 1 Mi and 32 Mi elements: median and best of
repeated steps, each set of buffers used in turn. Runs against whichever adadelta_fused is on PYTHONPATH, and
quantizes with the format's own signature (with eps since the RMS format, without before), so that one script
times both sides of the change.

    PYTHONPATH=<tree> taskset -c 1 python ns_per_element.py [threads]
"""

import statistics
import sys
import time

import torch

from adadelta_fused import quantized_reference
from adadelta_fused.contract import StepScalars, quantized_op_arguments

EPS = 1e-6
SCALARS = StepScalars(lr=1e-3, rho=0.9, eps=EPS, weight_decay=0.0)


def quantize(values, param):
    try:
        return quantized_reference.quantize(values, param, EPS)
    except TypeError:  # the sqrt(x) format's reference takes no eps
        return quantized_reference.quantize(values, param)


def step_arguments(n, generator):
    param = torch.randn(n, generator=generator)
    grad = torch.randn(n, generator=generator) * 0.1
    square_avg, square_avg_scale = quantize(torch.rand(n, generator=generator) * 1e-2, param)
    acc_delta, acc_delta_scale = quantize(torch.rand(n, generator=generator) * 1e-4, param)
    return quantized_op_arguments([param], [grad], [square_avg], [acc_delta], None, [square_avg_scale],
                                  [acc_delta_scale], SCALARS)


def main():
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    generator = torch.Generator().manual_seed(0)
    op = torch.ops.adadelta_fused.quantized_adadelta_
    for n in (64 * 1024, 1024 * 1024, 32 * 1024 * 1024):
        sets = [step_arguments(n, generator) for _ in range(max(1, min(8, (64 << 20) // (10 * n))))]
        for arguments in sets:
            op(*arguments)
        times = []
        for r in range(max(5, int(2e7 // n))):
            start = time.perf_counter()
            op(*sets[r % len(sets)])
            times.append(time.perf_counter() - start)
        print(f"n={n:>9}  {statistics.median(times) / n * 1e9:.3f} ns/elem  (best {min(times) / n * 1e9:.3f})",
              flush=True)


if __name__ == "__main__":
    main()
