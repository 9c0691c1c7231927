"""The sparse op's kernels (C++ CPU, Triton in its interpreter) against the sparse reference, bit for bit, and the
reference's decays against dense zero-gradient steps; the op's registration and validator.

Every case poisons the rows that are not listed (NaN in param and state, a wrong step record): a kernel that
read them would spread the NaN, one that wrote them would change their bits.
"""

from __future__ import annotations

import pytest
import torch

import adadelta_fused
from adadelta_fused import _extension, sparse_ops
from adadelta_fused.contract import STATE_DTYPES, GradMode, StepScalars
from adadelta_fused.reference import adadelta_step_reference_
from adadelta_fused.sparse_reference import EXACT_DECAY_STEPS, rho_power, sparse_adadelta_reference_

from conftest import assert_bitwise_equal, every_backend, requires_extension  # noqa: F401

pytestmark = pytest.mark.usefixtures("interpreter_fma_rounds_once")

DTYPE_PAIRS = [(param, state) for param, states in STATE_DTYPES.items() for state in states]
POISON_STEP = -(2**40)  # a step record no listed row has: an unlisted row's is never read


def _pair_id(pair) -> str:
    return "-".join(str(d).removeprefix("torch.") for d in pair)


def make_case(num_rows, shape, param_dtype, state_dtype, listed, step, generator, *, max_gap=3 * EXACT_DECAY_STEPS):
    """A sparse step's tensors: random nonzero values; listed rows whose missed steps run from 0 past the
    exact bound; every other row poisoned."""
    width = 1
    for extent in shape:
        width *= extent
    full = (num_rows, *shape)
    signs = torch.randint(0, 2, full, generator=generator) * 2 - 1
    param = ((torch.rand(full, generator=generator, dtype=torch.float64) + 0.1) * signs).to(param_dtype)
    square_avg = (torch.rand(full, generator=generator, dtype=torch.float64) * 0.5 + 1e-3).to(state_dtype)
    acc_delta = (torch.rand(full, generator=generator, dtype=torch.float64) * 0.5 + 1e-3).to(state_dtype)
    rows = torch.randperm(num_rows, generator=generator)[:listed].sort().values
    gaps = torch.randint(0, max_gap + 1, (num_rows,), generator=generator)
    row_step = (step - 1 - gaps).clamp_min(0)
    unlisted = torch.ones(num_rows, dtype=torch.bool)
    unlisted[rows] = False
    param[unlisted] = float("nan")
    square_avg[unlisted] = float("nan")
    acc_delta[unlisted] = float("nan")
    row_step[unlisted] = POISON_STEP
    value_signs = torch.randint(0, 2, (listed, *shape), generator=generator) * 2 - 1
    values = ((torch.rand((listed, *shape), generator=generator, dtype=torch.float64) + 0.05) * value_signs)
    return dict(param=param, square_avg=square_avg, acc_delta=acc_delta, row_step=row_step, rows=rows,
                values=values.to(param_dtype))


def _clone(case):
    return {name: t.clone() for name, t in case.items()}


SCALARS = {
    "default": dict(lr=0.8, rho=0.9, eps=1e-6),
    "maximize": dict(lr=1.3, rho=0.95, eps=1e-4, maximize=True),
    "lr_tensor": dict(lr=torch.tensor(0.37, dtype=torch.float64), rho=0.99, eps=1e-6),
    "grad_scale": dict(lr=0.5, rho=0.9, eps=1e-6, grad_scale=torch.tensor(0.25), found_inf=torch.tensor(0.0)),
    "rho_one": dict(lr=1.0, rho=1.0, eps=0.0),
}


def _op_args(case, scalars: dict, step: int, *, update=True):
    lr = scalars["lr"]
    return (
        case["param"], case["square_avg"], case["acc_delta"], case["row_step"], case["rows"],
        case["values"] if update else None, 0.0 if isinstance(lr, torch.Tensor) else lr,
        lr if isinstance(lr, torch.Tensor) else None, scalars["rho"], scalars["eps"], scalars.get("maximize", False),
        scalars.get("grad_scale"), scalars.get("found_inf"), step,
    )


def _reference(case, scalars: dict, step: int, *, update=True) -> None:
    sparse_adadelta_reference_(
        case["param"], case["square_avg"], case["acc_delta"], case["row_step"], case["rows"],
        case["values"] if update else None, StepScalars(weight_decay=0.0, **scalars), step,
    )


def _run_backend(backend: str, case, scalars: dict, step: int, *, update=True) -> None:
    if backend == "reference":
        return _reference(case, scalars, step, update=update)
    if backend == "cpp":
        return torch.ops.adadelta_fused.sparse_adadelta_(*_op_args(case, scalars, step, update=update))
    from adadelta_fused import sparse_triton

    sparse_triton.triton_sparse_adadelta_(*_op_args(case, scalars, step, update=update))


