"""The Triton kernels against the reference, bit for bit: in Triton's interpreter on CPU, and compiled on CUDA
when a GPU is present.

TRITON_INTERPRET is set per test with monkeypatch, so the other test files of the same pytest run see the
environment they started with: adadelta_fused.triton_op picks the interpreter or the compiler at each launch.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import subprocess
import sys

import numpy
import pytest
import torch

triton = pytest.importorskip("triton", reason="the Triton backend needs triton")

from triton.runtime import interpreter as triton_interpreter  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402
from torch._dynamo.backends.common import aot_autograd  # noqa: E402
from torch._higher_order_ops import triton_kernel_wrap  # noqa: E402
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import adadelta_fused  # noqa: E402
from adadelta_fused import backends as registry  # noqa: E402
from adadelta_fused import triton_interpreter as interpreter_mode  # noqa: E402
from adadelta_fused import triton_launch, triton_tables  # noqa: E402
from adadelta_fused.backends import triton as triton_backend  # noqa: E402
from adadelta_fused.contract import GradMode, StepScalars, op_arguments  # noqa: E402
from adadelta_fused.reference import adadelta_step_reference_, rounding_key  # noqa: E402

from conftest import (  # noqa: E402
    DTYPE_PAIRS,
    FEATURES,
    assert_groups_equal,
    clone_group,
    dtype_id,
    random_group,
    run_with_reference,
    on_device,
    op_kwargs,
    scalars_for,
    step_with_new_gradients,
)

# The interpreter computes in numpy, which warns where the GPU silently makes a NaN (0 / 0 with eps = 0).
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

POISON = 12345.0  # a value no update produces: memory the kernel must not touch keeps it
SIZES = (1023, 4097, 1, 0)  # odd sizes around the 1024-element block and the 16-element body multiple

# Under the interpreter, opcheck's test_aot_dispatch_* cannot run: the traced graph's
# triton_kernel_wrapper_functional launches the compiled kernel, which needs a GPU driver.
INTERPRETER_OPCHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")


def _fma_rounded_once(self, x, y, z):
    """fma with one rounding, as the GPU's fma.rn computes it.

    Triton's interpreter computes x * y + z in numpy and rounds twice (triton/runtime/interpreter.py,
    ``InterpreterBuilder.create_fma``). torch's CPU addcmul rounds once: csrc/adadelta_math.h and the
    reference rest on that, test_cpu_kernel.py checks it, and test_fma_stand_in_rounds_once re-checks it.
    """
    xs, ys, zs = (torch.from_numpy(numpy.ascontiguousarray(a)) for a in numpy.broadcast_arrays(x.data, y.data, z.data))
    return triton_interpreter.TensorHandle(torch.addcmul(zs, xs, ys).numpy(), z.dtype.scalar)


def _clear_registry() -> None:
    registry.reprobe()


@pytest.fixture
def interpreter(monkeypatch):
    """Triton's interpreter with an fma that rounds once; the registry re-probes with it set."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton_interpreter.InterpreterBuilder, "create_fma", _fma_rounded_once)
    _clear_registry()
    yield
    _clear_registry()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled kernels need a CUDA device")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=requires_cuda)])
def device(request, monkeypatch):
    """cpu: the kernels in the interpreter; cuda: the kernels compiled, without the interpreter."""
    if request.param == "cpu":
        request.getfixturevalue("interpreter")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        _clear_registry()
    return torch.device(request.param)


def run_both(group, scalars):
    return run_with_reference(triton_backend.step_, group, scalars)


# ---- the interpreter really runs, and rounds like the GPU ----

