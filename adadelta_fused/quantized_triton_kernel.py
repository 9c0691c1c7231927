"""The Triton kernel of one Adadelta step over 8-bit state: device code only (launch and op: quantized_triton.py).

Mirrors ``adadelta_fused.quantized_reference.quantized_adadelta_reference_`` and csrc/quantized_state.h, in one
pass: a program takes whole 256-element blocks of one tensor, decodes both accumulators against the blocks' old
scales, runs the dense kernel's per-element update (``triton_kernel._update_values``: the same lines, so the
same bits), reduces each block's largest counted exponent in registers, and encodes against it. Codes and
scales are integer operations and exact multiplies by powers of two, as in the reference, so every executor
gets the same bits. Loaded through ``triton_interpreter.kernels(interpret, KERNEL_MODULE)``, once per mode, like
sparse_triton_kernel, with the dense helpers taken from the triton_kernel module of the same mode.
"""

import triton
import triton.language as tl

from . import quantized_reference, triton_interpreter

_dense = triton_interpreter.kernels(bool(triton.knobs.runtime.interpret))
_step_scalars = _dense._step_scalars
_update_values = _dense._update_values

# The format's constants (quantized_reference, csrc/quantized_state.h).
QUANT_BLOCK = tl.constexpr(quantized_reference.BLOCK)
MIN_BLOCK_EXPONENT = tl.constexpr(quantized_reference.MIN_BLOCK_EXPONENT)
CODE_INF = tl.constexpr(quantized_reference.CODE_INF)
CODE_NAN = tl.constexpr(quantized_reference.CODE_NAN)
MAX_FINITE_CODE = tl.constexpr(quantized_reference.MAX_FINITE_CODE)
# The largest finite fp32 exponent: a stored scale of inf or NaN reads as 2^127 (quantized_reference.scale_exponent).
_MAX_SCALE_EXPONENT = tl.constexpr(254)
# fp32 bit patterns: +inf, the canonical NaN the reference decodes to, -0.
_FP32_INF = tl.constexpr(0x7F800000)
_FP32_NAN = tl.constexpr(0x7FC00000)
_FP32_NEGATIVE_ZERO = tl.constexpr(0x80000000)
# Threads of a warp: a tile row is the elements one warp-wide access covers, VECTOR a thread.
_WARP = tl.constexpr(32)


# ---- jit helpers ----

@triton.jit
def _scale_exponent(scale):
    """quantized_reference.scale_exponent: F of each stored scale, its exponent bits clamped to [32, 254]."""
    exponent = (scale.to(tl.uint32, bitcast=True) >> 23) & 0xFF
    return tl.minimum(tl.maximum(exponent, MIN_BLOCK_EXPONENT), _MAX_SCALE_EXPONENT)


@triton.jit
def _decode(code, block_exp):
    """quantized_reference.decode: codes -> fp32 values against their blocks' exponents (uint32)."""
    code = code.to(tl.uint32)
    normal = (code << 19) + ((block_exp - 14) << 23)
    subnormal = code.to(tl.float32) * ((block_exp - 17) << 23).to(tl.float32, bitcast=True)  # m * 2^(F - 144)
    bits = tl.where(code >= 0x10, normal, subnormal.to(tl.uint32, bitcast=True))
    bits = tl.where(code == CODE_INF, _FP32_INF, bits)
    return tl.where(code > CODE_INF, _FP32_NAN, bits).to(tl.float32, bitcast=True)


@triton.jit
def _encode(value, block_exp):
    """quantized_reference.encode: fp32 values -> uint8 codes against their blocks' exponents (uint32)."""
    u = value.to(tl.uint32, bitcast=True)
    # e >= 1: move the block's top binade to e = 14 and round the 19 dropped mantissa bits to nearest even.
    rebased = u - ((block_exp - 14) << 23)
    normal = tl.minimum((rebased + 0x3FFFF + ((u >> 19) & 1)) >> 19, MAX_FINITE_CODE)
    # e = 0: units of 2^(F - 144), the 24-bit significand shifted right and rounded to nearest even. The shift
    # is signed, as csrc/quantized_state.h computes it (only lanes that take another path leave [1, 31]).
    f = u >> 23
    significand = (u & 0x7FFFFF) | tl.where(f != 0, 0x800000, 0).to(tl.uint32)
    shift = block_exp.to(tl.int32) + 6 - tl.maximum(f, 1).to(tl.int32)
    shift = tl.minimum(tl.maximum(shift, 1), 31).to(tl.uint32)
    half = (tl.full(shift.shape, 1, tl.uint32) << (shift - 1)) - 1
    sub = (significand + half + ((significand >> shift) & 1)) >> shift
    code = tl.where(f + 14 > block_exp, normal, sub)
    code = tl.where(u == _FP32_INF, CODE_INF, code)
    code = tl.where(u > _FP32_INF, CODE_NAN, code)  # NaN, and any value with the sign bit set ...
    return tl.where(u == _FP32_NEGATIVE_ZERO, 0, code).to(tl.uint8)  # ... except -0