def _assert_cases_equal(got, want) -> None:
    for name in ("param", "square_avg", "acc_delta", "row_step"):
        assert_bitwise_equal(got[name], want[name], name)


@pytest.mark.parametrize("pair", DTYPE_PAIRS, ids=_pair_id)
@pytest.mark.parametrize("shape", [(1,), (3,), (64,), (5, 29)], ids=str)
@pytest.mark.parametrize("update", [True, False], ids=["update", "catch_up"])
def test_kernel_matches_reference_bit_for_bit(every_backend, pair, shape, update, generator):  # noqa: F811
    case = make_case(37, shape, *pair, listed=23, step=500, generator=generator)
    want, got = _clone(case), _clone(case)
    _reference(want, SCALARS["default"], 500, update=update)
    _run_backend(every_backend, got, SCALARS["default"], 500, update=update)
    _assert_cases_equal(got, want)
    listed = case["rows"]
    assert bool(torch.isfinite(got["param"][listed].float()).all())  # no poison reached a listed row
    assert bool((got["row_step"][listed] == 500).all())


@pytest.mark.parametrize("feature", list(SCALARS))
def test_kernel_features_match_reference(every_backend, feature, generator):  # noqa: F811
    case = make_case(41, (7,), torch.float32, torch.float32, listed=19, step=300, generator=generator)
    want, got = _clone(case), _clone(case)
    _reference(want, SCALARS[feature], 300)
    _run_backend(every_backend, got, SCALARS[feature], 300)
    _assert_cases_equal(got, want)


def test_found_inf_skips_everything(every_backend, generator):  # noqa: F811
    case = make_case(9, (4,), torch.float32, torch.float32, listed=5, step=7, generator=generator)
    got = _clone(case)
    scalars = dict(SCALARS["grad_scale"], found_inf=torch.tensor(1.0))
    _run_backend(every_backend, got, scalars, 7)
    _assert_cases_equal(got, case)


@pytest.mark.parametrize("listed", [0, 1, 64])
def test_sizes_and_empty_rows(every_backend, listed, generator):  # noqa: F811
    case = make_case(64, (33,), torch.float32, torch.float32, listed=listed, step=90, generator=generator)
    want, got = _clone(case), _clone(case)
    _reference(want, SCALARS["default"], 90)
    _run_backend(every_backend, got, SCALARS["default"], 90)
    _assert_cases_equal(got, want)


@requires_extension
@pytest.mark.parametrize("row_numel", [1, 31, 32, 33, 1023])
def test_cpu_kernel_tiles_and_threads(row_numel, generator):
    """Rows shorter than, equal to and longer than the CPU tile (32 lanes), over many parallel tasks."""
    case = make_case(3001, (row_numel,), torch.float32, torch.float32, listed=1500, step=200, generator=generator)
    want, got = _clone(case), _clone(case)
    _reference(want, SCALARS["default"], 200)
    _run_backend("cpp", got, SCALARS["default"], 200)
    _assert_cases_equal(got, want)


@pytest.mark.parametrize("pair", DTYPE_PAIRS, ids=_pair_id)
def test_exact_decays_equal_dense_zero_gradient_steps(pair, generator):
    """The decay contract: k <= 64 missed steps are k dense steps with a zero gradient, bit for bit (the
    dense reference is torch.optim.Adadelta's own order of operations, checked in test_cpu_kernel)."""
    num_rows, width = 8, 16
    case = make_case(num_rows, (width,), *pair, listed=num_rows, step=1, generator=generator, max_gap=0)
    missed = torch.tensor([0, 1, 2, 7, 33, 63, EXACT_DECAY_STEPS, EXACT_DECAY_STEPS])
    step = 100
    case["row_step"] = step - missed
    lazy = _clone(case)
    _reference(lazy, SCALARS["default"], step, update=False)
    for row in range(num_rows):
        dense = [case[name][row].clone() for name in ("param", "square_avg", "acc_delta")]
        zero = torch.zeros_like(dense[0])
        for _ in range(int(missed[row])):
            adadelta_step_reference_([dense[0]], [zero], [dense[1]], [dense[2]], None,
                                     StepScalars(weight_decay=0.0, grad_mode=GradMode.KEEP, **SCALARS["default"]))
        assert_bitwise_equal(lazy["param"][row], dense[0], f"row {row} param")
        assert_bitwise_equal(lazy["square_avg"][row], dense[1], f"row {row} square_avg")
        assert_bitwise_equal(lazy["acc_delta"][row], dense[2], f"row {row} acc_delta")


