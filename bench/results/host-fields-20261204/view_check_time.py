"""The flat buffers' per-step view check alone (csrc/ops.cpp flat_view_status), warm: 4096 params of 16
elements under flatten=True, the check called on the same params again and again.

    PYTHONPATH=<tree> python bench/results/host-fields-20261204/view_check_time.py --threads 1

Prints the fastest mean of --batches batches of --calls calls, in microseconds per check.
"""

from __future__ import annotations

import argparse
import time

import torch

from adadelta_fused import Adadelta, _extension


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--params", type=int, default=4096)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = [torch.nn.Parameter(torch.rand(16) + 0.5) for _ in range(args.params)]
    for p in params:
        p.grad = torch.rand(16) + 0.5
    optimizer = Adadelta(params, backend="cpp", flatten=True)
    optimizer.step()
    (flat,) = optimizer._flat_groups[0]
    check = _extension.module().flat_view_status
    arguments = [flat.params, flat.param, flat.grad, flat._expected]
    try:
        check(*arguments)
    except TypeError:  # main after 7169383 also takes frozen_have_none
        arguments.append(False)

    def batch() -> float:
        start = time.perf_counter()
        for _ in range(args.calls):
            check(*arguments)
        return (time.perf_counter() - start) / args.calls

    print(f"threads {args.threads}: view check {min(batch() for _ in range(args.batches)) * 1e6:.1f} us")


if __name__ == "__main__":
    main()
