"""The Triton kernel of the 8-bit-state step against quantized_reference, bit for bit: in Triton's interpreter on
CPU (TRITON_INTERPRET set per test by test_triton's ``interpreter`` fixture, with its one-rounding fma)."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton", reason="the Triton backend needs triton")

# quantized_triton: importing it registers the op
from adadelta_fused import quantized_reference, quantized_triton  # noqa: E402
from adadelta_fused.backends import triton as triton_backend  # noqa: E402
from adadelta_fused.contract import GradMode, quantized_op_arguments  # noqa: E402
from adadelta_fused.quantized_reference import BLOCK, CODE_NAN, MIN_SCALE, num_blocks, quantize  # noqa: E402
from adadelta_fused.reference import rounding_key  # noqa: E402

from conftest import FEATURES, assert_bitwise_equal, scalars_for  # noqa: E402
from test_triton import INTERPRETER_OPCHECKS, interpreter, quiet_mutation_analysis  # noqa: E402, F401

# The interpreter computes in numpy, which warns where the GPU silently makes a NaN or inf (x / 0 with eps = 0).
pytestmark = [
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),  # a scale of -2^100, decoded
]

PARAM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Empty, one element, one block but one, just past one block, past the 2048-element program with a tail.
SIZES = (0, 1, 255, 257, 4097)
NAMES = ("params", "grads", "square_avgs", "acc_deltas", "master_params", "square_avg_scales", "acc_delta_scales")
POISON = 12345.0  # a value no step writes: memory the kernel must not touch keeps it


def random_state(shape, generator) -> torch.Tensor:
    """fp32 accumulator values over 40 binades within each block, as training makes them, so that a block
    holds codes from 254 down to 0 (roots below 1/508 of the largest) and exact zeros. Of every four
    256-element stretches, the third lies between 2^-150 and 2^-130 (fp32 subnormals; roots below MIN_SCALE,
    so its scale is the floor) and the fourth is all zeros (fresh state: the floor again, every code 0). The
    tests quantize it with eps 0 (R = sqrt(x)), which keeps those blocks; a step with eps then reads codes that
    decode below sqrt(eps), as a group whose eps grew would."""
    numel = torch.Size(shape).numel()
    exponent = torch.rand(numel, generator=generator) * 40 - 30
    stretch = (torch.arange(numel) // BLOCK) % 4
    exponent = torch.where(stretch == 2, exponent / 2 - 135, exponent)
    values = torch.exp2(exponent) * (1 + torch.rand(numel, generator=generator))
    values[torch.rand(numel, generator=generator) < 0.02] = 0.0
    values[stretch == 3] = 0.0
    return values.view(shape)


def random_group(shapes, param_dtype, generator, *, master=False, layout=lambda t: t):
    """(params, grads, square_avg codes, acc_delta codes, masters or None, square_avg scales, acc_delta scales)
    for params of ``shapes`` in ``layout``, the state quantized from fresh random values."""
    params = [layout((torch.randn(shape, generator=generator)).to(param_dtype)) for shape in shapes]
    grads = [layout((torch.randn(shape, generator=generator) * 0.1).to(param_dtype)) for shape in shapes]
    square_avgs, square_avg_scales, acc_deltas, acc_delta_scales = [], [], [], []
    for param, shape in zip(params, shapes):
        for codes, scales, magnitude in ((square_avgs, square_avg_scales, 1e-2), (acc_deltas, acc_delta_scales, 1e-4)):
            code, scale = quantize(random_state(shape, generator) * magnitude, param, 0.0)
            codes.append(layout(code))
            scales.append(scale)
    masters = [p.float() + torch.randn(p.shape, generator=generator) * 1e-3 for p in params] if master else None
    return params, grads, square_avgs, acc_deltas, masters, square_avg_scales, acc_delta_scales


def clone_group(group):
    return tuple(None if tensors is None else [t.clone() for t in tensors] for tensors in group)


def assert_groups_equal(actual, expected) -> None:
    for name, got_list, want_list in zip(NAMES, actual, expected):
        if want_list is None:
            continue
        assert len(got_list) == len(want_list), name
        for i, (got, want) in enumerate(zip(got_list, want_list)):
            if want.dtype == torch.uint8:  # codes: no NaN to tell apart, compare as integers
                differ = (got != want).nonzero()
                assert got.shape == want.shape and got.stride() == want.stride(), f"{name}[{i}]"
                assert differ.numel() == 0, f"{name}[{i}]: {differ.shape[0]} codes differ, first {differ[0].tolist()}"
            else:
                assert_bitwise_equal(got, want, f"{name}[{i}]")


def run_both(group, scalars):
    """(the Triton op's result, the reference's) for one step over copies of ``group``."""
    expected, actual = clone_group(group), clone_group(group)
    quantized_reference.quantized_adadelta_reference_(*expected, scalars)
    triton_backend.quantized_step_(*actual, scalars)
    return actual, expected


def _poison_params(group):
    """With master weights the param is only written (the master is read): NaN shows any element left unwritten."""
    for param in group[0]:
        param.fill_(float("nan"))


# ---- the contract, bit for bit ----

@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
def test_sizes_match_reference_bitwise(interpreter, dtype, size, generator):
    group = random_group([(size,)], PARAM_DTYPES[dtype], generator)
    assert_groups_equal(*run_both(group, scalars_for("default")))


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
def test_every_feature_matches_reference_bitwise(interpreter, feature, dtype, generator):
    """Three tensors in one call (a tail, one block and a bit, one element): every contract feature."""
    group = random_group([(4097,), (257,), (1,)], PARAM_DTYPES[dtype], generator)
    assert_groups_equal(*run_both(group, scalars_for(feature)))


@pytest.mark.parametrize("grad_mode", list(GradMode))
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_master_weights(interpreter, dtype, grad_mode, generator):
    group = random_group([(4097,), (255,)], PARAM_DTYPES[dtype], generator, master=True)
    _poison_params(group)
    scalars = scalars_for("weight_decay", grad_mode=grad_mode, grad_scale=torch.tensor(2.0))
    actual, expected = run_both(group, scalars)
    assert_groups_equal(actual, expected)
    for param, master in zip(actual[0], actual[4]):
        assert torch.equal(param, master.to(param.dtype)), "the param must be the rounded master copy"


def test_several_steps_with_new_gradients_and_tensor_lr(interpreter, generator):
    group = random_group([(4097,), (300,)], torch.float32, generator)
    expected, actual = clone_group(group), clone_group(group)
    for step in range(3):
        for want, got in zip(expected[1], actual[1]):
            fresh = torch.randn(want.shape, generator=generator) * 0.1
            want.copy_(fresh)
            got.copy_(fresh)
        scalars = scalars_for("maximize_weight_decay", lr=torch.tensor(0.5 + step / 8))
        quantized_reference.quantized_adadelta_reference_(*expected, scalars)
        triton_backend.quantized_step_(*actual, scalars)
    assert_groups_equal(actual, expected)


def test_stochastic_rounding_is_bitwise_reproducible(interpreter, generator):
    """The noise is keyed by the tensor's index in the call and the element's index in it."""
    group = random_group([(4097,), (257,), (15,)], torch.bfloat16, generator)
    scalars = scalars_for("weight_decay", stochastic_rounding=True, rounding_key=rounding_key(seed=7, step=3))
    actual, expected = run_both(group, scalars)
    assert_groups_equal(actual, expected)
    other_key = scalars_for("weight_decay", stochastic_rounding=True, rounding_key=rounding_key(seed=8, step=3))
    different, _ = run_both(group, other_key)
    assert not torch.equal(different[0][0], actual[0][0]), "another seed must give other roundings"


def test_a_million_elements(interpreter, monkeypatch, generator):
    """2^20 + 3 elements, the last program with a 3-element tail; bf16 with stochastic rounding. Programs of 128
    blocks instead of 8: a program's bits do not depend on how many whole blocks it holds, and the interpreter
    pays per operation, so 33 programs take 2 s here where the 513 of the GPU's tile took 20-40 s on 2 cores.
    The GPU's tile is the one every other test runs."""
    monkeypatch.setattr(quantized_triton, "BLOCK", 128 * quantized_reference.BLOCK)
    group = random_group([(2**20 + 3,)], torch.bfloat16, generator)
    scalars = scalars_for(
        "maximize_weight_decay", stochastic_rounding=True, rounding_key=rounding_key(seed=1, step=9),
        grad_scale=torch.tensor(0.5), grad_mode=GradMode.UNSCALE,
    )
    (launch,), _ = quantized_triton.launches(*group, scalars)
    assert launch.grid == (33,) and launch.arguments["HAS_TAIL"]
    assert_groups_equal(*run_both(group, scalars))


