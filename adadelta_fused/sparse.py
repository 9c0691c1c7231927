"""Sparse gradients in ``Adadelta``: lazy-exact steps over the rows a sparse COO gradient touches.

``nn.Embedding(sparse=True)`` and ``nn.EmbeddingBag(sparse=True)`` give their weight a gradient whose sparse
dimension is the first (the rows). Such a param is stepped by ``adadelta_fused::sparse_adadelta_`` (the
contract: ``adadelta_fused.sparse_reference``): the touched rows catch up on the decays they missed, then
take the dense update, in one pass; untouched rows are neither read nor written. The result equals dense
Adadelta on the densified gradient: bit for bit for rows idle at most 64 steps, within rounding beyond.

State: besides torch's ``step``, ``square_avg`` and ``acc_delta``, a sparse-stepped param keeps
``row_step`` (int64, one per row: the step its accumulators are current at), ``row_rho`` (the rho they
decay with) and ``row_clock`` (the param's step as a host int, which the records count in: torch's fp32
``step`` stops counting at 2**24). ``state_dict()`` first brings every row up to date and drops the three
(``settle_all``), so what it saves is dense Adadelta's state, which ``torch.optim.Adadelta`` loads as well; a
state without them (loaded, or after dense steps) means every row is current. A dense gradient after sparse
ones, and a change of the group's rho, settle the param first, so both stay exact.

Duplicate indices (an uncoalesced gradient) are summed as ``to_dense()`` sums them, bit for bit for fp32 and
fp64 on the CPU; in bf16/fp16 within the last bit (``rows_and_values``).

Refused with a sparse gradient, each with an error that names the option (none can be exact, or support
would be a project of its own): ``weight_decay != 0`` (it moves every row every step), ``capturable=True``
(the step number is read on the host), ``differentiable=True``, ``zero_grad_in_step=True`` (a sparse
gradient cannot be zeroed in place), ``master_weights`` and ``stochastic_rounding`` for bf16/fp16 params,
``flatten=True`` (flat buffers hold dense gradients), complex params, and a gradient sparse in more than its
first dimension. GradScaler is supported: its ``grad_scale`` divides the gradient in the kernel (and the
gradient's values are unscaled in place, as the dense step's "unscale" mode does), and a nonzero
``found_inf`` skips the step without a host sync in the kernel.

Non-finite state: a dense step spreads an inf ``acc_delta`` into a NaN param at the next step (``inf * 0``);
a lazy step leaves an untouched row alone until its gradient comes. Finite state gives identical results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import backends
from .contract import STATE_DTYPES, StepScalars, param_label
from .functional import _advance_steps
from .sparse_ops import check_sparse_args
from .sparse_reference import sparse_adadelta_reference_

ROW_STEP = "row_step"
ROW_RHO = "row_rho"
ROW_CLOCK = "row_clock"  # the step the row records count in: torch's fp32 "step" stops counting at 2**24


def defer(optimizer, group: dict[str, Any], p: torch.Tensor) -> None:
    """Called by ``Adadelta._init_group`` for a param whose grad is sparse: queue it for ``plan_deferred``."""
    if group["differentiable"]:
        raise RuntimeError(
            "differentiable=True runs torch's Adadelta, which does not support sparse gradients; "
            "use differentiable=False"
        )
    optimizer.__dict__.setdefault("_sparse_deferred", []).append((id(group), p))


def plan_deferred(optimizer, index: int, group: dict[str, Any], scalars: StepScalars) -> list[SparsePlan]:
    """The plans of the params ``defer`` queued while ``_init_group`` gathered ``group`` (group ``index``).
    The queue is emptied: what an interrupted gather left there is dropped, never stepped twice."""
    deferred = optimizer.__dict__.pop("_sparse_deferred", None)
    params = list(dict.fromkeys(p for key, p in deferred or () if key == id(group)))
    if not params:
        return []
    calls = [_plan_param(optimizer, index, group, p, scalars) for p in params]
    return [SparsePlan(calls, scalars.found_inf)]


@dataclass
class SparseCall:
    """One sparse param's step: the op's arguments and the executor that runs them."""

    run_op: Any
    grad: torch.Tensor  # the param's gradient; its values are unscaled in place after a GradScaler step
    args: tuple
    state_step: torch.Tensor
    scalars: StepScalars  # the step's (read by step_in_backward as it reads a BackendCall's)
    state: dict[str, Any]  # the param's: its row clock advances with the step

    def check(self) -> None:
        check_sparse_args(*self.args, self.args[0].device.type)

    def run(self) -> None:
        self.run_op(*self.args)


@dataclass
class SparsePlan:
    """The sparse calls of one param group's step, then their step counters (``StepPlan``'s interface)."""

    calls: list[SparseCall]
    found_inf: torch.Tensor | None

    def check(self) -> None:
        for call in self.calls:
            call.check()

    def run(self) -> None:
        for call in self.calls:
            call.run()
            grad_scale = call.args[11]
            if grad_scale is not None:
                # The dense step's "unscale" mode leaves grad / grad_scale in the grad, except on a skipped step.
                scale = grad_scale if self.found_inf is None else torch.where(self.found_inf != 0, 1.0, grad_scale)
                call.grad._values().div_(scale.to(call.grad.device))
        # The row clocks are host ints (the op takes the step on the host): found_inf is read on the host, with
        # one blocking copy from a device, the one _advance_steps made for the CPU step counters before.
        if self.found_inf is not None and bool(self.found_inf.to("cpu") != 0):
            return
        steps = [call.state_step for call in self.calls]
        _advance_steps(steps, None, on_cpu=all(step.is_cpu for step in steps))
        for call in self.calls:
            call.state[ROW_CLOCK] += 1


def _refuse(index: int, group: dict[str, Any], p: torch.Tensor, what: str) -> RuntimeError:
    position = next(i for i, q in enumerate(group["params"]) if q is p)
    return RuntimeError(f"{param_label(position, index)} has a sparse gradient: {what}")


def _check_supported(optimizer, index: int, group: dict[str, Any], p: torch.Tensor, grad: torch.Tensor) -> None:
    options = optimizer.defaults
    if group["weight_decay"] != 0:
        raise _refuse(index, group, p, (
            f"weight_decay={group['weight_decay']} moves every row every step, which a sparse step cannot do "
            "exactly; use weight_decay=0 for this param's group (or a dense gradient)"))
    if group["capturable"]:
        raise _refuse(index, group, p, "capturable=True is not supported (the step number is read on the host)")
    if optimizer._state_dtype_for(p) == torch.uint8:
        raise _refuse(index, group, p, (
            "state_dtype=torch.uint8 is not supported with sparse gradients (a row's 8-bit blocks would be "
            "re-encoded with rows it does not touch); use state_dtype=None, torch.float32 or torch.bfloat16"))
    if options["zero_grad_in_step"]:
        raise _refuse(index, group, p, (
            "zero_grad_in_step=True cannot zero a sparse gradient in place; use zero_grad_in_step=False and "
            "optimizer.zero_grad()"))
    if optimizer._wants_master(p):
        raise _refuse(index, group, p, f"master_weights=True is not supported for sparse-stepped {p.dtype} params")
    if options["stochastic_rounding"] and p.dtype == torch.bfloat16:
        raise _refuse(index, group, p, "stochastic_rounding=True is not supported for sparse-stepped bf16 params")
    if torch.is_complex(p):
        raise _refuse(index, group, p, f"complex params ({p.dtype}) are not supported with sparse gradients")
    if not p.is_contiguous():
        raise _refuse(index, group, p, (
            "the param must be contiguous (the sparse step addresses rows by row * row width); make it "
            "contiguous, e.g. nn.Parameter(weight.contiguous()), before building the optimizer"))
    if grad.layout != torch.sparse_coo or grad.sparse_dim() != 1:
        detail = f"sparse_dim={grad.sparse_dim()}" if grad.layout == torch.sparse_coo else f"layout {grad.layout}"
        raise _refuse(index, group, p, (
            f"only COO gradients sparse in their first dimension (rows) are supported, got {detail}"))


def _row_state(optimizer, group: dict[str, Any], p: torch.Tensor) -> dict[str, Any]:
    """The param's state with its row records, made (every row current) or settled as needed."""
    state = optimizer.state[p]
    if not state:
        state.update(optimizer._init_state(p, group))
    elif state["square_avg"].dtype != optimizer._state_dtype_for(p, state["square_avg"].dtype):
        settle(optimizer, p, state)  # the pending decays, in the dtype they were made in
        optimizer._follow_param_dtype(p, state, group)
    if ROW_STEP in state and state[ROW_RHO] != group["rho"]:
        settle(optimizer, p, state)  # the missed decays were made with the old rho
    if ROW_STEP not in state:
        state[ROW_STEP] = torch.full((p.shape[0],), int(state["step"]), dtype=torch.int64, device=p.device)
        state[ROW_RHO] = group["rho"]
        state[ROW_CLOCK] = int(state["step"])
    state.setdefault(ROW_CLOCK, int(state["step"]))  # (records copied from before the clock)
    return state


