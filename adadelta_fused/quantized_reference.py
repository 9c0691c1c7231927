"""The normative specification of 8-bit Adadelta state and of one step over it, in pure torch.

Format (``csrc/quantized_state.h`` implements the same bits)
    Each accumulator (``square_avg``, ``acc_delta``) of a param is stored as

    ``codes``   uint8, the param's shape and layout: one code per element;
    ``scales``  fp32 ``[ceil(numel / BLOCK)]``: one scale per block of ``BLOCK`` (256) consecutive elements
                in the order the kernels walk the param (memory order for a dense param, else logical order:
                ``reference.walk_positions``); the last block may be shorter.

    A block's scale is ``2^(F - 127)``, where ``F`` is the largest biased fp32 exponent among the block's finite,
    non-negative values, or ``MIN_BLOCK_EXPONENT`` (32) if that is larger. A code is an unsigned 8-bit float
    relative to the scale, 4 exponent bits ``e`` and 4 mantissa bits ``m``::

        e = 1..14   value = 2^(e + F - 141) * (1 + m / 16)       e = 14: the block's top binade
        e = 0       value = 2^(F - 144) * m                       subnormal codes, down to 2^-17 of the top
        0xF0        +inf          0xF1..0xFF  NaN (0xFF is written)

    Encoding rounds to nearest even (relative error at most 2^-5 in the 14 normal binades) and saturates at
    0xEF (a top value that rounds up to 2^(F - 126) is stored as 1.9375 * 2^(F - 127)). Accumulators are never
    negative; a negative value (only a hand-made state has one) is stored as NaN, which the step then spreads
    as torch spreads the square root of a negative number. -0 is stored as 0. Only exponent bits of a stored
    scale are read (clamped to [32, 254]). Why this map (and not a dynamic-tree or linear absmax map):
    ``bench/results/quantized_state_codes.md``.

Step (``adadelta_fused::quantized_adadelta_``), per param, in one pass over each block: decode both accumulators
to fp32, run the dense update of ``reference._update_one`` in fp32 with the decoded values as its (fp32)
state, then encode the new, unrounded fp32 accumulators against the new block exponents (the reduction of a
block's exponents happens in registers or cache, never in a second pass over memory). The param, master copy
and gradient are written exactly as the dense step writes them; everything else (lr, grad_scale, found_inf,
grad_mode, maximize, weight decay, stochastic rounding) is the dense contract's. Params are fp32, bf16 or fp16
(fp64 params keep fp64 state: ``Adadelta._state_dtype_for``).
"""

from __future__ import annotations

import math

import torch

from .contract import GradMode, StepScalars
from .reference import _update_one, walk_positions

BLOCK = 256
MIN_BLOCK_EXPONENT = 32
CODE_INF = 0xF0
CODE_NAN = 0xFF
MAX_FINITE_CODE = 0xEF


def num_blocks(numel: int) -> int:
    """The number of scales of a param with ``numel`` elements."""
    return math.ceil(numel / BLOCK)


def _bits(x: torch.Tensor) -> torch.Tensor:
    """fp32 bits as non-negative int64."""
    return x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF


def _float(bits: torch.Tensor) -> torch.Tensor:
    """int64 holding uint32 bits -> fp32."""
    return torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32).view(torch.float32)


def counted_exponent(x: torch.Tensor) -> torch.Tensor:
    """The biased exponent of each fp32 value that counts toward its block's scale (finite, sign clear), else 0."""
    u = _bits(x)
    return torch.where(u < 0x7F800000, u >> 23, 0)


def scale_exponent(scales: torch.Tensor) -> torch.Tensor:
    """F of each stored scale: its exponent bits, clamped to [MIN_BLOCK_EXPONENT, 254]."""
    return ((_bits(scales) >> 23) & 0xFF).clamp(MIN_BLOCK_EXPONENT, 254)


def block_scale(exponent: torch.Tensor) -> torch.Tensor:
    return _float(exponent << 23)


def encode(x: torch.Tensor, block_exp: torch.Tensor) -> torch.Tensor:
    """fp32 values -> codes (int64), each against its block's exponent (same shape)."""
    u = _bits(x)
    rebased = u - ((block_exp - 14) << 23)
    normal = ((rebased + 0x3FFFF + ((u >> 19) & 1)) >> 19).clamp_max(MAX_FINITE_CODE)
    f = u >> 23
    significand = (u & 0x7FFFFF) | torch.where(f != 0, 0x800000, 0)
    shift = (block_exp + 6 - f.clamp_min(1)).clamp(1, 31)
    sub = (significand + (1 << (shift - 1)) - 1 + ((significand >> shift) & 1)) >> shift
    code = torch.where(f + 14 > block_exp, normal, sub)
    code = torch.where(u == 0x7F800000, CODE_INF, code)
    code = torch.where(u > 0x7F800000, CODE_NAN, code)
    return torch.where(u == 0x80000000, 0, code)


def decode(code: torch.Tensor, block_exp: torch.Tensor) -> torch.Tensor:
    """codes (any integer dtype) -> fp32 values, each against its block's exponent (same shape)."""
    code = code.to(torch.int64)
    normal = _float((code << 19) + ((block_exp - 14) << 23))
    subnormal = code.to(torch.float32) * _float((block_exp - 17) << 23)
    value = torch.where(code >= 0x10, normal, subnormal)
    value = torch.where(code == CODE_INF, math.inf, value)
    return torch.where(code > CODE_INF, _float(torch.full_like(code, 0x7FC00000)), value)


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
    flat = _walk(x.to(torch.float32), param)
    numel = flat.numel()
    padded = torch.zeros(num_blocks(numel) * BLOCK, dtype=torch.int64, device=flat.device)
    padded[:numel] = counted_exponent(flat)
    exponent = padded.view(-1, BLOCK).amax(dim=1).clamp_min(MIN_BLOCK_EXPONENT)
    codes = encode(flat, _per_element(exponent, numel)).to(torch.uint8)
    return _unwalk(codes, param), block_scale(exponent)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """(codes, scales) of one accumulator of ``param`` -> its fp32 values, param's shape."""
    flat = _walk(codes, param)
    return _unwalk(decode(flat, _per_element(scale_exponent(scales), flat.numel())), param)


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
    if scalars.found_inf is not None and bool(scalars.found_inf.item() != 0):
        if scalars.grad_mode == GradMode.ZERO:
            for grad in grads:
                grad.zero_()
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
