"""The normative specification of 8-bit Adadelta state and of one step over it, in pure torch.

Format (``csrc/quantized_state.h`` implements the same bits)
    Each accumulator ``x`` (``square_avg``, ``acc_delta``) of a param is stored through its root ``r = sqrt(x)``
    (the RMS), linearly, as

    ``codes``   uint8, the param's shape and layout: one code per element;
    ``scales``  fp32 ``[ceil(numel / BLOCK)]``: one scale per block of ``BLOCK`` (256) consecutive elements
                in the order the kernels walk the param (memory order for a dense param, else logical order:
                ``reference.walk_positions``); the last block may be shorter.

    Every operation below is one IEEE-rounded fp32 operation (``sqrt``, ``*``, ``/``; no fused multiply-add)::

        r     = sqrt(x)                                  correctly rounded
        s     = max(largest finite r of the block, MIN_SCALE)        the scale (MIN_SCALE = 2^-64)
        code  = round_half_even(r * (254 / s))           for finite r: 0..254 (254 / s once per block)
        code  = 255                                       for a NaN or infinite r (x NaN, negative or inf)
        x'    = (code * (s / 254)) ** 2                  decoding (s / 254 once per block); 255 -> NaN

    A code keeps the root to within half a step of ``s / 254``: the largest values of a block to 0.2 %, smaller
    ones less precisely, and roots below ``s / 508`` round to 0 (a mean square below ``x_max / 258064``; Adadelta
    adds eps before every square root it takes, so these matter least). An infinite accumulator (a gradient
    whose square overflows) is stored as NaN, which the next step spreads into the param, where torch's fp32
    state would keep an infinite ``square_avg`` and freeze the param. Why this map and not five others (a
    block-float code with a power-of-two scale, which stalls a decay ``x <- rho x`` once ``1 - rho`` is below its
    precision; a dynamic-tree map; linear absmax on ``x``, which diverged): ``bench/results/quantized_state_codes.md``.

Step (``adadelta_fused::quantized_adadelta_``), per param, in one pass over each block: decode both accumulators
to fp32, run the dense update of ``reference._update_one`` in fp32 with the decoded values as its (fp32)
state, then encode the new, unrounded fp32 accumulators against the blocks' new scales (the reduction of a
block's roots happens in registers or cache, never in a second pass over memory). The param, master copy
and gradient are written exactly as the dense step writes them; everything else (lr, grad_scale, found_inf,
grad_mode, maximize, weight decay, stochastic rounding) is the dense contract's. Params are fp32, bf16 or fp16
(fp64 params keep fp64 state: ``Adadelta._state_dtype_for``).
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
    """fp32 roots -> codes (uint8), each against its block's scale (same shape as ``roots``)."""
    factor = _f32(LEVELS).to(scales.device) / scales  # one fp32 division per block
    code = torch.round(roots * factor)  # torch.round: half to even
    return torch.where(torch.isfinite(roots), code, CODE_NAN).to(torch.uint8)


def decode(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """codes -> fp32 accumulator values, each against its block's scale (same shape as ``codes``)."""
    step = scales / _f32(LEVELS).to(scales.device)
    root = codes.to(torch.float32) * step
    return torch.where(codes == CODE_NAN, math.nan, root * root)


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


def quantize(x: torch.Tensor, param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 values of one accumulator of ``param`` -> (codes like param, uint8; scales, fp32)."""
    roots = _sqrt(_walk(x.to(torch.float32), param))
    scales = block_scales(roots)
    codes = encode(roots, _per_element(scales, roots.numel()))
    return _unwalk(codes, param), scales


def dequantize(codes: torch.Tensor, scales: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """(codes, scales) of one accumulator of ``param`` -> its fp32 values, param's shape."""
    flat = _walk(codes, param)
    return _unwalk(decode(flat, _per_element(scales.to(torch.float32), flat.numel())), param)


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
    for index, param in enumerate(params):
        sq = dequantize(square_avgs[index], square_avg_scales[index], param)
        acc = dequantize(acc_deltas[index], acc_delta_scales[index], param)
        master = master_params[index] if master_params else None
        _update_one(index, param, grads[index], sq, acc, master, scalars)
        for codes, scales, values in ((square_avgs[index], square_avg_scales[index], sq),
                                      (acc_deltas[index], acc_delta_scales[index], acc)):
            new_codes, new_scales = quantize(values, param)
            codes.copy_(new_codes)
            scales.copy_(new_scales)
