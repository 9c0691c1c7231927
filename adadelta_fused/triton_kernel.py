"""The Triton kernels of one fused Adadelta step: device code only (launches: triton_launch.py; op: triton_op.py).

The per-element update mirrors ``adadelta_fused.reference._update_one`` line by line, with its variable
names, and rounds where ``csrc/adadelta_math.h`` rounds: fma for weight decay, both addcmul's and the param
update, IEEE sqrt and division, and the counter-based rounding noise of ``csrc/rounding.h``. Every backend
therefore produces the same bits.

``triton_interpreter.kernels(interpret)`` executes this module once per mode, because ``triton.jit`` decides between
the compiler and the interpreter when it decorates; a kernel finds its helpers in its own module's globals.
For the same reason the kernels use only builtins of triton.language, none of its @jit library functions
(tl.zeros, tl.zeros_like, tl.cdiv, ...): those were decorated when triton was imported, and the
interpreter cannot call a compiled-only function.
"""

import triton
import triton.language as tl

# Module globals a jit function reads must be constexpr (triton refuses plain Python globals).
# Bit patterns of csrc/rounding.h and csrc/dtypes.h:
_MIX_MULTIPLIER_1 = tl.constexpr(0x7FEB352D)
_MIX_MULTIPLIER_2 = tl.constexpr(0x846CA68B)
_TENSOR_KEY_MULTIPLIER = tl.constexpr(0x9E3779B9)
_FP32_EXPONENT = tl.constexpr(0x7F800000)
_FP32_MAGNITUDE = tl.constexpr(0x7FFFFFFF)
_BF16_CANONICAL_NAN = tl.constexpr(0x7FC0)

# The body of a tensor ends on a multiple of 16 elements, 16 bytes of the narrowest (2-byte) dtype
# at least, so every thread's vector is wholly inside or outside it; the tail (numel % 16 elements)
# is stepped 16 lanes wide by the program that holds it.
BODY_MULTIPLE = tl.constexpr(16)

# Columns of the multi-tensor kernel's tensor table (one int64 row per tensor; triton_op builds it).
COLUMN_PARAM = tl.constexpr(0)
COLUMN_GRAD = tl.constexpr(1)
COLUMN_SQUARE_AVG = tl.constexpr(2)
COLUMN_ACC_DELTA = tl.constexpr(3)
COLUMN_MASTER = tl.constexpr(4)
COLUMN_NUMEL = tl.constexpr(5)
COLUMN_BODY_END = tl.constexpr(6)
COLUMN_INDEX = tl.constexpr(7)
TABLE_COLUMNS = tl.constexpr(8)


# ---- jit helpers ----

@triton.jit
def _mix32(x):
    """csrc/rounding.h ``mix32`` on uint32 values (reference._mix32): products wrap modulo 2^32."""
    x = x ^ (x >> 16)
    x = x * _MIX_MULTIPLIER_1
    x = x ^ (x >> 15)
    x = x * _MIX_MULTIPLIER_2
    return x ^ (x >> 16)


@triton.jit
def _tensor_key(rounding_key, tensor_index):
    """csrc/rounding.h ``rounding_tensor_key``: the step's key mixed with the tensor's position."""
    return _mix32(rounding_key.to(tl.uint32) ^ (tensor_index.to(tl.uint32) * _TENSOR_KEY_MULTIPLIER))


@triton.jit
def _rounding_noise(tensor_key, index):
    """reference.rounding_noise: 16 random bits for each element index."""
    # A flat launch's tail index is int32 when the tensor has fewer than 2^31 elements (Triton types the
    # scalar argument it starts from), and an int32 shifted by 32 is undefined on the GPU.
    index = index.to(tl.int64)
    high = _mix32(tensor_key ^ (index >> 32).to(tl.uint32))
    # Elements 2k and 2k + 1 take the low and the high half of one hash (csrc/rounding.h rounding_pair_hash).
    pair_hash = _mix32(high ^ ((index >> 1) << 1).to(tl.uint32))
    return (pair_hash >> ((index & 1) * 16).to(tl.uint32)) & 0xFFFF


@triton.jit
def _bf16_round_nearest(value):
    """fp32 -> bf16 bits (in a uint32), to nearest even; NaN becomes torch's canonical 0x7FC0.

    Integer arithmetic, as csrc/dtypes.h does on the CPU: the same bits on the GPU and in Triton's
    interpreter, whose float casts to bf16 truncate (interpreter.py, cast_impl).
    """
    bits = value.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return tl.where((bits & _FP32_MAGNITUDE) > _FP32_EXPONENT, _BF16_CANONICAL_NAN, rounded)


