"""The normative specification of 8-bit Adadelta state and of one step over it, in pure torch.

Format (``csrc/quantized_state.h`` implements the same bits)
    Each accumulator ``x`` (``square_avg``, ``acc_delta``) of a param is stored through its RMS
    ``R = sqrt(x + eps)`` (Zeiler's RMS[x], with the step's eps), linearly, as

    ``codes``   uint8, the param's shape and layout: one code per element;
    ``scales``  fp32 ``[ceil(numel / BLOCK)]``: one scale per block of ``BLOCK`` (256) consecutive elements
                in the order the kernels walk the param (memory order for a dense param, else logical order:
                ``reference.walk_positions``); the last block may be shorter.

    Every operation below is one IEEE-rounded fp32 operation (``sqrt``, ``+``, ``*``, ``/``, and ``fma``, which
    rounds once)::

        R     = sqrt(x + eps)                            correctly rounded
        s     = max(largest finite R of the block, MIN_SCALE)        the scale (MIN_SCALE = 2^-64)
        code  = round_half_even(R * (254 / s))           for finite R: 0..254 (254 / s once per block)
        code  = 255                                       for a NaN or infinite R (x NaN, below -eps, or inf)
        R'    = max(code * (s / 254), sqrt(eps))         decoding (s / 254 once per block); 255 -> NaN
        x'    = fma(R', R', -eps)

    A code keeps R to within half a step of ``s / 254``: the largest values of a block to 0.2 %, smaller ones less
    precisely, and an R below ``s / 508`` decodes to the floor ``sqrt(eps)``, which is the R of an accumulator of 0
    (the true R is never below it). Adadelta uses an accumulator only through ``sqrt(x + eps)``, which this keeps
    directly: the step takes R of ``acc_delta`` as its numerator, and the new R of ``square_avg`` is its ``std``, so
    an element needs two square roots where storing ``sqrt(x)`` needed four. What that costs: codes of ``sqrt(x)``
    follow a decay ``x <- rho x`` exactly (the block's scale and every value scale by ``sqrt(rho)``), where these
    re-round R at every step in which x is near eps: after 100 steps of zero gradients, R is off by 1.9 % (median;
    at most 4.7 %) at rho 0.9, and by up to a third for some values near eps at rho 0.95 and 0.99
    (``bench/results/quantized_state_codes.md``, section 2). The state's meaning depends on eps: a group whose eps
    changes between steps reads its accumulators shifted by the difference. An infinite accumulator (a gradient
    whose square overflows) is stored as NaN, which the next step spreads into the param, where torch's fp32 state
    would keep an infinite ``square_avg`` and freeze the param. Why a linear code under an fp32 block scale and not
    five other maps (a block-float code with a power-of-two scale, which stalls a decay ``x <- rho x`` once
    ``1 - rho`` is below its precision; a dynamic-tree map; linear absmax on ``x``, which diverged):
    ``bench/results/quantized_state_codes.md``.

Step (``adadelta_fused::quantized_adadelta_``), per param, in one pass over each block: decode both accumulators'
R' and x' in fp32, run the dense update of ``reference._update_one`` in fp32 on x' with R' of ``acc_delta`` as
``sqrt(acc_delta + eps)`` (its numerator), then encode ``sqrt(x + eps)`` of the new, unrounded fp32 accumulators
against the blocks' new scales (the reduction of a block's roots happens in registers or cache, never in a
second pass over memory). The param, master copy and gradient are written exactly as the dense step writes
them; everything else (lr, grad_scale, found_inf, grad_mode, maximize, weight decay, stochastic rounding) is the
dense contract's. Params are fp32, bf16 or fp16 (fp64 params keep fp64 state: ``Adadelta._state_dtype_for``).
"""

from __future__ import annotations

import math

import torch

from .contract import StepScalars
from .reference import _update_one, step_skipped, walk_positions

BLOCK = 256
LEVELS = 254  # codes 0..254 are roots; 255 is NaN
CODE_NAN = 255
MIN_SCALE = 2.0**-64


def num_blocks(numel: int) -> int:
    """The number of scales of a param with ``numel`` elements."""
    return math.ceil(numel / BLOCK)