@triton.jit
def _block_exponent(value, mask):
    """F of each block of a [SPLIT, BLOCKS, ROW] tile: the largest counted exponent (finite, sign clear) of its
    masked values, at least MIN_BLOCK_EXPONENT. quantized_reference.counted_exponent, then the block max."""
    u = value.to(tl.uint32, bitcast=True)
    # Masked-off lanes (past numel) hold whatever a masked load left there: they must not count.
    counted = tl.where(mask & (u < _FP32_INF), u >> 23, 0)
    # The standard library's max combine: the interpreter recognizes it and reduces in one numpy call, where a
    # combine of our own runs once per element in Python (4096 calls a program). Compiled, each block lies in
    # one warp (the kernel's tile shape), so the reduction is redux.sync / shuffles, with no shared memory.
    # Over the thread-local SPLIT axis first: then one cross-lane reduction a block, not SPLIT of them.
    largest = tl.reduce(tl.reduce(counted, 0, tl.standard._elementwise_max), 1, tl.standard._elementwise_max)
    return tl.maximum(largest, MIN_BLOCK_EXPONENT)


@triton.jit
def _step_tile(
    # buffers of one tensor, typed pointers
    param_ptr, grad_ptr, square_avg_ptr, acc_delta_ptr, master_ptr, square_avg_scale_ptr, acc_delta_scale_ptr,
    # the tile: element offsets [SPLIT, BLOCKS, ROW], block indices [BLOCKS]; limit bounds the update (0 when
    # the step is skipped), zero_limit GradMode.ZERO's store
    offsets, blocks, limit, zero_limit,
    # hyperparameters in math precision
    neg_lr, rho, one_minus_rho, eps, weight_decay, grad_scale, tensor_key,
    # constexpr flags
    GRAD_MODE: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr,
    HAS_WEIGHT_DECAY: tl.constexpr, HAS_MASTER: tl.constexpr, STOCHASTIC: tl.constexpr,
):
    """quantized_adadelta_reference_ for whole blocks of one tensor: decode, update, reduce, encode."""
    mask = offsets < limit
    block_mask = blocks * QUANT_BLOCK < limit
    sq_old = _scale_exponent(tl.load(square_avg_scale_ptr + blocks, mask=block_mask))[None, :, None]
    acc_old = _scale_exponent(tl.load(acc_delta_scale_ptr + blocks, mask=block_mask))[None, :, None]
    sq = _decode(tl.load(square_avg_ptr + offsets, mask=mask), sq_old)
    acc = _decode(tl.load(acc_delta_ptr + offsets, mask=mask), acc_old)
    sq, acc = _update_values(
        param_ptr, grad_ptr, master_ptr, offsets, mask, offsets < zero_limit, sq, acc,
        neg_lr, rho, one_minus_rho, eps, weight_decay, grad_scale, tensor_key,
        tl.float32, GRAD_MODE, MAXIMIZE, HAS_GRAD_SCALE, HAS_WEIGHT_DECAY, HAS_MASTER, STOCHASTIC,
    )
    sq_exp = _block_exponent(sq, mask)
    acc_exp = _block_exponent(acc, mask)
    tl.store(square_avg_ptr + offsets, _encode(sq, sq_exp[None, :, None]), mask=mask)
    tl.store(acc_delta_ptr + offsets, _encode(acc, acc_exp[None, :, None]), mask=mask)
    tl.store(square_avg_scale_ptr + blocks, (sq_exp << 23).to(tl.float32, bitcast=True), mask=block_mask)
    tl.store(acc_delta_scale_ptr + blocks, (acc_exp << 23).to(tl.float32, bitcast=True), mask=block_mask)


# ---- kernel ----

