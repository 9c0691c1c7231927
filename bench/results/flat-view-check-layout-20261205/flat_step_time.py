"""flatten=True's host time for 4096 params of 16 elements against one param of 64 Ki (the same bytes), warm:
fastest and median of 40 batches of 100 steps, three rounds. `taskset -c 1 python flat_step_time.py time 1`
(mode `stub`: the same with the view check replaced by one that finds every view intact; `many`/`one`: a
cProfile of 2000 steps instead; the last argument: torch threads)."""
import sys, time, torch
from adadelta_fused import Adadelta
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
def make(n, size):
    ps = [torch.nn.Parameter(torch.randn(size)) for _ in range(n)]
    opt = Adadelta(ps, flatten=True)
    for p in ps: p.grad = torch.randn(size)
    opt.step()
    for p in ps: p.grad.copy_(torch.randn(size))  # (views after flatten)
    return ps, opt
def best(opt, batches=40, per=100):
    for _ in range(50): opt.step()
    t = []
    for _ in range(batches):
        s = time.perf_counter_ns()
        for _ in range(per): opt.step()
        t.append((time.perf_counter_ns() - s) / per / 1e3)
    t.sort()
    return t[0], t[len(t)//2]
one = make(1, 4096*16)
many = make(4096, 16)
mode = sys.argv[1]
if mode == "stub":
    import adadelta_fused.flat

    adadelta_fused.flat._view_status = lambda *args: (-1, [], [])
if mode in ("time", "stub"):
    for r in range(3):
        a = best(one[1]); b = best(many[1])
        print(f"one {a[0]:.1f}/{a[1]:.1f}  many {b[0]:.1f}/{b[1]:.1f}  diff(best) {b[0]-a[0]:.1f} diff(med) {b[1]-a[1]:.1f}")
else:
    import cProfile, pstats
    opt = many[1] if mode == "many" else one[1]
    for _ in range(100): opt.step()
    pr = cProfile.Profile(); pr.enable()
    for _ in range(2000): opt.step()
    pr.disable()
    pstats.Stats(pr).sort_stats("tottime").print_stats(25)
