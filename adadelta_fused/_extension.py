"""Loads the compiled extension lazily, once, and keeps the reason when it cannot be loaded.

A missing or broken build never breaks ``import adadelta_fused``: the package then runs on the reference
backend and ``available_backends()`` says why.
"""

from __future__ import annotations

from functools import cache

import torch

OP_NAME = "adadelta_fused::adadelta_"
STEPS_OP_NAME = "adadelta_fused::advance_steps_"


@cache
def _load():
    try:
        from . import _C  # registers the op's schema and kernels with torch's dispatcher
    except ImportError as error:
        return None, f"the compiled extension adadelta_fused._C is missing or failed to load ({error})"
    _register_fake()
    return _C, None


def _register_fake() -> None:
    @torch.library.register_fake(OP_NAME)
    def _adadelta_fake(params, grads, square_avgs, acc_deltas, master_params, lr, lr_tensor, rho, eps,
                       weight_decay, maximize, grad_scale, found_inf, grad_mode, stochastic_rounding,
                       rounding_key):
        # The op only mutates its inputs in place and returns nothing: no output metadata to infer.
        return None

    @torch.library.register_fake(STEPS_OP_NAME)
    def _advance_steps_fake(state_steps, found_inf):
        return None


def module():
    """The loaded ``adadelta_fused._C`` module, or None."""
    return _load()[0]


def op():
    """``torch.ops.adadelta_fused.adadelta_``, loading the extension first; raises if it is absent."""
    if module() is None:
        raise RuntimeError(load_error())
    return torch.ops.adadelta_fused.adadelta_.default


def steps_op():
    """``torch.ops.adadelta_fused.advance_steps_``, or None without the extension."""
    return torch.ops.adadelta_fused.advance_steps_.default if module() is not None else None


def load_error() -> str | None:
    return _load()[1]


def has_cuda_kernel() -> bool:
    ext = module()
    return bool(ext is not None and ext.compiled_with_cuda())


def build_info() -> dict[str, object]:
    """What the extension was built with (for reports), or the reason it is absent."""
    ext = module()
    if ext is None:
        return {"extension": load_error()}
    return {"extension": "loaded", "cuda": ext.compiled_with_cuda(), "cpu_isa": ext.cpu_isa()}