# ---- layouts: the walk order of codes, scales and noise ----

def test_channels_last_param_is_walked_in_memory_order(interpreter, generator):
    """A dense param is stepped as it lies in memory: its blocks and its rounding noise follow memory order."""
    def channels_last(tensor):
        return tensor.to(memory_format=torch.channels_last)

    group = random_group([(4, 6, 5, 7), (8, 3, 4, 5)], torch.bfloat16, generator, layout=channels_last)
    assert group[2][0].is_contiguous(memory_format=torch.channels_last)
    scalars = scalars_for("default", stochastic_rounding=True, rounding_key=rounding_key(seed=5, step=2))
    assert_groups_equal(*run_both(group, scalars))


def test_strided_views_are_stepped_through_dense_copies(interpreter, generator):
    """A transposed matrix is dense (walked in memory order), a strided slice is not (stepped through a
    contiguous copy, in logical order). Their codes and grads lie otherwise than the params (row-major under
    the transposed one, transposed under the slice), so staging copies them into the param's walk and back."""
    base = random_group([(64, 33)], torch.float32, generator)
    matrix = torch.randn(33, 64, generator=generator)
    params = [matrix.t(), torch.randn(64, 66, generator=generator)[:, ::2]]
    grads = [torch.randn(64, 33, generator=generator) * 0.1, torch.randn(33, 64, generator=generator).t() * 0.1]
    square_avgs, acc_deltas, square_avg_scales, acc_delta_scales = [], [], [], []
    for param in params:
        for codes, scales, magnitude in ((square_avgs, square_avg_scales, 1e-2), (acc_deltas, acc_delta_scales, 1e-4)):
            code, scale = quantize(random_state(param.shape, generator) * magnitude, param, 0.0)
            codes.append(code)
            scales.append(scale)
    square_avgs[1] = square_avgs[1].t().contiguous().t()  # codes in another layout than their (strided) param
    group = (params + base[0], grads + base[1], square_avgs + base[2], acc_deltas + base[3], None,
             square_avg_scales + base[5], acc_delta_scales + base[6])
    assert_groups_equal(*run_both(group, scalars_for("grad_zero")))


