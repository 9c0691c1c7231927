"""The flat view check alone (csrc/ops.cpp flat_view_status, 4096 params of 16 elements, one thread, warm, fastest
mean of 50 batches of 200 calls) with the grad views as the optimizer made them, then made again in one loop
(`loop`) or by one torch.split (`split`), with the strides between their TensorImpls' addresses.
`taskset -c 1 python packed_grad_views.py split`"""
import collections
import itertools
import sys
import time

import torch
from adadelta_fused import Adadelta, _extension
torch.set_num_threads(1)
params = [torch.nn.Parameter(torch.rand(16) + 0.5) for _ in range(4096)]
for p in params: p.grad = torch.rand(16) + 0.5
opt = Adadelta(params, backend="cpp", flatten=True); opt.step()
(flat,) = opt._flat_groups[0]
check = _extension.module().flat_view_status
def t():
    args = [flat.params, flat.param, flat.grad, flat._expected, False]
    def batch():
        s = time.perf_counter()
        for _ in range(200): check(*args)
        return (time.perf_counter() - s) / 200
    return min(batch() for _ in range(50)) * 1e6
def stride_info():
    g = flat._expected[:, 1].tolist()
    return collections.Counter(b - a for a, b in zip(g, g[1:])).most_common(3)
print("as built", f"{t():.1f}", stride_info())
mode = sys.argv[1]
if mode == "loop":
    views = [flat.grad.as_strided(p.shape, p.stride(), off) for p, off in zip(params, flat.offsets)]
else:
    sizes = [p.numel() for p in params]
    assert flat.offsets == list(itertools.accumulate([0] + sizes[:-1])), "slots with gaps: split cannot make them"
    views = list(torch.split(flat.grad[: sum(sizes)], sizes))
for p, v in zip(params, views): p.grad = v
flat._grad_views = views
flat._expected[:, 1] = torch.tensor([v._cdata for v in views])
print(mode, f"{t():.1f}", stride_info())
opt.step()  # (the step accepts the new views as the params' grads)
