"""The normative specification of one sparse-gradient ("lazy-exact") Adadelta step, in pure torch.

A dense Adadelta step on a row whose gradient is zero leaves the param alone (``delta = sqrt(acc + eps) /
std * 0 = 0``) but still decays both accumulators: ``square_avg * rho + (1 - rho) * 0 * 0`` is exactly
``square_avg * rho``, and the same for ``acc_delta``. A lazy step therefore skips the rows a sparse gradient
does not touch, records for each row the step its accumulators are current at, and when the row appears
again first applies the decays it missed, then the ordinary update (``reference._update_one``), in one pass.

Contract of ``adadelta_fused::sparse_adadelta_`` (every backend: C++ CPU, CUDA, Triton, this reference)

Inputs
    ``param``              the parameter, contiguous, at least 1-dim: ``R = param.shape[0]`` rows of
                           ``D = param.numel() // R`` elements (fp32, fp64, bf16 or fp16).
    ``square_avg``,
    ``acc_delta``          its accumulators, contiguous, param's shape; dtype as for the dense op.
    ``row_step``           int64 ``[R]``: the step each row's accumulators are current at.
    ``rows``               int64 ``[n]``: the rows to step, strictly increasing (``coalesce()`` order), in
                           ``[0, R)``. Checked on the host when on the CPU; a CUDA kernel traps on a row
                           out of range.
    ``values``             ``[n, *param.shape[1:]]``, param's dtype: row ``rows[i]``'s gradient is
                           ``values[i]``. None: the rows only catch up on their decays (no update).
    ``lr``, ``lr_tensor``, ``rho``, ``eps``, ``maximize``, ``grad_scale``, ``found_inf``
                           as for the dense op (weight decay, master weights and stochastic rounding do not
                           exist here: the optimizer refuses them with sparse gradients, see
                           ``adadelta_fused.sparse``). A nonzero ``found_inf`` skips the call: nothing is written.
    ``step``               the step the listed rows are brought to. With values: rows catch up to
                           ``step - 1``, then take this step's update. Without: they catch up to ``step``.

For each listed row ``r`` (every other row of every tensor is neither read nor written)::

    k = max(target - row_step[r], 0)                   target = step - 1 with values, else step
    if k <= EXACT_DECAY_STEPS:                          (64)
        repeat k times: x = stored(x * rho)             for x in (square_avg[r], acc_delta[r]); stored(): the
                                                        round trip through the state's dtype, as a dense step
                                                        stores it: bit for bit k dense zero-gradient steps
    else:
        x = stored(x * rho_power(rho, k))               one rounding instead of k (see below)
    with values: the dense update of reference._update_one with g = values[i] (grad_mode "keep")
    row_step[r] = step

Rounding: the exact path equals dense Adadelta bit for bit. Past 64 missed steps the decay is one multiply by
``rho^k`` (computed in fp64 by binary powering, then rounded once to the math dtype) against dense's ``k``
multiplies by ``rho``, each rounded: the two differ by about ``k/2`` ulp at most, relative. In storage types
narrower than the math (bf16 or fp16 state) the difference can be larger: dense rounding can stall a decay
(bf16 ``x * 0.999`` rounds back to ``x``), which one multiply by ``0.999^k`` does not.

Math precision: fp64 for fp64 params, fp32 otherwise (``reference.math_dtype``).
"""

from __future__ import annotations

import torch

from .contract import GradMode, StepScalars
from .reference import _update_one, math_dtype

# Keep equal to kExactDecaySteps in csrc/sparse_rows.h (tests/test_sparse_kernels.py compares them).
EXACT_DECAY_STEPS = 64


def rho_power(rho: float, n: torch.Tensor) -> torch.Tensor:
    """rho^n for each int64 n (n >= 0), in fp64: binary powering, lowest bit first (csrc/sparse_rows.h
    ``rho_power``); IEEE multiplies only, so every executor gets the same bits."""
    result = torch.ones(n.shape, dtype=torch.float64, device=n.device)
    base = torch.full(n.shape, rho, dtype=torch.float64, device=n.device)
    n = n.clone()
    while bool((n > 0).any()):
        result = torch.where((n & 1) == 1, result * base, result)
        base = base * base
        n >>= 1
    return result


def _stored(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The value ``x`` takes when stored as ``dtype`` and loaded back (round to nearest even)."""
    return x.to(dtype).to(x.dtype)


def _decay(x: torch.Tensor, missed: torch.Tensor, rho: float, state_dtype: torch.dtype) -> torch.Tensor:
    """The missed decays of one accumulator's rows (``x``: [n, D] in math precision; ``missed``: [n])."""
    exact = (missed <= EXACT_DECAY_STEPS)[:, None]
    steps = missed[:, None]
    rounds = int(missed[missed <= EXACT_DECAY_STEPS].max()) if bool(exact.any()) else 0
    for j in range(rounds):
        x = torch.where(exact & (steps > j), _stored(x * rho, state_dtype), x)
    factor = rho_power(rho, missed).to(x.dtype)[:, None]
    return _stored(torch.where(exact, x, x * factor), state_dtype)


def sparse_adadelta_reference_(
    param: torch.Tensor,
    square_avg: torch.Tensor,
    acc_delta: torch.Tensor,
    row_step: torch.Tensor,
    rows: torch.Tensor,
    values: torch.Tensor | None,
    scalars: StepScalars,
    step: int,
) -> None:
    """One sparse step (or catch-up) in place: the contract above. ``scalars`` gives lr, rho, eps, maximize,
    grad_scale and found_inf; its weight_decay must be 0."""
    if scalars.found_inf is not None and bool(scalars.found_inf.item() != 0):
        return
    if rows.numel() == 0:
        return
    num_rows = param.shape[0]
    width = param.numel() // num_rows
    dtype = math_dtype(param.dtype)
    state_dtype = square_avg.dtype
    target = step - 1 if values is not None else step
    missed = (target - row_step[rows]).clamp_min(0)
    sq = _decay(square_avg.view(num_rows, width)[rows].to(dtype), missed, scalars.rho, state_dtype)
    acc = _decay(acc_delta.view(num_rows, width)[rows].to(dtype), missed, scalars.rho, state_dtype)
    sq, acc = sq.to(state_dtype), acc.to(state_dtype)
    if values is not None:
        p = param.view(num_rows, width)[rows]
        grad = values.reshape(rows.numel(), width)
        _update_one(0, p, grad, sq, acc, None, StepScalars(
            lr=scalars.lr, rho=scalars.rho, eps=scalars.eps, weight_decay=0.0, maximize=scalars.maximize,
            grad_scale=scalars.grad_scale, grad_mode=GradMode.KEEP,
        ))
        param.view(num_rows, width)[rows] = p
    square_avg.view(num_rows, width)[rows] = sq
    acc_delta.view(num_rows, width)[rows] = acc
    row_step[rows] = step