def test_fma_stand_in_rounds_once():
    # (1 + 2^-k)^2 - (1 + 2^(1-k)) = 2^-2k exactly, a quarter or half ulp of 1 that a rounded product loses.
    for dtype, k in ((triton.language.float32, 12), (triton.language.float64, 27)):
        numpy_dtype = numpy.float32 if dtype == triton.language.float32 else numpy.float64
        x = numpy.full(67, 1 + 2.0**-k, dtype=numpy_dtype)  # a SIMD body and a scalar tail
        z = numpy.full(67, -(1 + 2.0 ** (1 - k)), dtype=numpy_dtype)
        handle = lambda a: triton_interpreter.TensorHandle(a, dtype)  # noqa: E731
        assert (_fma_rounded_once(None, handle(x), handle(x), handle(z)).data == 2.0 ** (-2 * k)).all()
        assert (x * x + z == 0).all(), "the interpreter's own x * y + z, rounded twice"


def test_launches_run_in_the_interpreter(interpreter, monkeypatch, generator):
    launched = []
    original = triton_interpreter.GridExecutor.__call__

    def spy(self, *args, **kwargs):
        launched.append(self.fn.__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(triton_interpreter.GridExecutor, "__call__", spy)
    run_both(random_group((1023, 4097), torch.float32, torch.float32, generator), scalars_for("default"))
    run_both(random_group((4097,), torch.float32, torch.float32, generator), scalars_for("default"))
    assert launched == ["adadelta_multi_tensor_kernel", "adadelta_flat_kernel"]
    assert isinstance(interpreter_mode.kernels(True).adadelta_flat_kernel, triton_interpreter.InterpretedFunction)
    assert isinstance(interpreter_mode.kernels(False).adadelta_flat_kernel, JITFunction)


def test_interpreter_is_read_at_each_launch(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not interpreter_mode.interpreting()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert interpreter_mode.interpreting()


# ---- the contract, bit for bit ----

@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("pair", DTYPE_PAIRS, ids=dtype_id)
def test_every_feature_and_dtype_matches_reference_bitwise(device, feature, pair, generator):
    group = on_device(random_group(SIZES, *pair, generator), device)
    assert_groups_equal(*run_both(group, scalars_for(feature, device)))


@pytest.mark.parametrize("size", SIZES)
def test_one_tensor_takes_the_flat_kernel(interpreter, size, generator):
    group = random_group((size,), torch.bfloat16, torch.float32, generator)
    assert_groups_equal(*run_both(group, scalars_for("grad_zero")))
    if size:
        (launch,) = triton_launch.planned_launches(*group, scalars_for("grad_zero"))
        assert launch.kernel == "adadelta_flat_kernel"


def test_several_steps_with_new_gradients_and_lr(device, generator):
    group = random_group((4097, 1023, 15), torch.float32, torch.float32, generator)
    expected, actual = clone_group(group), on_device(group, device)
    for step in range(4):
        scalars = scalars_for("maximize_weight_decay", device, lr=0.5 + step / 8)
        step_with_new_gradients(triton_backend.step_, expected, actual, scalars, generator)
    assert_groups_equal(on_device(actual, "cpu"), expected)


@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grad_mode", list(GradMode))
def test_master_weights(device, param_dtype, grad_mode, generator):
    group = on_device(random_group((4097, 1023), param_dtype, torch.float32, generator, master=True), device)
    scalars = scalars_for("weight_decay", device, grad_mode=grad_mode, grad_scale=torch.tensor(2.0))
    actual, expected = run_both(group, scalars)
    assert_groups_equal(actual, expected)
    for param, master in zip(actual[0], actual[4]):
        assert torch.equal(param, master.to(param_dtype)), "the param must be the rounded master copy"


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float32])
def test_stochastic_rounding_is_bitwise_reproducible(device, state_dtype, generator):
    group = on_device(random_group((4097, 1023, 15), torch.bfloat16, state_dtype, generator), device)
    scalars = scalars_for("default", stochastic_rounding=True, rounding_key=rounding_key(seed=7, step=3))
    actual, expected = run_both(group, scalars)
    assert_groups_equal(actual, expected)
    other_key = scalars_for("default", stochastic_rounding=True, rounding_key=rounding_key(seed=8, step=3))
    different, _ = run_both(group, other_key)
    assert not torch.equal(different[0][0], actual[0][0]), "another seed must give other roundings"