def _f32(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


def block_scales(roots: torch.Tensor) -> torch.Tensor:
    """The scale of each block of a flat vector of roots (walk order): its largest finite root, at least MIN_SCALE."""
    padded = torch.zeros(num_blocks(roots.numel()) * BLOCK, dtype=torch.float32, device=roots.device)
    padded[: roots.numel()] = torch.where(torch.isfinite(roots), roots, 0.0)
    return padded.view(-1, BLOCK).amax(dim=1).clamp_min(MIN_SCALE)


def encode(roots: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """fp32 R -> codes (uint8), each against its block's scale (same shape as ``roots``)."""
    factor = _f32(LEVELS).to(scales.device) / scales  # one fp32 division per block
    code = torch.round(roots * factor)  # torch.round: half to even
    return torch.where(torch.isfinite(roots), code, CODE_NAN).to(torch.uint8)


def decode_roots(codes: torch.Tensor, scales: torch.Tensor, eps: float) -> torch.Tensor:
    """codes -> fp32 R', each against its block's scale, at least sqrt(eps) (same shape as ``codes``)."""
    step = scales / _f32(LEVELS).to(scales.device)
    root = codes.to(torch.float32) * step
    floor = _sqrt(_f32(eps)).to(root.device)
    return torch.where(codes == CODE_NAN, math.nan, torch.where(root < floor, floor, root))


def values_of(roots: torch.Tensor, eps: float) -> torch.Tensor:
    """R' -> x' = fma(R', R', -eps) in fp32: addcmul rounds once, as torch's CPU and CUDA kernels contract it."""
    return torch.full_like(roots, -_f32(eps).item()).addcmul_(roots, roots)


def roots_of(x: torch.Tensor, eps: float) -> torch.Tensor:
    """fp32 x -> R = sqrt(x + eps), eps rounded to fp32 first as every kernel rounds it."""
    return _sqrt(x.to(torch.float32) + _f32(eps).to(x.device))


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded fp32 square root (reference._sqrt says why not torch's own)."""
    return x.double().sqrt().float()


def _walk(x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``x`` (param's shape) as a flat vector in the order the kernels walk ``param``."""
    flat = torch.empty(x.numel(), dtype=x.dtype, device=x.device)
    flat[walk_positions(param).to(x.device)] = x.reshape(-1)
    return flat


def _unwalk(flat: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    return flat[walk_positions(param).to(flat.device)].view(param.shape)


def _per_element(block_values: torch.Tensor, numel: int) -> torch.Tensor:
    return block_values.repeat_interleave(BLOCK)[:numel]


def quantize_roots(roots: torch.Tensor, param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 R of one accumulator of ``param`` (param's shape) -> (codes like param, uint8; scales, fp32)."""
    flat = _walk(roots.to(torch.float32), param)
    scales = block_scales(flat)
    codes = encode(flat, _per_element(scales, flat.numel()))
    return _unwalk(codes, param), scales


def dequantize_roots(codes: torch.Tensor, scales: torch.Tensor, param: torch.Tensor, eps: float) -> torch.Tensor:
    """(codes, scales) of one accumulator of ``param`` -> its fp32 R', param's shape."""
    flat = _walk(codes, param)
    return _unwalk(decode_roots(flat, _per_element(scales.to(torch.float32), flat.numel()), eps), param)


def quantize(x: torch.Tensor, param: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 values of one accumulator of ``param`` -> (codes like param, uint8; scales, fp32)."""
    return quantize_roots(roots_of(x, eps), param)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, param: torch.Tensor, eps: float) -> torch.Tensor:
    """(codes, scales) of one accumulator of ``param`` -> its fp32 values x', param's shape."""
    return values_of(dequantize_roots(codes, scales, param, eps), eps)


def quantized_adadelta_reference_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    square_avgs: list[torch.Tensor],
    acc_deltas: list[torch.Tensor],
    master_params: list[torch.Tensor] | None,
    square_avg_scales: list[torch.Tensor],
    acc_delta_scales: list[torch.Tensor],
    scalars: StepScalars,
) -> None:
    """One step in place over a validated group (``square_avgs``/``acc_deltas``: codes): the contract above."""
    if step_skipped(grads, scalars):
        return
    eps = scalars.eps
    for index, param in enumerate(params):
        sq = dequantize(square_avgs[index], square_avg_scales[index], param, eps)
        acc_root = dequantize_roots(acc_deltas[index], acc_delta_scales[index], param, eps)
        acc = values_of(acc_root, eps)
        master = master_params[index] if master_params else None
        _update_one(index, param, grads[index], sq, acc, master, scalars, acc_root=acc_root)
        for codes, scales, values in ((square_avgs[index], square_avg_scales[index], sq),
                                      (acc_deltas[index], acc_delta_scales[index], acc)):
            new_codes, new_scales = quantize(values, param, eps)
            codes.copy_(new_codes)
            scales.copy_(new_scales)