def _plan_param(optimizer, index: int, group: dict[str, Any], p: torch.Tensor, scalars: StepScalars) -> SparseCall:
    grad = p.grad
    _check_supported(optimizer, index, group, p, grad)
    state = _row_state(optimizer, group, p)
    rows, values = rows_and_values(grad)
    lr = scalars.lr
    lr_tensor = lr if isinstance(lr, torch.Tensor) else None
    args = (
        p.detach(), state["square_avg"], state["acc_delta"], state[ROW_STEP], rows, values,
        0.0 if lr_tensor is not None else float(lr), lr_tensor, group["rho"], group["eps"], group["maximize"],
        scalars.grad_scale, scalars.found_inf, state[ROW_CLOCK] + 1,
    )
    return SparseCall(_executor(optimizer.defaults["backend"], p.device), grad, args, state["step"], scalars, state)


def rows_and_values(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of a sparse gradient, increasing, and their summed values: on the CPU bit for bit the
    rows of ``grad.to_dense()``, the densified gradient dense Adadelta would see.

    torch's own sums differ by dtype. fp32 and fp64: ``to_dense()`` adds duplicates into zeros in the order they
    come, as ``index_add_`` does; ``coalesce()`` sorts first and may add them in another order (a row with 4
    duplicates differed in the last bit, tests/test_sparse.py). bf16 and fp16: neither is ``to_dense()``'s
    order in general (``index_add_``, rounding after each add, differed in 185 of 200 random 5-row cases,
    ``coalesce()`` in none of those but in longer ones): ``coalesce()`` is used, and a row with duplicates may
    differ from the densified gradient in the last bit, as torch's two sums differ from each other.
    On a GPU the sums use atomics: their order, and so their last bits, may change from run to run, as for
    torch's dense embedding gradient.
    """
    if grad.is_coalesced() or grad.dtype in (torch.bfloat16, torch.float16):
        grad = grad.coalesce()
        return grad._indices()[0].contiguous(), grad._values().contiguous()
    rows, inverse = torch.unique(grad._indices()[0], sorted=True, return_inverse=True)
    values = grad._values()
    summed = values.new_zeros((rows.numel(), *values.shape[1:])).index_add_(0, inverse, values)
    return rows, summed


def settle(optimizer, p: torch.Tensor, state: dict[str, Any]) -> None:
    """Bring every row of ``p`` up to ``state["step"]`` (its pending decays) and drop the row records."""
    row_step = state.pop(ROW_STEP, None)
    rho = state.pop(ROW_RHO, None)
    clock = state.pop(ROW_CLOCK, None)
    if row_step is None:
        return
    rows = torch.arange(p.shape[0], dtype=torch.int64, device=p.device)
    param = p.detach()
    if state["square_avg"].dtype not in STATE_DTYPES.get(p.dtype, ()):
        # model.to(dtype) since the records were made: a catch-up does not read the param, so a stand-in of the
        # state's dtype keeps the pair a supported one (and the decays in the precision they were made in)
        param = torch.empty_like(state["square_avg"])
    with torch.no_grad():
        _executor(optimizer.defaults["backend"], p.device)(
            param, state["square_avg"], state["acc_delta"], row_step, rows, None, 0.0, None, rho, 0.0, False,
            None, None, int(state["step"]) if clock is None else clock,
        )


def settle_all(optimizer) -> None:
    """``settle`` every sparse-stepped param (``Adadelta.state_dict`` and a dense step after sparse ones)."""
    for p, state in optimizer.state.items():
        if ROW_STEP in state:
            settle(optimizer, p, state)


def _reference_op(param, square_avg, acc_delta, row_step, rows, values, lr, lr_tensor, rho, eps, maximize,
                  grad_scale, found_inf, step) -> None:
    check_sparse_args(param, square_avg, acc_delta, row_step, rows, values, lr, lr_tensor, rho, eps, maximize,
                      grad_scale, found_inf, step, param.device.type)
    scalars = StepScalars(lr=lr if lr_tensor is None else lr_tensor, rho=rho, eps=eps, weight_decay=0.0,
                          maximize=maximize, grad_scale=grad_scale, found_inf=found_inf)
    sparse_adadelta_reference_(param, square_avg, acc_delta, row_step, rows, values, scalars, step)


def _executor(backend: str, device: torch.device):
    """The sparse op of the backend that runs this device's dense steps (the same choice, same errors)."""
    name = backends.resolve(backend, device).NAME
    if name == "cpp":
        return torch.ops.adadelta_fused.sparse_adadelta_.default
    if name == "triton":
        from . import sparse_triton

        return sparse_triton.triton_sparse_adadelta_
    return _reference_op