def test_stochastic_rounding_of_a_channels_last_param_follows_memory_order(interpreter, generator):
    """The noise is indexed in the order the kernel walks a dense param: its memory order."""
    shape = (4, 6, 5, 7)

    def channels_last(tensor):
        return tensor.to(memory_format=torch.channels_last)

    group = (
        [channels_last(torch.randn(shape, generator=generator).bfloat16())],
        [channels_last(torch.randn(shape, generator=generator).bfloat16() * 0.1)],
        [channels_last(torch.rand(shape, generator=generator) * 1e-2 + 1e-3)],
        [channels_last(torch.rand(shape, generator=generator) * 1e-4 + 1e-5)],
        None,
    )
    scalars = scalars_for("default", stochastic_rounding=True, rounding_key=rounding_key(seed=5, step=2))
    assert_groups_equal(*run_both(group, scalars))


@pytest.mark.parametrize("grad_mode", [GradMode.UNSCALE, GradMode.ZERO])
def test_found_inf_changes_nothing_but_zeroes_grads_in_zero_mode(device, grad_mode, generator):
    group = on_device(random_group((4097, 1023), torch.bfloat16, torch.float32, generator, master=True), device)
    group[1][0][3] = float("inf")
    before = clone_group(group)
    scalars = scalars_for(
        "weight_decay", device, grad_scale=torch.tensor(4.0), found_inf=torch.tensor(1.0), grad_mode=grad_mode
    )
    triton_backend.step_(*group[:4], group[4], scalars)
    if grad_mode == GradMode.ZERO:
        before[1][:] = [torch.zeros_like(g) for g in before[1]]  # the next backward starts from zero
    assert_groups_equal(group, before)


def test_found_inf_zero_runs_the_step(interpreter, generator):
    group = random_group((1023, 15), torch.float32, torch.float32, generator)
    actual, expected = run_both(group, scalars_for("default", found_inf=torch.tensor(0.0)))
    assert_groups_equal(actual, expected)
    assert not torch.equal(actual[0][0], group[0][0])


