"""The Triton kernel of one Adadelta step over 8-bit state: device code only (launch and op: quantized_triton.py).

Mirrors ``adadelta_fused.quantized_reference.quantized_adadelta_reference_`` and csrc/quantized_state.h, in one
pass: a program takes whole 256-element blocks of one tensor, decodes both accumulators' R against the blocks' old
scales, runs the dense kernel's per-element update on them (``triton_kernel._update_values`` with RMS_STATE: the
same lines, so the same bits), which gives the new R, reduces each block's largest finite R in registers, and
encodes against it. Every float operation of the format is one IEEE-rounded fp32 operation, as in the reference:
sqrt_rn, div_rn and fma, and multiplies whose results no add consumes, so that Triton's default fp fusion (LLVM
contracting an fmul into the fadd that uses it) has nothing to fuse (tests/test_quantized_triton_ptx.py counts the
fma). Loaded through ``triton_interpreter.kernels(interpret, KERNEL_MODULE)``, once per mode, like
sparse_triton_kernel, with the dense helpers taken from the triton_kernel module of the same mode.
"""

import triton
import triton.language as tl

from . import quantized_reference, triton_interpreter

_dense = triton_interpreter.kernels(bool(triton.knobs.runtime.interpret))
_step_scalars = _dense._step_scalars
_update_values = _dense._update_values
_ieee_div = _dense._ieee_div

# The format's constants (quantized_reference, csrc/quantized_state.h).
QUANT_BLOCK = tl.constexpr(quantized_reference.BLOCK)
LEVELS = tl.constexpr(float(quantized_reference.LEVELS))
CODE_NAN = tl.constexpr(quantized_reference.CODE_NAN)
# fp32 bit patterns: MIN_SCALE (2^-64), +inf, the canonical NaN the reference decodes code 255 to.
_MIN_SCALE_BITS = tl.constexpr(0x1F800000)
_FP32_INF = tl.constexpr(0x7F800000)
_FP32_NAN = tl.constexpr(0x7FC00000)
# Threads of a warp: a tile row is the elements one warp-wide access covers, VECTOR a thread.
_WARP = tl.constexpr(32)


# ---- jit helpers ----

@triton.jit
def _decode(code, step):
    """quantized_reference.decode_roots before the floor (the update's): uint8 codes -> fp32 R, against their
    blocks' steps (scale / 254)."""
    root = code.to(tl.float32) * step
    bits = tl.where(code == CODE_NAN, _FP32_NAN, root.to(tl.uint32, bitcast=True))
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _round_half_even(product):
    """An fp32 product in [0, 2^23) (or -0) to the nearest integer, ties to even, as uint32: torch.round. The
    product is truncated and compared, never added to: 2^23 added and subtracted would round it in three float
    operations (csrc/quantized_state.h), but Triton compiles with fp fusion on, and LLVM would contract that
    add with the multiply into one fma, which rounds r * (254 / s) only once and moves some ties."""
    whole = product.to(tl.uint32)  # truncates
    half = whole.to(tl.float32) + 0.5  # exact: whole < 2^23
    up = (product > half) | ((product == half) & ((whole & 1) == 1))
    return whole + up.to(tl.uint32)


@triton.jit
def _encode(root, factor, mask):
    """quantized_reference.encode: fp32 roots -> uint8 codes against their blocks' factors (254 / scale), for the
    elements in ``mask`` (the others are not stored)."""
    finite = (root.to(tl.uint32, bitcast=True) & 0x7FFFFFFF) < _FP32_INF
    # A non-finite root becomes 0 before the multiply: its code is 255 anyway, and a NaN or inf converted to an
    # integer is undefined (numpy warns in the interpreter). So does a masked-off one: a block past numel has the
    # smallest scale, whose factor (254 * 2^64) takes the R of its zeros, sqrt(eps), past uint32.
    code = _round_half_even(tl.where(finite & mask, root, 0.0) * factor)
    return tl.where(finite, code, CODE_NAN).to(tl.uint8)


@triton.jit
def _block_scale(root, mask):
    """The scale of each block of a [SPLIT, BLOCKS, ROW] tile: its largest finite masked root, at least
    MIN_SCALE. quantized_reference.block_scales, on raw bits as csrc/quantized_state.h (counted_bits)."""
    u = root.to(tl.uint32, bitcast=True)
    # Masked-off lanes (past numel) hold whatever a masked load left there: they must not count. A finite
    # non-negative root's bits order as its value; NaN, inf and -0 (bits at or above inf's) count as 0.
    counted = tl.where(mask & (u < _FP32_INF), u, 0)
    # The standard library's max combine: the interpreter recognizes it and reduces in one numpy call, where a
    # combine of our own runs once per element in Python (4096 calls a program). Compiled, each block lies in
    # one warp (the kernel's tile shape), so the reduction over uint32 is one redux.sync (sm_80+) with no
    # shared memory; an fp32 max would take 5 shuffles. Over the thread-local SPLIT axis first: then one
    # cross-lane reduction a block, not SPLIT of them.
    largest = tl.reduce(tl.reduce(counted, 0, tl.standard._elementwise_max), 1, tl.standard._elementwise_max)
    return tl.maximum(largest, _MIN_SCALE_BITS).to(tl.float32, bitcast=True)


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
    # One division a block and accumulator, then a multiply an element (the reference's order).
    sq_step = _ieee_div(tl.load(square_avg_scale_ptr + blocks, mask=block_mask), LEVELS)[None, :, None]
    acc_step = _ieee_div(tl.load(acc_delta_scale_ptr + blocks, mask=block_mask), LEVELS)[None, :, None]
    sq = _decode(tl.load(square_avg_ptr + offsets, mask=mask), sq_step)
    acc = _decode(tl.load(acc_delta_ptr + offsets, mask=mask), acc_step)
    sq_root, acc_root = _update_values(
        param_ptr, grad_ptr, master_ptr, offsets, mask, offsets < zero_limit, sq, acc,
        neg_lr, rho, one_minus_rho, eps, weight_decay, grad_scale, tensor_key,
        tl.float32, GRAD_MODE, MAXIMIZE, HAS_GRAD_SCALE, HAS_WEIGHT_DECAY, HAS_MASTER, STOCHASTIC, True,
    )
    sq_scale = _block_scale(sq_root, mask)
    acc_scale = _block_scale(acc_root, mask)
    sq_factor = _ieee_div(tl.full(sq_scale.shape, LEVELS, tl.float32), sq_scale)[None, :, None]
    acc_factor = _ieee_div(tl.full(acc_scale.shape, LEVELS, tl.float32), acc_scale)[None, :, None]
    tl.store(square_avg_ptr + offsets, _encode(sq_root, sq_factor, mask), mask=mask)
    tl.store(acc_delta_ptr + offsets, _encode(acc_root, acc_factor, mask), mask=mask)
    tl.store(square_avg_scale_ptr + blocks, sq_scale, mask=block_mask)
    tl.store(acc_delta_scale_ptr + blocks, acc_scale, mask=block_mask)


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