@pytest.mark.parametrize("size", [1, 255, 257, 4097])
def test_no_write_outside_the_tensors(interpreter, size, generator):
    """Every buffer is a view with poisoned guard zones before and after: the masks of the tail, of the last
    block and of the last program must keep every load and store inside it."""
    group = random_group([(size,)], torch.bfloat16, generator, master=True)
    bases = tuple([torch.full((t.numel() + 64,), POISON).to(t.dtype) for t in tensors] for tensors in group)
    views = tuple([base[32:32 + t.numel()] for base, t in zip(b, tensors)] for b, tensors in zip(bases, group))
    for view_list, tensors in zip(views, group):
        for view, tensor in zip(view_list, tensors):
            view.copy_(tensor)
    expected = clone_group(group)
    scalars = scalars_for("grad_zero")
    quantized_reference.quantized_adadelta_reference_(*expected, scalars)
    triton_backend.quantized_step_(*views, scalars)
    assert_groups_equal(views, expected)
    for tensors in bases:
        for base in tensors:
            guard = torch.full((32,), POISON).to(base.dtype)
            assert torch.equal(base[:32], guard) and torch.equal(base[-32:], guard)


# ---- GradScaler's found_inf, non-finite values ----

@pytest.mark.parametrize("grad_mode", list(GradMode))
def test_found_inf_changes_nothing_but_zeroes_grads_in_zero_mode(interpreter, grad_mode, generator):
    group = random_group([(4097,), (257,)], torch.bfloat16, generator, master=True)
    group[1][0][3] = float("inf")
    if grad_mode == GradMode.ZERO:
        for grad in group[1]:  # only written when the step is skipped: NaN shows any element left unzeroed
            grad.fill_(float("nan"))
    before = clone_group(group)
    scalars = scalars_for(
        "weight_decay", grad_scale=torch.tensor(4.0), found_inf=torch.tensor(1.0), grad_mode=grad_mode
    )
    actual, expected = run_both(group, scalars)
    assert_groups_equal(actual, expected)
    if grad_mode == GradMode.ZERO:
        before[1][:] = [torch.zeros_like(g) for g in before[1]]
    assert_groups_equal(actual, before)