def test_nonfinite_values_propagate_like_reference(interpreter, generator):
    group = random_group((1023, 17), torch.float32, torch.float32, generator)
    group[1][0][:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
    group[0][0][4:6] = torch.tensor([float("inf"), -0.0])
    group[0][1][16] = float("nan")  # in the tail, past the last 16-element body
    for feature in ("default", "weight_decay", "maximize"):
        assert_groups_equal(*run_both(group, scalars_for(feature)))


@pytest.mark.parametrize("count", [1, 3], ids=["flat", "multi_tensor"])
@pytest.mark.parametrize("size", [1, 15, 17, 1023, 2048, 4097])
def test_no_write_outside_the_tensors(interpreter, count, size, generator):
    """Each tensor is a view with poisoned guard zones before and after: the tail mask and the block
    boundaries must keep every load and store inside it."""
    group = random_group((size,) * count, torch.bfloat16, torch.float32, generator, master=True)
    bases = tuple([torch.full((size + 64,), POISON, dtype=t.dtype) for t in tensors] for tensors in group)
    views = tuple([base[32 : 32 + size] for base in tensors] for tensors in bases)
    for view_list, tensors in zip(views, group):
        for view, tensor in zip(view_list, tensors):
            view.copy_(tensor)
    expected = clone_group(group)
    adadelta_step_reference_(*expected[:4], expected[4], scalars_for("grad_zero"))
    triton_backend.step_(*views[:4], views[4], scalars_for("grad_zero"))
    assert_groups_equal(views, expected)
    for tensors in bases:
        for base in tensors:
            assert (base[:32] == POISON).all() and (base[32 + size :] == POISON).all()


@pytest.mark.parametrize("pair", [(torch.float32, torch.float32), (torch.float16, torch.float16)], ids=dtype_id)
def test_misaligned_and_strided_views(device, pair, generator):
    base = random_group((4098, 64 * 33, 64 * 33), *pair, generator)

    def views(group):
        # element 1 onwards (misaligned by one element), a transposed matrix, a strided slice
        return tuple(
            [tensors[0][1:], tensors[1].view(64, 33).t(), tensors[2].view(64, 33)[:, ::2]] for tensors in group[:4]
        )

    expected_base, actual_base = clone_group(base), on_device(base, device)
    adadelta_step_reference_(*views(expected_base), None, scalars_for("grad_zero"))
    triton_backend.step_(*views(actual_base), None, scalars_for("grad_zero", device))
    assert_groups_equal(on_device(actual_base, "cpu"), expected_base)


def test_misaligned_tensors_get_their_own_unvectorized_launch(interpreter, generator):
    aligned = random_group((1023,), torch.float32, torch.float32, generator)
    shifted = random_group((1024,), torch.float32, torch.float32, generator)
    group = tuple(a + [t[1:] for t in s] for a, s in zip(aligned[:4], shifted[:4])) + (None,)
    launches = triton_launch.planned_launches(*group, scalars_for("weight_decay"))
    assert [launch.arguments["ALIGNED"] for launch in launches] == [True, False]
    assert_groups_equal(*run_both(group, scalars_for("weight_decay")))


def test_grad_with_other_strides_than_param(interpreter, generator):
    param = torch.randn(8, 3, 5, 7, generator=generator).to(memory_format=torch.channels_last)
    group = (
        [param, torch.randn(5, 3, generator=generator)],
        [torch.randn(8, 3, 5, 7, generator=generator), torch.randn(5, 3, generator=generator)],
        [torch.rand_like(param) + 0.01, torch.rand(5, 3, generator=generator) + 0.01],
        [torch.rand_like(param) + 0.01, torch.rand(5, 3, generator=generator) + 0.01],
        None,
    )
    assert_groups_equal(*run_both(group, scalars_for("grad_zero", grad_mode=GradMode.ZERO)))


# ---- the table cache ----

def test_tables_are_reused_while_the_tensors_stay(interpreter, generator):
    triton_tables.TABLES.clear()
    group = random_group((1023, 4097, 15), torch.float32, torch.float32, generator)
    first = triton_launch.planned_launches(*group, scalars_for("default"))
    again = triton_launch.planned_launches(*group, scalars_for("default"))
    assert len(triton_tables.TABLES) == 1
    assert again[0].arguments["tensor_table_ptr"] is first[0].arguments["tensor_table_ptr"]
    group[0][1] = group[0][1].clone()  # a new buffer: the cached addresses no longer apply
    moved = triton_launch.planned_launches(*group, scalars_for("default"))
    assert len(triton_tables.TABLES) == 2
    assert moved[0].arguments["tensor_table_ptr"] is not first[0].arguments["tensor_table_ptr"]
    column = interpreter_mode.kernels(False).COLUMN_PARAM.value
    assert moved[0].arguments["tensor_table_ptr"][1, column].item() == group[0][1].data_ptr()


def test_table_cache_keeps_its_bound(interpreter, generator):
    triton_tables.TABLES.clear()
    # All kept alive, so no two groups can share addresses (and so a cache entry).
    count = triton_tables.TABLE_CACHE_SIZE + 5
    groups = [random_group((33, 17), torch.float32, torch.float32, generator) for _ in range(count)]
    for group in groups:
        triton_launch.planned_launches(*group, scalars_for("default"))
    assert len(triton_tables.TABLES) == triton_tables.TABLE_CACHE_SIZE


def test_staged_groups_bypass_the_cache(interpreter, generator):
    triton_tables.TABLES.clear()
    group = random_group((64 * 33, 15), torch.float32, torch.float32, generator)
    strided = tuple([t.view(64, 33)[:, ::2] if t.numel() == 64 * 33 else t for t in tensors] for tensors in group[:4])
    triton_backend.step_(*strided, None, scalars_for("default"))
    assert len(triton_tables.TABLES) == 0


# ---- bad input: the contract's messages, before any memory is touched ----

def _op():
    from adadelta_fused import triton_op  # registers the op (the backend imports it on its first step)

    return torch.ops.adadelta_fused.triton_adadelta_.default


BAD_INPUTS = {
    "unequal_lists": (lambda a: dict(grads=a["grads"][:-1]), ValueError, "grads has 1 tensors but params has 2"),
    "shape": (
        lambda a: dict(square_avgs=a["square_avgs"][:-1] + [torch.rand(3)]),
        ValueError,
        r"square_avgs\[1\] has shape \[3\] but params\[1\] has \[4\]",
    ),
    "int_params": (
        lambda a: dict(params=[t.to(torch.int32) for t in a["params"]]),
        TypeError,
        r"params\[0\] has unsupported dtype Int",
    ),
    "dtype_combo": (
        lambda a: dict(square_avgs=[t.double() for t in a["square_avgs"]]),
        TypeError,
        r"square_avgs\[0\] has dtype Double, unsupported with Float params",
    ),
    "nan_lr": (lambda a: dict(lr=float("nan")), ValueError, "Invalid learning rate: nan"),
    "lr_tensor_2": (lambda a: dict(lr_tensor=torch.ones(2)), ValueError, "Tensor lr must be 1-element"),
    "grad_mode": (lambda a: dict(grad_mode=7), ValueError, "Invalid grad_mode: 7"),
    "master_fp32": (
        lambda a: dict(master_params=[p.clone() for p in a["params"]]),
        TypeError,
        "master_params are for bf16/fp16 params",
    ),
    "grad_scale_dtype": (
        lambda a: dict(grad_scale=torch.tensor(2.0, dtype=torch.float64)),
        ValueError,
        "grad_scale must be float32",
    ),
    "sparse": (
        lambda a: dict(grads=[a["grads"][0].to_sparse()] + a["grads"][1:]),
        RuntimeError,
        "Adadelta does not support sparse gradients",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_before_touching_memory(interpreter, case, generator):
    group = random_group((5, 4), torch.float32, torch.float32, generator)
    before = clone_group(group)
    make, error, message = BAD_INPUTS[case]
    args = op_kwargs(group)
    with pytest.raises(error, match=message):
        _op()(**(args | make(args)))
    assert_groups_equal(group, before)


# ---- the op for torch.library and torch.compile ----

@pytest.fixture
def quiet_mutation_analysis():
    """Without a GPU driver, torch's triton_kernel_wrap cannot lower the kernel to find the tensors it
    writes, logs a warning with a traceback and assumes all are written (the schema says so anyway)."""
    logger = triton_kernel_wrap.log
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


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
    group = random_group((1023, 15), torch.float32, torch.float32, generator)
    torch.library.opcheck(_op(), (), op_kwargs(clone_group(group), **overrides), test_utils=INTERPRETER_OPCHECKS)


def test_opcheck_mixed_precision(interpreter, quiet_mutation_analysis, generator):
    group = random_group((1023, 15), torch.bfloat16, torch.float32, generator, master=True)
    torch.library.opcheck(_op(), (), op_kwargs(clone_group(group)), test_utils=INTERPRETER_OPCHECKS)
    group = random_group((1023,), torch.bfloat16, torch.bfloat16, generator)
    args = op_kwargs(clone_group(group), stochastic_rounding=True, rounding_key=3)
    torch.library.opcheck(_op(), (), args, test_utils=INTERPRETER_OPCHECKS)


@requires_cuda
@pytest.mark.parametrize("grad_layout", ["dense", "column_major"])
def test_opcheck_on_cuda_including_aot_dispatch(monkeypatch, grad_layout, generator):
    """aot_dispatch_dynamic runs the traced graph, staging included where a grad is column-major."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    group = on_device(random_group((1023, 15 * 8), torch.float32, torch.float32, generator), torch.device("cuda"))
    if grad_layout == "column_major":
        for tensors in group[:4]:
            tensors[1] = tensors[1].view(15, 8)
        group[1][1] = group[1][1].reshape(8, 15).t()
    torch.library.opcheck(_op(), (), op_kwargs(clone_group(group), weight_decay=0.1, grad_mode=2))


def _compiled_step(params, grads, square_avgs, acc_deltas, lr):
    _op()(params, grads, square_avgs, acc_deltas, [], 0.0, lr, 0.9, 1e-6, 0.01, False, None, None, 2, False, 0)


def test_compiled_step_runs_in_one_graph(interpreter, quiet_mutation_analysis, generator):
    group = random_group((1023, 4 * 33), torch.float32, torch.float32, generator)
    lr = torch.tensor(0.5)
    expected, actual = clone_group(group), clone_group(group)
    adadelta_step_reference_(*expected[:4], None, StepScalars(lr, 0.9, 1e-6, 0.01, grad_mode=GradMode.ZERO))
    torch._dynamo.reset()
    torch.compile(_compiled_step, fullgraph=True, backend="eager")(*actual[:4], lr)
    assert_groups_equal(actual, expected)
    explanation = torch._dynamo.explain(_compiled_step)(*clone_group(group)[:4], lr)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0
    assert [str(op) for op in explanation.ops_per_graph[0]] == ["adadelta_fused.triton_adadelta_.default"]


class _Traced(Exception):
    """Stops a compile once AOTAutograd has handed over its graph (running it needs a GPU)."""


def test_aot_graph_shows_the_kernel_and_every_buffer(interpreter, quiet_mutation_analysis, generator):
    graphs = []

    def record(graph_module, example_inputs):
        graphs.append(graph_module)
        raise _Traced

    group = random_group((1023, 4 * 33, 0), torch.float32, torch.float32, generator)
    torch._dynamo.reset()
    compiled = torch.compile(_compiled_step, fullgraph=True, backend=aot_autograd(fw_compiler=record))
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed) as raised:
        compiled(*group[:4], torch.tensor(0.5))
    assert isinstance(raised.value.inner_exception, _Traced)
    (graph,) = graphs
    wrapper = torch.ops.higher_order.triton_kernel_wrapper_functional
    launches = [node for node in graph.graph.nodes if node.target is wrapper]
    assert len(launches) == 2, "one traced launch per non-empty tensor"
    for node in launches:
        kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
        # Dynamo carries the launch's num_warps in a one-config Autotuner around the kernel: nothing is tuned.
        assert isinstance(kernel, Autotuner) and [c.num_warps for c in kernel.configs] == [triton_launch.NUM_WARPS]
        assert kernel.fn is interpreter_mode.kernels(False).adadelta_flat_kernel
        assert {"param_ptr", "grad_ptr", "square_avg_ptr", "acc_delta_ptr"} <= set(node.kwargs["tensors_to_clone"])


def test_aot_graph_with_dynamic_shapes_stages_a_strided_grad(interpreter, quiet_mutation_analysis, generator):
    """Traced with symbolic shapes (opcheck's aot_dispatch_dynamic, torch.compile(dynamic=True)), a tensor not
    dense in its param's layout is staged in symbols: copied in before its launch and back after it."""
    graphs = []

    def record(graph_module, example_inputs):
        graphs.append(graph_module)
        raise _Traced

    params, grads, square_avgs, acc_deltas, _ = random_group((1023, 4 * 33), torch.float32, torch.float32, generator)
    for tensors in (params, square_avgs, acc_deltas):
        tensors[1] = tensors[1].view(4, 33)
    grads[1] = grads[1].view(33, 4).t()  # the param's shape, column-major
    torch._dynamo.reset()
    compiled = torch.compile(_compiled_step, fullgraph=True, dynamic=True, backend=aot_autograd(fw_compiler=record))
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed) as raised:
        compiled(params, grads, square_avgs, acc_deltas, torch.tensor(0.5))
    assert isinstance(raised.value.inner_exception, _Traced)
    (graph,) = graphs
    wrapper = torch.ops.higher_order.triton_kernel_wrapper_functional
    launches = [node for node in graph.graph.nodes if node.target is wrapper]
    assert len(launches) == 2
    assert all(isinstance(node.kwargs["kwargs"]["numel"], torch.fx.Node) for node in launches), "numel is symbolic"
    copy_op, empty_op = torch.ops.aten.copy.default, torch.ops.aten.empty_strided.default
    staged = launches[1].kwargs["kwargs"]["grad_ptr"]
    assert staged.target is copy_op, "the strided grad goes in as a dense copy"
    copies_in = [node for node in graph.graph.nodes if node.target is copy_op and node.args[0].target is empty_op]
    assert copies_in == [staged], "and no other tensor is copied"
    copies_back = [node for node in graph.graph.nodes
                   if node.target is copy_op and node.args[1].args == (launches[1], "grad_ptr")]
    assert len(copies_back) == 1, "and the step's zeroed copy goes back into it"


# ---- the optimizer on this backend ----

OPTIMIZER_OPTIONS = {
    "default": (torch.float32, dict(weight_decay=0.01)),
    "flatten": (torch.float32, dict(flatten=True, maximize=True)),
    "bf16_master": (torch.bfloat16, dict(master_weights=True, state_dtype=torch.float32)),
    "bf16_stochastic": (torch.bfloat16, dict(stochastic_rounding=True, seed=11)),
}


@pytest.mark.parametrize("options", OPTIMIZER_OPTIONS)
def test_optimizer_matches_reference_backend(device, options, generator):
    """The Triton optimizer on ``device`` against the reference backend on the CPU (the oracle, see
    conftest.reference_step_on_cpu_), stepped with the same gradients: the model's, copied."""
    dtype, kwargs = OPTIMIZER_OPTIONS[options]
    torch.manual_seed(generator.initial_seed())
    model = torch.nn.Sequential(torch.nn.Linear(37, 19), torch.nn.Tanh(), torch.nn.Linear(19, 3)).to(device, dtype)
    twin = copy.deepcopy(model).cpu()
    ours = adadelta_fused.Adadelta(model.parameters(), lr=0.5, backend="triton", **kwargs)
    reference = adadelta_fused.Adadelta(twin.parameters(), lr=0.5, backend="reference", **kwargs)
    inputs = torch.randn(11, 37, generator=generator).to(device, dtype)
    for _ in range(3):
        ours.zero_grad()
        model(inputs).float().square().mean().backward()
        for param, twin_param in zip(model.parameters(), twin.parameters()):
            twin_param.grad = param.grad.detach().to("cpu", copy=True)  # never ours' (flat) grad itself
        ours.step()
        reference.step()
    for got, want in zip(model.parameters(), twin.parameters()):
        assert torch.equal(got.cpu(), want)
    for got, want in zip(ours.state.values(), reference.state.values()):
        for key in want:
            assert torch.equal(got[key].cpu(), want[key]), key


# ---- the backend module ----

def test_backend_says_why_it_cannot_run_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in triton_backend.unsupported_reason(torch.device("cpu"))
    assert "'meta'" in triton_backend.unsupported_reason(torch.device("meta"))
    assert triton_backend.unsupported_reason(torch.device("cuda")) is None
    if not torch.cuda.is_available():
        assert "no CUDA device and TRITON_INTERPRET is not set" in triton_backend.unavailable_reason()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_backend.unavailable_reason() is None
    assert triton_backend.unsupported_reason(torch.device("cpu")) is None


def test_backend_without_triton_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    triton_backend._import_error.cache_clear()
    try:
        assert triton_backend.unavailable_reason().startswith("triton is not installed")
        assert "TRITON_INTERPRET=1" in triton_backend.unsupported_reason(torch.device("cpu"))
    finally:
        triton_backend._import_error.cache_clear()


def test_importing_the_backend_imports_no_triton():
    code = "import sys, adadelta_fused.backends.triton; print('triton' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# ---- the eager step without torch.ops (_extension.runs_unseen) ----

@pytest.fixture
def op_calls(monkeypatch):
    """The steps that went through torch.ops.adadelta_fused.triton_adadelta_ (each still runs)."""
    calls = []
    op = triton_backend._op()

    def counting(*arguments):
        calls.append(op)
        return op(*arguments)

    monkeypatch.setattr(triton_backend, "_op", lambda: counting)
    return calls


def _versions(group):
    return [t._version for tensors in group if tensors for t in tensors]


@pytest.mark.skipif(adadelta_fused._extension.module() is None, reason="the direct call's checks are native")
def test_an_eager_step_skips_torch_ops_with_the_same_bits_and_versions(interpreter, op_calls, generator):
    group = random_group((1023, 4097), torch.float32, torch.float32, generator)
    twin = clone_group(group)
    scalars = scalars_for("maximize_weight_decay")
    with torch.no_grad():
        triton_backend.step_(*group[:4], None, scalars)
        assert op_calls == []
        torch.ops.adadelta_fused.triton_adadelta_.default(*op_arguments(*twin[:4], None, scalars))
    assert_groups_equal(group, twin)
    assert _versions(group) == _versions(twin) and min(_versions(group)) >= 1


class _Subclass(torch.Tensor):
    pass


def _grad_mode(group):
    return contextlib.nullcontext()  # grad mode on (a functional step called from a training loop's code)


def _function_mode(group):
    class Passing(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    return Passing()


def _dispatch_mode(group):
    class Passing(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    return Passing()


def _profiler(group):
    return torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])


def _subclass(group):
    group[0][0] = group[0][0].as_subclass(_Subclass)
    return contextlib.nullcontext()


@pytest.mark.parametrize("context", [_grad_mode, _function_mode, _dispatch_mode, _profiler, _subclass])
def test_a_step_that_someone_would_see_goes_through_torch_ops(context, interpreter, op_calls, generator):
    group = random_group((1023,), torch.float32, torch.float32, generator)
    expected = clone_group(group)
    adadelta_step_reference_(*expected[:4], None, scalars_for("default"))
    with contextlib.ExitStack() as stack:
        if context is not _grad_mode:
            stack.enter_context(torch.no_grad())  # as in an optimizer's step: only the context differs
        entered = stack.enter_context(context(group))
        triton_backend.step_(*group[:4], None, scalars_for("default"))
    assert len(op_calls) == 1
    assert_groups_equal([[t.as_subclass(torch.Tensor) for t in tensors] for tensors in group[:4]], expected[:4])
    if context is _profiler:
        assert "adadelta_fused::triton_adadelta_" in {event.name for event in entered.events()}


@pytest.mark.skipif(adadelta_fused._extension.module() is None, reason="the direct call's checks are native")
def test_a_default_device_leaves_the_direct_step_alone(interpreter, op_calls, generator):
    """Under ``with torch.device("meta")`` (as under torch.set_default_device) the body's own tensors, such as
    the multi-tensor kernel's tables, are still made where the params are."""
    group = random_group((1023, 4097), torch.float32, torch.float32, generator)
    expected = clone_group(group)
    adadelta_step_reference_(*expected[:4], None, scalars_for("default"))
    with torch.no_grad(), torch.device("meta"):
        triton_backend.step_(*group[:4], None, scalars_for("default"))
    assert op_calls == []
    assert_groups_equal(group[:4], expected[:4])


def test_a_subclass_among_the_scalars_goes_through_torch_ops(interpreter, op_calls, generator):
    group = random_group((1023,), torch.float32, torch.float32, generator)
    with torch.no_grad():
        triton_backend.step_(*group[:4], None, scalars_for("default", lr=torch.tensor(0.8).as_subclass(_Subclass)))
    assert len(op_calls) == 1


def test_a_step_after_a_forward_breaks_its_backward_as_torch_does(interpreter, generator):
    """Version counters: a param saved for backward and then stepped makes that backward raise, with our
    optimizer as with torch.optim.Adadelta."""
    for make in (lambda p: adadelta_fused.Adadelta(p, backend="triton"), torch.optim.Adadelta):
        weight = torch.nn.Parameter(torch.randn(5, 3, generator=generator))
        weight.grad = torch.randn(5, 3, generator=generator)
        loss = weight.square().sum()  # saves weight for its backward
        make([weight]).step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()