@triton.jit(do_not_specialize=["numel", "rounding_key", "tensor_index"])
def quantized_adadelta_kernel(
    # one tensor's contiguous buffers (codes: uint8, scales: fp32); master_ptr is None without master weights
    param_ptr, grad_ptr, square_avg_ptr, acc_delta_ptr, master_ptr, square_avg_scale_ptr, acc_delta_scale_ptr,
    # optional 1-element device scalars (None when absent): lr in fp32, grad_scale, found_inf
    lr_ptr, grad_scale_ptr, found_inf_ptr,
    # sizes: body_end = numel rounded down to 16 elements
    numel, body_end,
    # hyperparameters, rounded to fp32 inside the kernel
    lr: tl.float64, rho: tl.float64, one_minus_rho: tl.float64, eps: tl.float64, weight_decay: tl.float64,
    # stochastic rounding: the step's key and the tensor's position in the op's lists
    rounding_key: tl.uint32, tensor_index,
    # constexpr flags (the dense kernels' names: triton_launch.step_arguments fills them); MATH is fp32 here
    MATH: tl.constexpr, GRAD_MODE: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WEIGHT_DECAY: tl.constexpr,
    HAS_MASTER: tl.constexpr, STOCHASTIC: tl.constexpr, HAS_TAIL: tl.constexpr, VECTOR: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One step over one tensor: program i takes elements [i * BLOCK, (i + 1) * BLOCK), BLOCK / 256 blocks.

    The tile is [SPLIT, BLOCKS, ROW]: element (h, b, c) is element h * ROW + c of the program's block b, and
    ROW = 32 * VECTOR is what one warp covers in one access (VECTOR elements a thread, as the dense kernel). So
    every access of a warp is ROW consecutive elements, and Triton lays the warps along the block axis (its
    layout fills the fastest axis with lanes, then warps): each block lives in one warp, and its reduction is
    one redux.sync (sm_80+) a block and accumulator. The new scales then reach the store's layout (one thread a
    scale) through shared memory, 2 x 32 bytes and 3 barriers a program: Triton's coalescing pass gives every
    store a blocked layout of its own, and none spreads 8 values over 4 warps the way the reduction leaves them.

    The program holding a tail (numel not a multiple of 16) steps its whole tile with a per-element mask and
    element-wide accesses, at most BLOCK elements a tensor; the others mask per 16 elements, which keeps their
    accesses vectors.
    """
    ROW: tl.constexpr = _WARP * VECTOR
    SPLIT: tl.constexpr = QUANT_BLOCK // ROW
    BLOCKS: tl.constexpr = BLOCK // QUANT_BLOCK
    start = tl.program_id(0).to(tl.int64) * BLOCK
    blocks = start // QUANT_BLOCK + tl.arange(0, BLOCKS)
    offsets = (
        blocks[None, :, None] * QUANT_BLOCK + (tl.arange(0, SPLIT) * ROW)[:, None, None]
        + tl.arange(0, ROW)[None, None, :]
    )
    offsets = tl.max_contiguous(offsets, [1, 1, VECTOR])
    neg_lr, rho, one_minus_rho, eps, weight_decay, grad_scale, tensor_key = _step_scalars(
        lr_ptr, grad_scale_ptr, lr, rho, one_minus_rho, eps, weight_decay, rounding_key, tensor_index, MATH, STOCHASTIC,
    )
    body_limit = body_end
    tail_limit = numel
    if found_inf_ptr is not None:
        # A nonzero found_inf empties the tensor: every load and store is masked off and nothing is written,
        # except the ZERO mode's zeroed grad (its limit is the unskipped one).
        skip = tl.load(found_inf_ptr) != 0
        body_limit = tl.where(skip, 0, body_end)
        tail_limit = tl.where(skip, 0, numel)
    # Two calls, not one with a chosen limit: a limit that may be numel would hide body_end's divisibility by
    # 16 from every program, and with it the vectors.
    if HAS_TAIL and body_end - start < BLOCK:
        _step_tile(
            param_ptr, grad_ptr, square_avg_ptr, acc_delta_ptr, master_ptr, square_avg_scale_ptr, acc_delta_scale_ptr,
            offsets, blocks, tail_limit, numel, neg_lr, rho, one_minus_rho, eps, weight_decay, grad_scale, tensor_key,
            GRAD_MODE, MAXIMIZE, grad_scale_ptr is not None, HAS_WEIGHT_DECAY, HAS_MASTER, STOCHASTIC,
        )
    else:
        _step_tile(
            param_ptr, grad_ptr, square_avg_ptr, acc_delta_ptr, master_ptr, square_avg_scale_ptr, acc_delta_scale_ptr,
            offsets, blocks, body_limit, body_end, neg_lr, rho, one_minus_rho, eps, weight_decay, grad_scale,
            tensor_key, GRAD_MODE, MAXIMIZE, grad_scale_ptr is not None, HAS_WEIGHT_DECAY, HAS_MASTER, STOCHASTIC,
        )