def test_long_gaps_take_one_multiply_by_rho_power():
    """Past the exact bound: x * rho^k, rho^k by binary powering in fp64 rounded once to fp32; within k/2 ulp
    of dense's k multiplies."""
    k = 1000
    x = torch.tensor([[0.75]])
    case = dict(param=torch.ones(1, 1), square_avg=x.clone(), acc_delta=x.clone(), row_step=torch.tensor([0]),
                rows=torch.tensor([0]), values=torch.ones(1, 1))
    _reference(case, dict(lr=1.0, rho=0.999, eps=1e-6), k, update=False)
    factor = rho_power(0.999, torch.tensor([k]))
    assert factor.item() == pytest.approx(0.999**k, rel=1e-13)
    assert_bitwise_equal(case["square_avg"], x * factor.float())
    dense = x.clone()
    for _ in range(k):
        dense = dense * 0.999
    assert abs(case["square_avg"].item() / dense.item() - 1) <= k / 2 * 2**-24


@requires_extension
def test_the_exact_bound_is_one_constant():
    pytest.importorskip("triton")
    from adadelta_fused import triton_interpreter

    module = triton_interpreter.kernels(False, "adadelta_fused.sparse_triton_kernel")
    assert _extension.module().exact_decay_steps == EXACT_DECAY_STEPS == module.EXACT_DECAY_STEPS.value


@requires_extension
@pytest.mark.parametrize("update", [True, False], ids=["update", "catch_up"])
def test_opcheck(update, generator):
    case = make_case(13, (6,), torch.float32, torch.float32, listed=5, step=20, generator=generator)
    torch.library.opcheck(torch.ops.adadelta_fused.sparse_adadelta_.default,
                          _op_args(case, SCALARS["default"], 20, update=update))


def test_triton_opcheck(monkeypatch, generator):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from adadelta_fused import sparse_triton

    case = make_case(13, (6,), torch.float32, torch.float32, listed=5, step=20, generator=generator)
    torch.library.opcheck(sparse_triton.triton_sparse_adadelta_, _op_args(case, SCALARS["default"], 20),
                          test_utils=("test_schema", "test_faketensor"))


BAD = {
    "row_out_of_range": (lambda c: c.update(rows=torch.tensor([0, 13])), IndexError, r"rows\[1\] is 13, outside"),
    "rows_not_increasing": (lambda c: c.update(rows=torch.tensor([4, 2])), ValueError, "strictly increasing"),
    "duplicate_rows": (lambda c: c.update(rows=torch.tensor([3, 3])), ValueError, "strictly increasing"),
    "values_shape": (lambda c: c.update(values=torch.ones(2, 5)), ValueError, r"values has shape \[2, 5\]"),
    "values_dtype": (lambda c: c.update(values=torch.ones(2, 6, dtype=torch.float64)), TypeError, "values has dtype"),
    "row_step_dtype": (lambda c: c.update(row_step=torch.zeros(13, dtype=torch.int32)), TypeError,
                       "row_step must be int64"),
    "row_step_shape": (lambda c: c.update(row_step=torch.zeros(12, dtype=torch.int64)), ValueError,
                       r"row_step has shape \[12\]"),
    "state_shape": (lambda c: c.update(square_avg=torch.ones(13, 5)), ValueError, r"square_avg has shape \[13, 5\]"),
    "state_dtype": (lambda c: c.update(square_avg=torch.ones(13, 6, dtype=torch.float16),
                                       acc_delta=torch.ones(13, 6, dtype=torch.float16)), TypeError,
                    "square_avgs.0. has dtype Half, unsupported with Float params"),
    "param_strided": (lambda c: c.update(param=torch.ones(6, 13).t()), ValueError, "param must be contiguous"),
    "param_0d": (lambda c: c.update(param=torch.tensor(1.0)), ValueError, "param must have at least one dimension"),
}


@requires_extension
@pytest.mark.parametrize("case_name", list(BAD))
def test_bad_input_raises_before_writing(case_name, generator):
    case = make_case(13, (6,), torch.float32, torch.float32, listed=2, step=5, generator=generator)
    case["rows"] = torch.tensor([1, 4])
    case["values"] = torch.ones(2, 6)
    change, error, message = BAD[case_name]
    change(case)
    before = _clone(case)
    with pytest.raises(error, match=message):
        torch.ops.adadelta_fused.sparse_adadelta_(*_op_args(case, SCALARS["default"], 5))
    _assert_cases_equal(case, before)


@requires_extension
def test_bad_step_and_lr_are_named(generator):
    case = make_case(13, (6,), torch.float32, torch.float32, listed=2, step=5, generator=generator)
    with pytest.raises(ValueError, match="Invalid step: 0"):
        torch.ops.adadelta_fused.sparse_adadelta_(*_op_args(case, SCALARS["default"], 0))
    with pytest.raises(ValueError, match="Invalid learning rate: nan"):
        torch.ops.adadelta_fused.sparse_adadelta_(*_op_args(case, dict(SCALARS["default"], lr=float("nan")), 5))


def test_schema_is_declared_once():
    assert adadelta_fused.sparse_ops.SPARSE_STEP_SCHEMA in str(torch.ops.adadelta_fused.sparse_adadelta_.default._schema)
    assert sparse_ops.SPARSE_MUTATED_ARGS == ("param", "square_avg", "acc_delta", "row_step")
