"""The ops' schemas, declared once, when ``import adadelta_fused`` runs, with their fake kernels.

``adadelta_fused::adadelta_`` gets its CPU and CUDA kernels from the compiled extension (csrc/), and the
Triton op ``adadelta_fused::triton_adadelta_`` (adadelta_fused/triton_op.py, registered on the Triton
backend's first use) takes the same schema. Declaring them here, not in C++, means the ops exist as soon as
the package is imported, even where the extension could not be built (their calls then say why).
"""

from __future__ import annotations

import torch

from . import _extension

NAMESPACE = "adadelta_fused"

# Every list is mutable with its own alias set: params, square_avgs, acc_deltas and master_params are
# always written, grads in the "unscale" and "zero" modes. Nothing is returned.
STEP_SCHEMA = (
    "(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] square_avgs, Tensor(d!)[] acc_deltas, "
    "Tensor(e!)[] master_params, float lr, Tensor? lr_tensor, float rho, float eps, float weight_decay, "
    "bool maximize, Tensor? grad_scale, Tensor? found_inf, int grad_mode, bool stochastic_rounding, "
    "int rounding_key) -> ()"
)
# The names of the arguments the step op writes (every list; grads only outside the "keep" mode).
STEP_MUTATED_ARGS = ("params", "grads", "square_avgs", "acc_deltas", "master_params")

# step += 1 for each param's counter, unless found_inf is nonzero.
ADVANCE_STEPS_SCHEMA = "(Tensor(a!)[] state_steps, Tensor? found_inf) -> ()"

_LIBRARY = torch.library.Library(NAMESPACE, "DEF")
_LIBRARY.define("adadelta_" + STEP_SCHEMA)
_LIBRARY.define("advance_steps_" + ADVANCE_STEPS_SCHEMA)


# Neither op has a derivative or an output. Without an Autograd kernel the dispatcher runs torch's boxed
# autograd fallback, which boxes every tensor and asks each whether it requires grad, and then does nothing
# for an op without outputs: 1 us a param, more than the step's own checks and kernel (4096 params). The
# fallthrough goes straight to the kernel, with the same visible behaviour.
_LIBRARY.impl("adadelta_", torch.library.fallthrough_kernel, "Autograd")
_LIBRARY.impl("advance_steps_", torch.library.fallthrough_kernel, "Autograd")


@torch.library.register_fake(f"{NAMESPACE}::adadelta_", lib=_LIBRARY)
def _adadelta_fake(params, grads, square_avgs, acc_deltas, master_params, lr, lr_tensor, rho, eps, weight_decay,
                   maximize, grad_scale, found_inf, grad_mode, stochastic_rounding, rounding_key):
    # The dispatcher also lands here for a real call in which any one tensor is on the meta device, so
    # this is where a meta grad_scale beside CPU params is refused: the validator compares devices.
    device_type = params[0].device.type if params else "cpu"
    _extension.check_op_args(
        params, grads, square_avgs, acc_deltas, master_params, lr, lr_tensor, rho, eps, weight_decay, maximize,
        grad_scale, found_inf, grad_mode, stochastic_rounding, rounding_key, device_type,
    )


@torch.library.register_fake(f"{NAMESPACE}::advance_steps_", lib=_LIBRARY)
def _advance_steps_fake(state_steps, found_inf):
    _extension.check_state_steps(state_steps)


def _missing_kernel(*args, **kwargs):
    raise RuntimeError(_extension.load_error())


if _extension.module() is None:
    # Without the extension the ops still exist (torch.compile and users may name them); a call says why it
    # cannot run instead of the dispatcher's "no kernel" message.
    _LIBRARY.impl("adadelta_", _missing_kernel, "CompositeExplicitAutograd")
    _LIBRARY.impl("advance_steps_", _missing_kernel, "CompositeExplicitAutograd")
