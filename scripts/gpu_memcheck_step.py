"""A small multi-tensor step and a small flat step of one kernel, fp32 and bf16, for compute-sanitizer.

    compute-sanitizer --tool memcheck python scripts/gpu_memcheck_step.py --backend cpp

Run by scripts/gpu_check.py. The sizes straddle every boundary the kernels index around: 0 and 1 element,
15 and 17 (a 4- or 8-element vector plus a tail), 1023 and 4097 (a block plus one), and 64 Ki + 3 (a chunk of
the multi-tensor walk plus a tail). Under PYTORCH_NO_CUDA_MEMORY_CACHING=1 each tensor is its own
allocation, so a read or write one element past a tensor is outside any allocation and memcheck reports it.
"""

from __future__ import annotations

import argparse

import torch

from adadelta_fused import Adadelta, adadelta_

SIZES = (0, 1, 15, 17, 1023, 4097, 64 * 1024 + 3)


def tensors(dtype: torch.dtype, generator: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(n, generator=generator).to(dtype=dtype, device="cuda") for n in SIZES]


def multi_tensor_step(backend: str, dtype: torch.dtype, generator: torch.Generator) -> None:
    params, grads = tensors(dtype, generator), tensors(dtype, generator)
    square_avgs = [t.abs() for t in tensors(dtype, generator)]
    acc_deltas = [t.abs() for t in tensors(dtype, generator)]
    steps = [torch.tensor(0.0) for _ in SIZES]
    for _ in range(2):
        adadelta_(params, grads, square_avgs, acc_deltas, steps, lr=1.0, rho=0.9, eps=1e-6, backend=backend)


def flat_step(backend: str, dtype: torch.dtype, generator: torch.Generator) -> None:
    params = [torch.nn.Parameter(t) for t in tensors(dtype, generator)]
    for param, grad in zip(params, tensors(dtype, generator), strict=True):
        param.grad = grad
    optimizer = Adadelta(params, backend=backend, flatten=True, zero_grad_in_step=True)
    for _ in range(2):
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True, choices=["cpp", "triton"])
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        multi_tensor_step(args.backend, dtype, generator)
        flat_step(args.backend, dtype, generator)
    torch.cuda.synchronize()
    print(f"{args.backend}: multi-tensor and flat steps ran, fp32 and bf16, sizes {SIZES}")


if __name__ == "__main__":
    main()
