"""The per-tensor step's host time for 4096 params of 16 elements against one param of 64 Ki, warm, one thread:
fastest and median of 30 batches of 50 steps, three rounds. `taskset -c 1 python per_tensor_time.py time`
(`profile`: a cProfile of 300 steps of the 4096 params instead)."""
import sys, time, torch
from adadelta_fused import Adadelta
torch.set_num_threads(1)
def make(n, size):
    ps = [torch.nn.Parameter(torch.randn(size)) for _ in range(n)]
    for p in ps: p.grad = torch.randn(size)
    opt = Adadelta(ps, backend="cpp")
    opt.step()
    return ps, opt
def best(opt, batches=30, per=50):
    for _ in range(20): opt.step()
    t = []
    for _ in range(batches):
        s = time.perf_counter_ns()
        for _ in range(per): opt.step()
        t.append((time.perf_counter_ns() - s) / per / 1e3)
    t.sort()
    return t[0], t[len(t)//2]
one = make(1, 4096*16); many = make(4096, 16)
if sys.argv[1] == "time":
    for r in range(3):
        a = best(one[1]); b = best(many[1])
        print(f"one {a[0]:.1f} many {b[0]:.1f}/{b[1]:.1f} us/param above one (best) {(b[0]-a[0])/4095:.3f} (med) {(b[1]-a[1])/4095:.3f}")
else:
    import cProfile, pstats
    opt = many[1]
    pr = cProfile.Profile(); pr.enable()
    for _ in range(300): opt.step()
    pr.disable()
    pstats.Stats(pr).sort_stats("tottime").print_stats(18)
