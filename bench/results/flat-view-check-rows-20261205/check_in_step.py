"""Where the flat step's extra time goes, 4096 params of 16 elements, one thread, warm: the native view check
timed right after a step and right after another check, and the step with its check stubbed out (every view
found intact) timed right after a check and right after a step. The medians of --samples samples, --rounds
rounds.

    PYTHONPATH=<tree> taskset -c 1 python bench/results/flat-view-check-rows-20261205/check_in_step.py
"""

from __future__ import annotations

import argparse
import time

import torch

import adadelta_fused.flat
from adadelta_fused import Adadelta, _extension


def median_us(samples: list[int]) -> float:
    return sorted(samples)[len(samples) // 2] / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = [torch.nn.Parameter(torch.randn(16)) for _ in range(4096)]
    for p in params:
        p.grad = torch.randn(16)
    optimizer = Adadelta(params, backend="cpp", flatten=True)
    optimizer.step()
    (flat,) = optimizer._flat_groups[0]
    check = _extension.module().flat_view_status
    arguments = (flat.params, flat.param, flat.grad, flat._expected, False)
    adadelta_fused.flat._view_status = lambda *_: (-1, [], [])
    clock = time.perf_counter_ns
    for _ in range(args.rounds):
        check_after_step, check_after_check, step_after_check, step_after_step = [], [], [], []
        for _ in range(args.samples):
            t0 = clock()
            check(*arguments)
            t1 = clock()
            optimizer.step()
            t2 = clock()
            optimizer.step()
            t3 = clock()
            check(*arguments)
            t4 = clock()
            check(*arguments)
            t5 = clock()
            check_after_step.append(t1 - t0)
            step_after_check.append(t2 - t1)
            step_after_step.append(t3 - t2)
            check_after_check.append(t5 - t4)
        print(f"check after a step {median_us(check_after_step):.1f} us, after a check "
              f"{median_us(check_after_check):.1f}; stubbed step after a check {median_us(step_after_check):.1f}, "
              f"after a step {median_us(step_after_step):.1f}")


if __name__ == "__main__":
    main()