def test_nonfinite_values_propagate_like_reference(interpreter, generator):
    """NaN and inf gradients and params; NaN codes (255), alone and as a whole block, whose new roots are NaN
    and count toward no scale; and scales that no step writes (0, inf, NaN, negative, subnormal), which decoding
    multiplies in as they are."""
    group = random_group([(1023,), (600,)], torch.float32, generator)
    group[1][0][:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
    group[0][0][4:6] = torch.tensor([float("inf"), -0.0])
    group[0][1][599] = float("nan")  # in the tail
    group[2][0][900:904] = CODE_NAN
    group[2][0][256:512] = CODE_NAN  # a block of NaN: its new scale is the floor
    group[3][1][10:12] = torch.tensor([CODE_NAN, 7], dtype=torch.uint8)
    group[5][0][:4] = torch.tensor([0.0, float("inf"), float("nan"), -2.0**100])
    group[6][1][2] = 2.0**-140  # a subnormal scale
    for feature in ("default", "weight_decay", "maximize"):
        assert_groups_equal(*run_both(group, scalars_for(feature)))
    actual, _ = run_both(group, scalars_for("default"))
    assert (actual[2][0][256:512] == CODE_NAN).all() and actual[5][0][1] == MIN_SCALE


def test_ties_round_to_even(interpreter):
    """With rho = 1 and zero gradients the step keeps both accumulators' decoded values, so the codes are
    re-encoded against the blocks' new scales. A block whose largest code is 4 (scale 254, step 1) gets the
    scale 4 and the factor 254 / 4 = 63.5, exact: odd codes land on ties (63.5, 190.5), which go to the even
    neighbour (64, 190); with 8 the factor is 31.75 and code 2 is the tie 63.5. A product rounded to fp32 only
    after an fma-like fusion would still tie here; the PTX test shows no such fusion."""
    codes = torch.tensor([4, 1, 3, 0, 2] + [0] * (BLOCK - 5) + [8, 2, 6, 1], dtype=torch.uint8)
    param = torch.randn(codes.numel())
    group = ([param], [torch.zeros_like(param)], [codes.clone()], [codes.clone()], None,
             [torch.full((2,), 254.0)], [torch.full((2,), 254.0)])
    actual, expected = run_both(group, scalars_for("default", rho=1.0))
    assert_groups_equal(actual, expected)
    assert actual[2][0][:5].tolist() == [254, 64, 190, 0, 127]
    assert actual[2][0][BLOCK:].tolist() == [254, 64, 190, 32]
    assert actual[5][0].tolist() == [4.0, 8.0]


def test_random_state_spans_the_format(generator):
    """The states the tests step hold every kind of block: codes from 0 to 254 in ordinary blocks, and blocks
    at the scale floor, subnormal-valued or all zero."""
    param = torch.zeros(4 * BLOCK)
    codes, scales = quantize(random_state(param.shape, generator), param, 0.0)
    ordinary = codes[:2 * BLOCK]
    assert ordinary.min() == 0 and ordinary.max() == 254 and len(ordinary.unique()) > 50
    assert (scales[2:] == MIN_SCALE).all() and codes[2 * BLOCK:3 * BLOCK].max() > 0
    assert (codes[3 * BLOCK:] == 0).all()


# ---- the op for torch.library ----

def _op():
    return torch.ops.adadelta_fused.triton_quantized_adadelta_.default


def op_kwargs(group, **overrides) -> dict:
    scalars = scalars_for("default")
    args = quantized_op_arguments(*group[:5], group[5], group[6], scalars)
    schema = torch.ops.adadelta_fused.triton_quantized_adadelta_.default._schema
    return dict(zip((a.name for a in schema.arguments), args)) | overrides


def test_validator_runs_before_any_memory_is_touched(interpreter, generator):
    group = random_group([(300,), (5,)], torch.float32, generator)
    before = clone_group(group)
    bad = op_kwargs(group, acc_delta_scales=[group[6][0], torch.ones(2)])
    with pytest.raises(ValueError, match=r"acc_delta_scales\[1\] has shape \[2\] but params\[1\] has 5 elements"):
        _op()(**bad)
    assert_groups_equal(group, before)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(lr_tensor=torch.tensor(0.5), grad_scale=torch.tensor(2.0), found_inf=torch.tensor(0.0), grad_mode=1),
        dict(grad_mode=2, maximize=True, weight_decay=0.1),
    ],
    ids=["default", "device_scalars_unscale", "zero_maximize_decay"],
)
def test_opcheck(interpreter, quiet_mutation_analysis, overrides, generator):
    group = random_group([(1023,), (15,)], torch.float32, generator)
    torch.library.opcheck(_op(), (), op_kwargs(clone_group(group), **overrides), test_utils=INTERPRETER_OPCHECKS)


def test_opcheck_mixed_precision(interpreter, quiet_mutation_analysis, generator):
    group = random_group([(1023,), (15,)], torch.bfloat16, generator, master=True)
    torch.library.opcheck(_op(), (), op_kwargs(clone_group(group)), test_utils=INTERPRETER_OPCHECKS)
    group = random_group([(1023,)], torch.bfloat16, generator)
    args = op_kwargs(clone_group(group), stochastic_rounding=True, rounding_key=3)
    torch.library.opcheck(_op(), (), args, test_utils=INTERPRETER_OPCHECKS)


def test_one_launch_per_nonempty_tensor(generator):
    group = random_group([(4097,), (0,), (16,)], torch.float32, generator)
    planned, write_back = quantized_triton.launches(*group, scalars_for("default"))
    assert [launch.grid for launch in planned] == [(3,), (1,)] and not write_back
    assert [launch.arguments["tensor_index"] for launch in planned] == [0, 2], "the index in the op's lists"
    assert [launch.arguments["HAS_TAIL"] for launch in planned] == [True, False]
    assert num_blocks(4097) == planned[0].arguments["square_avg_scale_ptr"].numel()
