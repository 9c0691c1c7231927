"""Host time of a step for 4096 params of 16 elements against one param of 64 Ki (the same bytes), warm, on the
threads given: the fastest and the median of --batches batches of --steps steps, --rounds rounds, and the
difference of the two (per param, for the per-tensor step).

    taskset -c 1 python host_time.py flat          # flatten=True
    taskset -c 1 python host_time.py flat-stub     # flatten=True with the view check finding every view intact
    taskset -c 1 python host_time.py per-tensor    # Adadelta(backend="cpp")

--profile prints a cProfile of the 4096-param step instead.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

import adadelta_fused.flat
from adadelta_fused import Adadelta


def optimizer(count: int, size: int, flatten: bool) -> Adadelta:
    params = [torch.nn.Parameter(torch.randn(size)) for _ in range(count)]
    for p in params:
        p.grad = torch.randn(size)
    opt = Adadelta(params, backend="cpp", flatten=flatten)
    opt.step()
    return opt


def fastest_and_median(opt: Adadelta, batches: int, steps: int) -> tuple[float, float]:
    for _ in range(steps):
        opt.step()
    times = []
    for _ in range(batches):
        start = time.perf_counter_ns()
        for _ in range(steps):
            opt.step()
        times.append((time.perf_counter_ns() - start) / steps / 1e3)
    times.sort()
    return times[0], times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["flat", "flat-stub", "per-tensor"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flatten = args.mode != "per-tensor"
    one, many = optimizer(1, 4096 * 16, flatten), optimizer(4096, 16, flatten)
    if args.mode == "flat-stub":
        adadelta_fused.flat._view_status = lambda *arguments: (-1, [], [])
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(lambda: [many.step() for _ in range(args.batches * args.steps)])
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    per = 1 if flatten else 4095
    unit = "us above one param" if flatten else "us a param above one param"
    for _ in range(args.rounds):
        (one_best, one_median), (many_best, many_median) = (fastest_and_median(o, args.batches, args.steps)
                                                            for o in (one, many))
        print(f"one {one_best:.1f}/{one_median:.1f} us, 4096 params {many_best:.1f}/{many_median:.1f} us: "
              f"{(many_best - one_best) / per:.3f} (fastest) {(many_median - one_median) / per:.3f} (median) {unit}")


if __name__ == "__main__":
    main()
