"""The Triton kernel of one sparse-gradient Adadelta step: device code only (the op: sparse_triton.py).

Mirrors ``adadelta_fused.sparse_reference.sparse_adadelta_reference_`` and csrc/sparse_rows.h: each listed
row catches up on the decays it missed, then takes the dense update, whose math is triton_kernel's
``_adadelta_values`` (the dense kernel's own lines). Loaded through ``triton_interpreter.kernels(interpret,
KERNEL_MODULE)``, once per mode, like triton_kernel; the dense helpers are taken from the triton_kernel
module of the same mode, so that a kernel finds them, jitted alike, in its own globals.
"""

import triton
import triton.language as tl

from . import triton_interpreter

_dense = triton_interpreter.kernels(bool(triton.knobs.runtime.interpret))
_adadelta_values = _dense._adadelta_values
_hyperparameter = _dense._hyperparameter
_ieee_div = _dense._ieee_div
_to_math = _dense._to_math
_to_storage = _dense._to_storage

# csrc/sparse_rows.h kExactDecaySteps (sparse_reference.EXACT_DECAY_STEPS).
EXACT_DECAY_STEPS = tl.constexpr(64)
# rho_power's loop covers every bit of a non-negative int64.
_POWER_BITS = tl.constexpr(63)


# ---- jit helpers ----

@triton.jit
def _larger(a, b):
    """The combine function of a max reduction (tl.max is a library @jit function: see triton_kernel)."""
    return tl.maximum(a, b)


@triton.jit
def _rho_power(rho, missed):
    """csrc/sparse_rows.h ``rho_power`` for each row: fp64 binary powering, lowest bit first. Iterations past
    the highest set bit square ``base`` only, so ``result`` has the C++ loop's bits."""
    result = tl.full(missed.shape, 1.0, tl.float64)
    base = tl.full(missed.shape, 1.0, tl.float64) * rho
    n = missed
    for _ in range(_POWER_BITS):
        result = tl.where((n & 1) != 0, result * base, result)
        base = base * base
        n = n >> 1
    return result


@triton.jit
def _decay(x, missed, exact, factor, rounds, rho, STATE: tl.constexpr, MATH: tl.constexpr):
    """csrc/sparse_rows.h ``decay_lanes`` on a [ROWS, BLOCK_D] tile: ``rounds`` (the tile's largest exact gap)
    multiplies, each row taking its own ``missed`` of them, each rounded to the state's storage type; rows
    past the exact bound take one multiply by ``factor``. Returns the value as stored."""
    for j in range(rounds):
        x = tl.where(exact & (j < missed), _to_math(_to_storage(x * rho, STATE), MATH), x)
    x = tl.where(exact, x, x * factor)
    return _to_math(_to_storage(x, STATE), MATH)


# ---- kernel ----

@triton.jit(do_not_specialize=["listed", "step"])
def sparse_adadelta_kernel(
    # pointers: param and the accumulators (R rows of row_numel elements), the row record, the listed rows and
    # their gradient rows (values_ptr is None: catch up only)
    param_ptr, square_avg_ptr, acc_delta_ptr, row_step_ptr, rows_ptr, values_ptr,
    # optional 1-element device scalars (None when absent): lr in math precision, grad_scale, found_inf
    lr_ptr, grad_scale_ptr, found_inf_ptr,
    # sizes and the step the listed rows are brought to
    listed, row_numel, step,
    # hyperparameters, rounded to math precision inside the kernel
    lr: tl.float64, rho: tl.float64, one_minus_rho: tl.float64, eps: tl.float64,
    # constexpr flags
    MATH: tl.constexpr, MAXIMIZE: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program i steps listed rows [i * ROWS, (i + 1) * ROWS), BLOCK_D columns at a time. A program owns its
    rows, so it reads their step records first and writes them last, with no other program touching them."""
    entry = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    if found_inf_ptr is not None:
        listed = tl.where(tl.load(found_inf_ptr) != 0, 0, listed)  # GradScaler found inf/NaN: nothing is written
    live = entry < listed
    row = tl.load(rows_ptr + entry, mask=live, other=0)
    last = tl.load(row_step_ptr + row, mask=live, other=0)
    if values_ptr is not None:
        target = step - 1  # this step's update follows
    else:
        target = step
    missed = tl.maximum(target - last, 0)
    exact_row = missed <= EXACT_DECAY_STEPS
    rounds = tl.reduce(tl.where(live & exact_row, missed, 0), 0, _larger)  # the tile's longest exact gap
    factor = _rho_power(rho, missed).to(MATH)[:, None]
    missed = missed[:, None]
    exact = exact_row[:, None]

    rho_m = _hyperparameter(rho, MATH)
    if lr_ptr is not None:
        neg_lr = -(tl.load(lr_ptr).to(MATH))  # a device lr, read without a host sync
    else:
        neg_lr = -_hyperparameter(lr, MATH)
    one_minus_rho = _hyperparameter(one_minus_rho, MATH)
    eps = _hyperparameter(eps, MATH)
    grad_scale = 1.0
    if grad_scale_ptr is not None:
        grad_scale = tl.load(grad_scale_ptr).to(MATH)

    for first in range(0, row_numel, BLOCK_D):
        column = first + tl.arange(0, BLOCK_D)
        mask = live[:, None] & (column < row_numel)[None, :]
        offsets = row[:, None] * row_numel + column[None, :]
        sq = _decay(_to_math(tl.load(square_avg_ptr + offsets, mask=mask, other=0.0), MATH), missed, exact, factor,
                    rounds, rho_m, square_avg_ptr.dtype.element_ty, MATH)
        acc = _decay(_to_math(tl.load(acc_delta_ptr + offsets, mask=mask, other=0.0), MATH), missed, exact, factor,
                     rounds, rho_m, square_avg_ptr.dtype.element_ty, MATH)
        if values_ptr is not None:
            grad_offsets = entry[:, None] * row_numel + column[None, :]
            g = _to_math(tl.load(values_ptr + grad_offsets, mask=mask, other=0.0), MATH)
            if grad_scale_ptr is not None:
                g = _ieee_div(g, grad_scale)
            if MAXIMIZE:
                g = -g
            p = _to_math(tl.load(param_ptr + offsets, mask=mask, other=0.0), MATH)
            sq, acc, p = _adadelta_values(g, p, sq, acc, neg_lr, rho_m, one_minus_rho, eps, False)
            tl.store(param_ptr + offsets, _to_storage(p, param_ptr.dtype.element_ty), mask=mask)
        tl.store(square_avg_ptr + offsets, _to_storage(sq, square_avg_ptr.dtype.element_ty), mask=mask)
        tl.store(acc_delta_ptr + offsets, _to_storage(acc, acc_delta_ptr.dtype.element_ty), mask=mask)
    tl.store(row_step_ptr + row, tl.full((ROWS,), 0, tl.int64) + step, mask=live)