@triton.jit
def _bf16_round_stochastic(value, noise):
    """csrc/rounding.h ``bf16_round_stochastic``: add 16 random bits under the kept mantissa, truncate.

    Non-finite values keep round-to-nearest.
    """
    bits = value.to(tl.uint32, bitcast=True)
    finite = (bits & _FP32_EXPONENT) != _FP32_EXPONENT
    return tl.where(finite, (bits + noise) >> 16, _bf16_round_nearest(value))


@triton.jit
def _bits_to_bf16(bits):
    return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _to_math(stored, MATH: tl.constexpr):
    """Storage -> math precision. bf16 widens by a 16-bit shift, which is exact (csrc/dtypes.h)."""
    if stored.dtype == tl.bfloat16:
        return (stored.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return stored.to(MATH)


@triton.jit
def _to_storage(value, STORAGE: tl.constexpr):
    """Math -> storage precision, to nearest even (fp16: cvt.rn; bf16: integer rounding above)."""
    if STORAGE == tl.bfloat16:
        return _bits_to_bf16(_bf16_round_nearest(value))
    else:
        return value.to(STORAGE)


@triton.jit
def _ieee_sqrt(x):
    # tl.sqrt is sqrt.approx for fp32; sqrt_rn is the IEEE root (fp32 only); fp64 sqrt is always IEEE.
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def _ieee_div(x, y):
    # fp32 `/` compiles to div.full.f32 (2 ulp); div_rn is IEEE (fp32 only); fp64 `/` is div.rn.f64.
    if x.dtype == tl.float64:
        return x / y
    else:
        return tl.div_rn(x, y)


@triton.jit
def _hyperparameter(value, MATH: tl.constexpr):
    """An fp64 host scalar in math precision, rounded once (as torch casts a Python float)."""
    return tl.full((), value, MATH)


@triton.jit
def _adadelta_values(g, p, sq, acc, neg_lr, rho, one_minus_rho, eps, RMS_STATE: tl.constexpr):
    """The update of reference._update_one after weight decay, on values in math precision: (sq, acc, p).
    Shared with the sparse kernel (sparse_triton_kernel.py), which loads and stores differently. RMS_STATE: sq
    and acc are 8-bit state's decoded R = sqrt(x + eps) before the floor, and their new R come back
    (quantized_reference; csrc/adadelta_math.h, kRmsState)."""
    acc_root = acc
    if RMS_STATE:
        floor = _ieee_sqrt(eps)
        sq = tl.where(sq < floor, floor, sq)  # a select keeps a NaN R
        acc_root = tl.where(acc < floor, floor, acc)
        sq = tl.fma(sq, sq, -eps)
        acc = tl.fma(acc_root, acc_root, -eps)
    sq = tl.fma(one_minus_rho * g, g, sq * rho)  # sq.mul_(rho).addcmul_(g, g, value=1 - rho)
    std = _ieee_sqrt(sq + eps)  # _sqrt(sq.add(eps))
    if RMS_STATE:
        delta = acc_root
    else:
        delta = _ieee_sqrt(acc + eps)  # _sqrt(acc.add(eps))
    delta = _ieee_div(delta, std) * g  # delta.div_(std).mul_(g)
    acc = tl.fma(one_minus_rho * delta, delta, acc * rho)  # acc.mul_(rho).addcmul_(delta, delta, 1 - rho)
    p = tl.fma(neg_lr, delta, p)  # p.add_(delta, alpha=-lr)
    if RMS_STATE:
        sq = std
        acc = _ieee_sqrt(acc + eps)
    return sq, acc, p


@triton.jit
def _update_values(
    # buffers of one tensor, typed pointers
    param_ptr, grad_ptr, master_ptr,
    # which elements: mask for the update, zero_mask for GradMode.ZERO's store (it also covers a skipped step)
    offsets, mask, zero_mask,
    # the accumulators in math precision, as the caller loaded them
    sq, acc,
    # hyperparameters in math precision
    neg_lr, rho, one_minus_rho, eps, weight_decay, grad_scale, tensor_key,
    # constexpr flags
    MATH: tl.constexpr, GRAD_MODE: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr,
    HAS_WEIGHT_DECAY: tl.constexpr, HAS_MASTER: tl.constexpr, STOCHASTIC: tl.constexpr, RMS_STATE: tl.constexpr,
):
    """reference._update_one for the masked ``offsets`` of one tensor, except the accumulators' loads and
    stores: reads and writes the gradient, param and master copy, and returns the new (sq, acc) unrounded.
    Shared with the quantized kernel (quantized_triton_kernel.py), which decodes and encodes them (RMS_STATE:
    _adadelta_values)."""
    g = _to_math(tl.load(grad_ptr + offsets, mask=mask), MATH)
    if HAS_GRAD_SCALE:
        g = _ieee_div(g, grad_scale)
    if GRAD_MODE == 1:  # GradMode.UNSCALE: grad.copy_(g)
        tl.store(grad_ptr + offsets, _to_storage(g, grad_ptr.dtype.element_ty), mask=mask)
    if MAXIMIZE:
        g = -g
    if HAS_MASTER:
        p = tl.load(master_ptr + offsets, mask=mask)
    else:
        p = _to_math(tl.load(param_ptr + offsets, mask=mask), MATH)
    if HAS_WEIGHT_DECAY:
        g = tl.fma(weight_decay, p, g)  # g.add(p, alpha=weight_decay)

    sq, acc, p = _adadelta_values(g, p, sq, acc, neg_lr, rho, one_minus_rho, eps, RMS_STATE)

    if HAS_MASTER:
        tl.store(master_ptr + offsets, p, mask=mask)
        tl.store(param_ptr + offsets, _to_storage(p, param_ptr.dtype.element_ty), mask=mask)
    elif STOCHASTIC:
        noise = _rounding_noise(tensor_key, offsets)
        tl.store(param_ptr + offsets, _bits_to_bf16(_bf16_round_stochastic(p, noise)), mask=mask)
    else:
        tl.store(param_ptr + offsets, _to_storage(p, param_ptr.dtype.element_ty), mask=mask)
    if GRAD_MODE == 2:  # GradMode.ZERO: grad.zero_(), also when GradScaler skips the step
        zero = tl.full(g.shape, 0.0, MATH)
        tl.store(grad_ptr + offsets, _to_storage(zero, grad_ptr.dtype.element_ty), mask=zero_mask)
    return sq, acc


@triton.jit
def _update_elements(
    # buffers of one tensor, typed pointers
    param_ptr, grad_ptr, square_avg_ptr, acc_delta_ptr, master_ptr,
    # which elements: mask for the update, zero_mask for GradMode.ZERO's store (it also covers a skipped step)
    offsets, mask, zero_mask,
    # hyperparameters in math precision
    neg_lr, rho, one_minus_rho, eps, weight_decay, grad_scale, tensor_key,
    # constexpr flags
    MATH: tl.constexpr, GRAD_MODE: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr,
    HAS_WEIGHT_DECAY: tl.constexpr, HAS_MASTER: tl.constexpr, STOCHASTIC: tl.constexpr,
):
    """reference._update_one for the masked ``offsets`` of one tensor, with accumulators in storage dtypes."""
    sq = _to_math(tl.load(square_avg_ptr + offsets, mask=mask), MATH)
    acc = _to_math(tl.load(acc_delta_ptr + offsets, mask=mask), MATH)
    sq, acc = _update_values(
        param_ptr, grad_ptr, master_ptr, offsets, mask, zero_mask, sq, acc,
        neg_lr, rho, one_minus_rho, eps, weight_decay, grad_scale, tensor_key,
        MATH, GRAD_MODE, MAXIMIZE, HAS_GRAD_SCALE, HAS_WEIGHT_DECAY, HAS_MASTER, STOCHASTIC, False,
    )
    tl.store(square_avg_ptr + offsets, _to_storage(sq, square_avg_ptr.dtype.element_ty), mask=mask)
    tl.store(acc_delta_ptr + offsets, _to_storage(acc, acc_delta_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _step_scalars(
    lr_ptr, grad_scale_ptr, lr, rho, one_minus_rho, eps, weight_decay, rounding_key, tensor_index,
    MATH: tl.constexpr, STOCHASTIC: tl.constexpr,
):
    """A program's step scalars in math precision: (neg_lr, rho, one_minus_rho, eps, weight_decay, grad_scale,
    tensor_key). Shared with the quantized kernel."""
    if lr_ptr is not None:
        neg_lr = -(tl.load(lr_ptr).to(MATH))  # a device lr, read without a host sync
    else:
        neg_lr = -_hyperparameter(lr, MATH)
    grad_scale = 1.0
    if grad_scale_ptr is not None:
        grad_scale = tl.load(grad_scale_ptr).to(MATH)
    tensor_key = 0
    if STOCHASTIC:
        tensor_key = _tensor_key(rounding_key, tensor_index)
    return (
        neg_lr, _hyperparameter(rho, MATH), _hyperparameter(one_minus_rho, MATH), _hyperparameter(eps, MATH),
        _hyperparameter(weight_decay, MATH), grad_scale, tensor_key,
    )


@triton.jit
def _step_block(
    param_ptr, grad_ptr, square_avg_ptr, acc_delta_ptr, master_ptr,
    lr_ptr, grad_scale_ptr, found_inf_ptr,
    start, body_end, numel, tensor_index,
    lr, rho, one_minus_rho, eps, weight_decay, rounding_key,
    MATH: tl.constexpr, GRAD_MODE: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WEIGHT_DECAY: tl.constexpr,
    HAS_MASTER: tl.constexpr, STOCHASTIC: tl.constexpr, HAS_TAIL: tl.constexpr, VECTOR: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Elements [start, start + BLOCK) of one tensor: the body in vectors of VECTOR elements, then the tail.

    ``body_end`` (a multiple of 16 elements) bounds the vectorized pass: a mask that is uniform over each
    thread's vector is what lets the compiler emit ld.global.v4 / st.global.v4 at all.
    """
    neg_lr, rho, one_minus_rho, eps, weight_decay, grad_scale, tensor_key = _step_scalars(
        lr_ptr, grad_scale_ptr, lr, rho, one_minus_rho, eps, weight_decay, rounding_key, tensor_index, MATH, STOCHASTIC,
    )
    body_limit = body_end
    tail_limit = numel
    if found_inf_ptr is not None:
        # A nonzero found_inf empties the tensor: every load and store is masked off and nothing is written,
        # except the ZERO mode's zeroed grad (zero_mask keeps the unskipped limits).
        skip = tl.load(found_inf_ptr) != 0
        body_limit = tl.where(skip, 0, body_end)
        tail_limit = tl.where(skip, 0, numel)

    # VECTOR caps the elements a thread takes per access at 16 bytes of the widest buffer written. Triton
    # limits each store to 128 bits a thread but gives a load the widest vector of its neighbours, so with
    # bf16 params and fp32 state the bf16 loads would take 8 elements, the fp32 stores 4, and every value
    # would change layout through shared memory on the way (17 ld/st.shared a thread when tried).
    offsets = tl.max_contiguous(start + tl.arange(0, BLOCK), VECTOR)
    _update_elements(
        param_ptr, grad_ptr, square_avg_ptr, acc_delta_ptr, master_ptr, offsets, offsets < body_limit,
        offsets < body_end, neg_lr, rho, one_minus_rho, eps, weight_decay, grad_scale, tensor_key,
        MATH, GRAD_MODE, MAXIMIZE, grad_scale_ptr is not None, HAS_WEIGHT_DECAY, HAS_MASTER, STOCHASTIC,
    )
    # start <= body_end always (start is a multiple of 16 below numel), so this is the block holding the tail.
    if HAS_TAIL and body_end - start < BLOCK:
        tail = body_end + tl.arange(0, BODY_MULTIPLE)
        _update_elements(
            param_ptr, grad_ptr, square_avg_ptr, acc_delta_ptr, master_ptr, tail, tail < tail_limit, tail < numel,
            neg_lr, rho, one_minus_rho, eps, weight_decay, grad_scale, tensor_key,
            MATH, GRAD_MODE, MAXIMIZE, grad_scale_ptr is not None, HAS_WEIGHT_DECAY, HAS_MASTER, STOCHASTIC,
        )


@triton.jit
def _table_pointer(row_ptr, COLUMN: tl.constexpr, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    pointer = tl.load(row_ptr + COLUMN).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        # The host put this tensor in an ALIGNED launch because all its buffers start on 16 bytes. The hint
        # goes on the int_to_ptr itself: AxisInfo has no rule through that cast, only the op's own hints.
        pointer = tl.multiple_of(pointer, 16)
    return pointer


# ---- kernels ----

@triton.jit(do_not_specialize=["numel", "rounding_key", "tensor_index"])
def adadelta_flat_kernel(
    # one tensor's contiguous buffers; master_ptr is None without master weights
    param_ptr, grad_ptr, square_avg_ptr, acc_delta_ptr, master_ptr,
    # optional 1-element device scalars (None when absent): lr in math precision, grad_scale, found_inf
    lr_ptr, grad_scale_ptr, found_inf_ptr,
    # sizes: body_end = numel rounded down to 16 elements
    numel, body_end,
    # hyperparameters, rounded to math precision inside the kernel
    lr: tl.float64, rho: tl.float64, one_minus_rho: tl.float64, eps: tl.float64, weight_decay: tl.float64,
    # stochastic rounding: the step's key and the tensor's position in the op's lists
    rounding_key: tl.uint32, tensor_index,
    # constexpr flags
    MATH: tl.constexpr, GRAD_MODE: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WEIGHT_DECAY: tl.constexpr,
    HAS_MASTER: tl.constexpr, STOCHASTIC: tl.constexpr, HAS_TAIL: tl.constexpr, VECTOR: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One step over one tensor (or one flat buffer): program i takes elements [i * BLOCK, (i + 1) * BLOCK).

    No metadata at all: pointer alignment and body_end's divisibility by 16 reach the compiler through
    Triton's argument specialization.
    """
    start = tl.program_id(0).to(tl.int64) * BLOCK
    _step_block(
        param_ptr, grad_ptr, square_avg_ptr, acc_delta_ptr, master_ptr, lr_ptr, grad_scale_ptr, found_inf_ptr,
        start, body_end, numel, tensor_index, lr, rho, one_minus_rho, eps, weight_decay, rounding_key,
        MATH, GRAD_MODE, MAXIMIZE, HAS_WEIGHT_DECAY, HAS_MASTER, STOCHASTIC, HAS_TAIL, VECTOR, BLOCK,
    )


@triton.jit(do_not_specialize=["rounding_key"])
def adadelta_multi_tensor_kernel(
    # tables: tensor_table[t] = TABLE_COLUMNS int64 (5 addresses, numel, body_end, index in the op's lists),
    # block_table[b] = (row of tensor_table, first element of the block)
    tensor_table_ptr, block_table_ptr,
    # optional 1-element device scalars (None when absent): lr in math precision, grad_scale, found_inf
    lr_ptr, grad_scale_ptr, found_inf_ptr,
    # hyperparameters, rounded to math precision inside the kernel
    lr: tl.float64, rho: tl.float64, one_minus_rho: tl.float64, eps: tl.float64, weight_decay: tl.float64,
    rounding_key: tl.uint32,
    # storage types of the buffers behind the addresses
    PARAM_DTYPE: tl.constexpr, STATE_DTYPE: tl.constexpr,
    # constexpr flags; ALIGNED: every address in the table is a multiple of 16 bytes
    MATH: tl.constexpr, GRAD_MODE: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WEIGHT_DECAY: tl.constexpr,
    HAS_MASTER: tl.constexpr, STOCHASTIC: tl.constexpr, HAS_TAIL: tl.constexpr, ALIGNED: tl.constexpr,
    VECTOR: tl.constexpr, BLOCK: tl.constexpr,
):
    """One step over many tensors in one launch: program b steps one BLOCK of the tensor block_table names."""
    block = block_table_ptr + tl.program_id(0).to(tl.int64) * 2
    row_ptr = tensor_table_ptr + tl.load(block) * TABLE_COLUMNS
    start = tl.multiple_of(tl.load(block + 1), BLOCK)
    body_end = tl.multiple_of(tl.load(row_ptr + COLUMN_BODY_END), BODY_MULTIPLE)
    master_ptr = None
    if HAS_MASTER:
        master_ptr = _table_pointer(row_ptr, COLUMN_MASTER, tl.float32, ALIGNED)
    _step_block(
        _table_pointer(row_ptr, COLUMN_PARAM, PARAM_DTYPE, ALIGNED),
        _table_pointer(row_ptr, COLUMN_GRAD, PARAM_DTYPE, ALIGNED),
        _table_pointer(row_ptr, COLUMN_SQUARE_AVG, STATE_DTYPE, ALIGNED),
        _table_pointer(row_ptr, COLUMN_ACC_DELTA, STATE_DTYPE, ALIGNED),
        master_ptr, lr_ptr, grad_scale_ptr, found_inf_ptr,
        start, body_end, tl.load(row_ptr + COLUMN_NUMEL), tl.load(row_ptr + COLUMN_INDEX),
        lr, rho, one_minus_rho, eps, weight_decay, rounding_key,
        MATH, GRAD_MODE, MAXIMIZE, HAS_WEIGHT_DECAY, HAS_MASTER, STOCHASTIC, HAS_TAIL, VECTOR, BLOCK,
    )
