"""The quantized op's schema, declared once, when ``import adadelta_fused`` runs, with its fake kernel.

``adadelta_fused::quantized_adadelta_`` is ``adadelta_`` over 8-bit state: ``square_avgs`` and ``acc_deltas``
hold uint8 codes, and two more lists hold one fp32 scale per 256 elements of each (the format and the step:
``adadelta_fused.quantized_reference``). Its CPU and CUDA kernels come from the compiled extension
(csrc/cpu/quantized_cpu.cpp, csrc/cuda/quantized_cuda.cu); the Triton op ``adadelta_fused::triton_quantized_adadelta_``
takes the same schema. The validator is the dense op's (csrc/op_host.cpp), which checks the scales too.
"""

from __future__ import annotations

import torch

from . import _extension
from .ops import NAMESPACE

# As the dense op's schema, with the scale lists after master_params: every list is written (grads only
# outside the "keep" mode), each with its own alias set.
QUANTIZED_STEP_SCHEMA = (
    "(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] square_avgs, Tensor(d!)[] acc_deltas, "
    "Tensor(e!)[] master_params, Tensor(f!)[] square_avg_scales, Tensor(g!)[] acc_delta_scales, float lr, "
    "Tensor? lr_tensor, float rho, float eps, float weight_decay, bool maximize, Tensor? grad_scale, "
    "Tensor? found_inf, int grad_mode, bool stochastic_rounding, int rounding_key) -> ()"
)
QUANTIZED_MUTATED_ARGS = (
    "params", "grads", "square_avgs", "acc_deltas", "master_params", "square_avg_scales", "acc_delta_scales",
)

_LIBRARY = torch.library.Library(NAMESPACE, "FRAGMENT")
_LIBRARY.define("quantized_adadelta_" + QUANTIZED_STEP_SCHEMA)
# No derivative and no outputs: straight to the kernel (ops.py says why for the dense op).
_LIBRARY.impl("quantized_adadelta_", torch.library.fallthrough_kernel, "Autograd")


def check_quantized_args(*args) -> None:
    """The validator (csrc/op_host.cpp) on the quantized op's arguments in schema order, then the device type
    of the kernel that will run. Without the extension nothing is checked here (the reference backend's torch
    ops raise their own errors)."""
    ext = _extension.module()
    if ext is not None:
        ext.check_quantized_args(*args)


@torch.library.register_fake(f"{NAMESPACE}::quantized_adadelta_", lib=_LIBRARY)
def _quantized_adadelta_fake(params, grads, square_avgs, acc_deltas, master_params, square_avg_scales,
                             acc_delta_scales, lr, lr_tensor, rho, eps, weight_decay, maximize, grad_scale, found_inf,
                             grad_mode, stochastic_rounding, rounding_key):
    device_type = params[0].device.type if params else "cpu"
    check_quantized_args(
        params, grads, square_avgs, acc_deltas, master_params, square_avg_scales, acc_delta_scales, lr, lr_tensor,
        rho, eps, weight_decay, maximize, grad_scale, found_inf, grad_mode, stochastic_rounding, rounding_key,
        device_type,
    )


def op():
    """``torch.ops.adadelta_fused.quantized_adadelta_``; raises if the extension that holds its kernels is absent."""
    if _extension.module() is None:
        raise RuntimeError(_extension.load_error())
    return torch.ops.adadelta_fused.quantized_adadelta_.default


if _extension.module() is None:
    _LIBRARY.impl("quantized_adadelta_", lambda *args, **kwargs: op(), "CompositeExplicitAutograd")
