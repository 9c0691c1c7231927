"""The Triton kernel (adadelta_fused.triton_kernel), through the op ``adadelta_fused::triton_adadelta_``.

Runs on CUDA devices, and on CPU tensors in Triton's interpreter when TRITON_INTERPRET=1 (slow; for tests
and debugging). The registry asks again after a probe that failed, so TRITON_INTERPRET set any time before a
step takes effect. Importing this module imports neither triton nor the op: both load on first use.
"""

from __future__ import annotations

from functools import cache

import torch

from .. import _extension
from .._requirements import TRITON_FLOOR, too_old
from ..contract import StepScalars, op_arguments, quantized_op_arguments

NAME = "triton"
__all__ = ["NAME", "unavailable_reason", "unsupported_reason", "step_", "quantized_step_"]


@cache
def _import_error() -> str | None:
    try:
        import triton  # (imported for the probe; the op module imports it for real)
    except ImportError as error:
        return f"triton is not installed ({error})"
    except Exception as error:  # a broken install can fail in any way on import
        return f"triton failed to import ({type(error).__name__}: {error})"
    return too_old("triton", triton.__version__, TRITON_FLOOR)


def _interpreting() -> bool:
    """TRITON_INTERPRET as triton reads it (triton.knobs), once triton imports."""
    if _import_error() is not None:
        return False
    from .. import triton_interpreter

    return triton_interpreter.interpreting()


def unavailable_reason() -> str | None:
    reason = _import_error()
    if reason:
        return reason
    if not torch.cuda.is_available() and not _interpreting():
        return "no CUDA device and TRITON_INTERPRET is not set (TRITON_INTERPRET=1 runs the kernel on CPU)"
    return None


def unsupported_reason(device: torch.device) -> str | None:
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if _interpreting():
            return None
        return "the Triton kernel runs on CPU tensors only in Triton's interpreter (set TRITON_INTERPRET=1)"
    return f"no Triton kernel for device type {device.type!r}"


@cache
def _op():
    from .. import triton_op  # noqa: F401  (registers the op with torch.library on first use)

    return torch.ops.adadelta_fused.triton_adadelta_.default


def step_(params, grads, square_avgs, acc_deltas, master_params, scalars: StepScalars) -> None:
    arguments = op_arguments(params, grads, square_avgs, acc_deltas, master_params, scalars)
    scalar_tensors = [t for t in (arguments[6], scalars.grad_scale, scalars.found_inf) if t is not None]
    if not _extension.runs_unseen(*arguments[:5], scalar_tensors):
        _op()(*arguments)
        return
    from .. import triton_op

    with torch._C.DisableTorchFunction():
        triton_op.launch_step(*arguments)
    # What the op's ADInplaceOrView kernel does for every list its schema marks mutated.
    torch.autograd.graph.increment_version([*params, *grads, *square_avgs, *acc_deltas, *arguments[4]])


@cache
def _quantized_op():
    from .. import quantized_triton  # noqa: F401  (registers the op with torch.library on first use)

    return torch.ops.adadelta_fused.triton_quantized_adadelta_.default


def quantized_step_(params, grads, square_avgs, acc_deltas, master_params, square_avg_scales, acc_delta_scales,
                    scalars: StepScalars) -> None:
    """One step over 8-bit state (``square_avgs``/``acc_deltas``: uint8 codes; adadelta_fused.quantized_reference)."""
    _quantized_op()(*quantized_op_arguments(
        params, grads, square_avgs, acc_deltas, master_params, square_avg_scales, acc_delta_scales, scalars
    ))
