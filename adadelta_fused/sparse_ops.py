"""The sparse op's schema, declared once, when ``import adadelta_fused`` runs, with its fake kernel.

``adadelta_fused::sparse_adadelta_`` gets its CPU and CUDA kernels from the compiled extension
(csrc/cpu/sparse_cpu.cpp, csrc/cuda/sparse_cuda.cu); the Triton op ``adadelta_fused::triton_sparse_adadelta_``
(adadelta_fused/sparse_triton.py) takes the same schema. The contract is ``adadelta_fused.sparse_reference``.
"""

from __future__ import annotations

import torch

from . import _extension
from .ops import NAMESPACE

# param, the accumulators and the row record are written (only in the listed rows); rows and values are
# read. values None: the listed rows only catch up on the decays they missed, to ``step``.
SPARSE_STEP_SCHEMA = (
    "(Tensor(a!) param, Tensor(b!) square_avg, Tensor(c!) acc_delta, Tensor(d!) row_step, Tensor rows, "
    "Tensor? values, float lr, Tensor? lr_tensor, float rho, float eps, bool maximize, Tensor? grad_scale, "
    "Tensor? found_inf, int step) -> ()"
)
SPARSE_MUTATED_ARGS = ("param", "square_avg", "acc_delta", "row_step")

_LIBRARY = torch.library.Library(NAMESPACE, "FRAGMENT")
_LIBRARY.define("sparse_adadelta_" + SPARSE_STEP_SCHEMA)


def check_sparse_args(*args) -> None:
    """The sparse op's one validator (csrc/sparse_host.cpp): the op's arguments in schema order, then the
    device type of the kernel that will run. Without the extension nothing is checked here (the reference
    backend's torch ops raise their own errors)."""
    ext = _extension.module()
    if ext is not None:
        ext.check_sparse_args(*args)


@torch.library.register_fake(f"{NAMESPACE}::sparse_adadelta_", lib=_LIBRARY)
def _sparse_adadelta_fake(param, square_avg, acc_delta, row_step, rows, values, lr, lr_tensor, rho, eps, maximize,
                          grad_scale, found_inf, step):
    check_sparse_args(param, square_avg, acc_delta, row_step, rows, values, lr, lr_tensor, rho, eps, maximize,
                      grad_scale, found_inf, step, param.device.type)


def op():
    """``torch.ops.adadelta_fused.sparse_adadelta_``; raises if the extension that holds its kernels is absent."""
    if _extension.module() is None:
        raise RuntimeError(_extension.load_error())
    return torch.ops.adadelta_fused.sparse_adadelta_.default


if _extension.module() is None:
    _LIBRARY.impl("sparse_adadelta_", lambda *args, **kwargs: op(), "CompositeExplicitAutograd")
