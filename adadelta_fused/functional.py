"""``adadelta_``: one fused Adadelta step over tensor lists, grouped by (device, dtype) and dispatched.

A step is planned before it runs: tensors grouped, scalars placed on each group's device, step counters
and (when there is more than one backend call) every call's arguments checked. Only then is anything
written, so an error never leaves a step half applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch

from . import _extension, backends
from . import dtensor
from ._compat import group_by_device_and_dtype
from .contract import GradMode, StepScalars, check_group, check_lr, real_hyperparameter
from .reference import mix32


@dataclass
class BackendCall:
    """One backend call: one (device, dtype) group of tensors with its scalars."""

    module: object
    device: torch.device
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    square_avgs: list[torch.Tensor]
    acc_deltas: list[torch.Tensor]
    master_params: list[torch.Tensor] | None
    scalars: StepScalars
    rows: list[int] | None = None  # each tensor's position in the lists the step was given

    def check(self) -> None:
        try:
            check_group(self.params, self.grads, self.square_avgs, self.acc_deltas, self.master_params,
                        self.scalars, self.device.type)
        except (ValueError, TypeError, RuntimeError) as error:
            raise type(error)(_numbered_as_given(str(error), self.rows)) from None

    def run(self) -> None:
        self.module.step_(self.params, self.grads, self.square_avgs, self.acc_deltas, self.master_params,
                          self.scalars)

    def with_step(self, grads: list[torch.Tensor], scalars: StepScalars) -> BackendCall:
        """This call with another step's grads and scalars (a cached plan's; ``dataclasses.replace`` takes
        1.1 us here, the constructor 0.2)."""
        return BackendCall(self.module, self.device, self.params, grads, self.square_avgs, self.acc_deltas,
                           self.master_params, scalars, self.rows)


@dataclass
class StepPlan:
    """The backend calls of one step, then the step counters to advance."""

    calls: list[BackendCall]
    state_steps: list[torch.Tensor] | None
    step_counters: torch.Tensor | None  # a vector of counters (a flat buffer's), advanced with one op
    steps_on_cpu: bool  # every counter is a CPU tensor: one C++ loop advances them all
    found_inf: torch.Tensor | None
    # Gradients with torch's lazy negation bit (``z.conj().imag``) are stepped through resolved copies,
    # since an op cannot write through the bit; (the user's grad, the copy) to write back after the step.
    write_back: list[tuple[torch.Tensor, torch.Tensor]]

    def check(self) -> None:
        for call in self.calls:
            call.check()

    def run(self) -> None:
        for call in self.calls:
            call.run()
        for grad, resolved in self.write_back:
            grad.copy_(resolved)
        if self.state_steps:
            _advance_steps(self.state_steps, self.found_inf, self.steps_on_cpu)
        if self.step_counters is not None:
            _advance_counters(self.step_counters, self.found_inf)


def _advance_steps(state_steps: list[torch.Tensor], found_inf: torch.Tensor | None, on_cpu: bool = False) -> None:
    """``step += 1 - found_inf``: a skipped step leaves the counters alone, with no sync on the device.

    CPU counters with a device ``found_inf`` (GradScaler on a GPU, ``capturable=False``) read it with one
    blocking copy per step, a host sync; ``capturable=True`` keeps the counters on the device instead.
    """
    steps_op = _extension.steps_op()
    by_device = {state_steps[0].device: state_steps} if on_cpu else _by_device(state_steps)
    for device, steps in by_device.items():
        if device.type == "cpu" and steps_op is not None:
            # A device found_inf is copied to the host with a blocking copy: the counters are read on the
            # host at once, before a non_blocking copy would have landed.
            host_found_inf = None if found_inf is None else found_inf.to("cpu")
            if not _extension.call_unboxed("advance_steps", steps, host_found_inf):
                steps_op(steps, host_found_inf)
        elif found_inf is None:
            # A CPU scalar tensor as the operand keeps CPU steps on foreach's fast path (as torch does).
            one = torch.tensor(1.0, device=device) if device.type == "cpu" else 1
            torch._foreach_add_(steps, one)
        else:
            increment = (1 - found_inf).to(device, non_blocking=device.type != "cpu")
            torch._foreach_add_(steps, increment)


def _advance_counters(counters: torch.Tensor, found_inf: torch.Tensor | None) -> None:
    """``_advance_steps`` for a vector of counters: one op whatever their number."""
    if found_inf is None:
        counters.add_(1)
    elif counters.device.type == "cpu":
        counters.add_(1 - found_inf.to("cpu"))  # blocking: read on the host now, as _advance_steps does
    else:
        counters.add_(1 - found_inf.to(counters.device, non_blocking=True))


def _by_device(tensors: list[torch.Tensor]) -> dict[torch.device, list[torch.Tensor]]:
    grouped: dict[torch.device, list[torch.Tensor]] = {}
    for tensor in tensors:
        grouped.setdefault(tensor.device, []).append(tensor)
    return grouped


# A complex dtype's real dtype, as a constant Dynamo reads (it cannot trace torch.dtype.to_real: a graph break)
_REAL_OF = {torch.complex32: torch.float16, torch.complex64: torch.float32, torch.complex128: torch.float64}


def _as_real(lists: list[list[torch.Tensor]], grads_written: bool) -> tuple[list[list[torch.Tensor]], list]:
    """Adadelta treats a complex number as two real ones (as torch does with view_as_real): ``lists`` (params,
    grads, square_avgs, acc_deltas) as real tensors, and the (tensor, copy) pairs to write back after the step.

    A step that torch.compile traces views each tensor as the real dtype instead (``t.view(torch.float32)``: the
    last dim doubled, the same memory in the same order): Inductor's auto_functionalized_v2 rebuilds a
    view_as_real view from its complex base without the dtype change, and the op's fake kernel then saw complex
    tensors (torch 2.14.1: the compile failed). Such a view needs a unit last stride: a tensor that is not
    contiguous is stepped as a contiguous copy, written back where the step writes it; a 0-d one as its
    1-element view."""
    if not torch.compiler.is_compiling():
        return [[torch.view_as_real(t) for t in tensors] for tensors in lists], []
    real, write_back = [], []
    for column, tensors in enumerate(lists):
        written = column != 1 or grads_written
        viewed = []
        for t in tensors:
            t = t.reshape(1) if t.dim() == 0 else t
            if not t.is_contiguous():
                copy = t.contiguous()
                if written:
                    write_back.append((t, copy))
                t = copy
            viewed.append(t.view(_REAL_OF[t.dtype]))
        real.append(viewed)
    return real, write_back


def _on_device(value: torch.Tensor | None, device: torch.device, copies: dict) -> torch.Tensor | None:
    """GradScaler's scalars (and a tensor lr) live on one GPU; params on another get a copy, made once per
    device (as torch's fused optimizers do). Any other placement is left for the validator to refuse by
    name (a CPU lr is read on the host by the kernels)."""
    if value is None or value.device == device or value.device.type != "cuda" or device.type != "cuda":
        return value
    key = (id(value), device)
    if key not in copies:
        copies[key] = value.to(device, non_blocking=True)
    return copies[key]


def place_scalars(scalars: StepScalars, device: torch.device, copies: dict) -> StepScalars:
    """The step's scalars for one call on ``device`` (``copies``: the tensors already copied this step):
    ``scalars`` itself where nothing moves, as on every CPU step (a copy costs 2.4 us here)."""
    lr = _on_device(scalars.lr, device, copies) if isinstance(scalars.lr, torch.Tensor) else scalars.lr
    grad_scale = _on_device(scalars.grad_scale, device, copies)
    found_inf = _on_device(scalars.found_inf, device, copies)
    keyed = scalars.stochastic_rounding and device.index
    if lr is scalars.lr and grad_scale is scalars.grad_scale and found_inf is scalars.found_inf and not keyed:
        return scalars
    placed = replace(scalars, lr=lr, grad_scale=grad_scale, found_inf=found_inf)
    if keyed:
        # Every call numbers its tensors from 0: the same key on two GPUs would draw the same noise.
        placed = replace(placed, rounding_key=mix32(scalars.rounding_key ^ mix32(device.index)))
    return placed


def _grouped(lists, scalars: StepScalars) -> dict:
    """torch's grouping by (device, dtype) (_compat: by the param's, on torch 2.11); where it refuses the
    lists (a grad on another device than its param, say), the op's validator names the tensor instead of
    torch's generic message."""
    try:
        return group_by_device_and_dtype(lists)
    except RuntimeError:
        check_group(*lists[:4], lists[4] if len(lists) > 4 else None, scalars, lists[0][0].device.type)
        raise


def _check_lengths(params, grads, square_avgs, acc_deltas, master_params) -> None:
    n = len(params)
    if all(len(tensors) == n for tensors in (grads, square_avgs, acc_deltas, master_params or params)):
        return
    # The op's validator checks the lengths first, so it raises here with the op's own message.
    scalars = StepScalars(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0)
    check_group(params, grads, square_avgs, acc_deltas, master_params, scalars, "cpu")
    raise ValueError("params, grads, square_avgs, acc_deltas and master_params must have equal lengths")


def check_steps(state_steps: list[torch.Tensor] | None) -> bool:
    """Check the step counters before anything is written; returns whether all are CPU tensors."""
    if not state_steps or torch.compiler.is_compiling():
        return False  # (under torch.compile the ops' fake kernels check the same, without a graph break)
    return bool(_extension.check_state_steps(state_steps))


def plan(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    square_avgs: list[torch.Tensor],
    acc_deltas: list[torch.Tensor],
    state_steps: list[torch.Tensor] | None,
    scalars: StepScalars,
    master_params: list[torch.Tensor] | None = None,
    backend: str | None = None,
    step_counters: torch.Tensor | None = None,
) -> StepPlan:
    """Group, place and check one step without writing anything (``StepPlan.check`` checks the calls).

    ``step_counters``: a vector of counters advanced with the step, besides (or instead of) ``state_steps``.
    """
    _check_lengths(params, grads, square_avgs, acc_deltas, master_params)
    # The params decide (a DTensor grad of a plain param reaches the op, whose DTensor dispatch refuses it).
    if dtensor.any_dtensor(params):
        params, grads, square_avgs, acc_deltas, master_params = dtensor.to_local(
            params, grads, square_avgs, acc_deltas, master_params)
    steps_on_cpu = check_steps(state_steps)
    grads, write_back = resolve_negated(grads, scalars)
    if scalars.grad_mode == GradMode.KEEP and torch.compiler.is_compiling():
        grads = [_with_own_memory(grad) for grad in grads]
    calls = []
    if params:
        lists = [params, grads, square_avgs, acc_deltas] + ([master_params] if master_params else [])
        copies: dict = {}
        for (device, dtype), (group, rows) in _grouped(lists, scalars).items():
            group_params, group_grads, group_sq, group_acc = group[:4]
            if dtype.is_complex:
                (group_params, group_grads, group_sq, group_acc), copies_back = _as_real(
                    group[:4], scalars.grad_mode != GradMode.KEEP)
                write_back = copies_back + write_back  # (a copy of a resolved grad goes back into it first)
            calls.append(BackendCall(
                backends.resolve(backend, device), device, group_params, group_grads, group_sq, group_acc,
                group[4] if master_params else None, place_scalars(scalars, device, copies), rows,
            ))
    return StepPlan(calls, state_steps, step_counters, steps_on_cpu, scalars.found_inf, write_back)


def resolve_negated(grads: list[torch.Tensor], scalars: StepScalars) -> tuple[list[torch.Tensor], list]:
    """(``grads`` with torch's lazy negation bit resolved into copies, the (grad, copy) pairs to write back
    after a step that writes the grads). An op cannot take a tensor with the bit in a mutable list."""
    # Under torch.compile every grad goes through resolve_neg: a traced is_neg() would break the graph, and
    # resolve_neg of a grad without the bit is the grad itself, so it costs nothing there.
    if not (torch.compiler.is_compiling() or any(grad.is_neg() for grad in grads)):
        return grads, []
    resolved = [grad.resolve_neg() for grad in grads]
    if scalars.grad_mode == GradMode.KEEP:
        return resolved, []
    return resolved, [(grad, copy) for grad, copy in zip(grads, resolved) if copy is not grad]


def _with_own_memory(grad: torch.Tensor) -> torch.Tensor:
    """A grad that may be expanded (a stride 0 over more than one element) as a contiguous copy, in a step
    that torch.compile traces and that keeps its grads. The op's schema declares grads mutable (the "unscale"
    and "zero" modes write them), and aot_autograd refuses to write an expanded tensor back even where the
    step only reads it (torch 2.14.1: "more than one element of the written-to tensor refers to a single
    memory location"); torch.optim.Adadelta compiles it. Eager steps read the grad in place.

    Which grads are expanded is not asked of their strides: once a recompile has made shapes dynamic, Dynamo
    (torch 2.14.1) fails on ``stride()`` of some grads (views of a larger buffer, transposed complex grads:
    "Cannot construct `ConstantVariable` for value of type SymInt"). A grad contiguous in a standard layout
    (autograd's, a param's channels_last) is read in place; any other, rare, is copied."""
    if (grad.is_contiguous() or grad.is_contiguous(memory_format=torch.channels_last)
            or grad.is_contiguous(memory_format=torch.channels_last_3d)):
        return grad
    return grad.contiguous()


def replan(template: StepPlan, scalars: StepScalars, step_counters: torch.Tensor | None) -> StepPlan:
    """``template``, a plan of the same tensors without write-backs, for another step's scalars and counters.
    A flat buffer's plan is the same every step but for these, and ``plan`` takes 10 us a step here."""
    copies: dict = {}
    calls = [call.with_step(call.grads, place_scalars(scalars, call.device, copies)) for call in template.calls]
    return StepPlan(calls, template.state_steps, step_counters, template.steps_on_cpu, scalars.found_inf, [])


def adadelta_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    square_avgs: list[torch.Tensor],
    acc_deltas: list[torch.Tensor],
    state_steps: list[torch.Tensor] | None = None,
    *,
    lr: float | torch.Tensor = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    maximize: bool = False,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
    grad_mode: str | GradMode = "keep",
    master_params: list[torch.Tensor] | None = None,
    stochastic_rounding: bool = False,
    rounding_key: int = 0,
    backend: str | None = None,
) -> None:
    """One Adadelta step, in place, over lists of tensors (the contract in ``adadelta_fused.reference``).

    Tensors are grouped by (device, dtype); each group goes to one backend call. ``state_steps``, when
    given, are advanced by one unless ``found_inf`` is set. Everything is checked before anything is
    written.
    """
    # Sequences of any kind, as lists: the native calls take lists
    params, grads, square_avgs, acc_deltas = list(params), list(grads), list(square_avgs), list(acc_deltas)
    master_params = list(master_params) if master_params is not None else None
    state_steps = list(state_steps) if state_steps is not None else None
    if state_steps is not None and len(state_steps) != len(params):
        raise ValueError(f"state_steps has {len(state_steps)} tensors but params has {len(params)}")
    scalars = step_scalars(lr, rho, eps, weight_decay, maximize, grad_scale, found_inf, grad_mode,
                           stochastic_rounding, rounding_key)
    try:
        step = plan(params, grads, square_avgs, acc_deltas, state_steps, scalars, master_params or None, backend)
    except (AttributeError, TypeError):
        # (named only here: a loop over every item cost each step 0.5-0.6 us a param, 4096 params of 5 lists)
        lists = {"params": params, "grads": grads, "square_avgs": square_avgs, "acc_deltas": acc_deltas,
                 "master_params": master_params or [], "state_steps": state_steps or []}
        for name, tensors in lists.items():
            for index, t in enumerate(tensors):
                if not isinstance(t, torch.Tensor):
                    raise TypeError(f"{name}[{index}] is {type(t).__name__}, not a tensor") from None
        raise
    if len(step.calls) > 1 and not torch.compiler.is_compiling():
        step.check()  # each call checks its own group; a later group's error must come before any write
    step.run()


def _numbered_as_given(message: str, rows: list[int] | None) -> str:
    """The validator's message with each ``name[k]`` (k: a row of the call's (device, dtype) group)
    renumbered to the row's position in the lists the step was given."""

    def renumber(match: re.Match) -> str:
        k = int(match[2])
        return f"{match[1]}[{rows[k] if rows and k < len(rows) else k}]"

    return re.sub(r"\b(params|grads|square_avgs|acc_deltas|master_params)\[(\d+)\]", renumber, message)


def step_scalars(lr, rho, eps, weight_decay, maximize, grad_scale, found_inf, grad_mode, stochastic_rounding,
                 rounding_key) -> StepScalars:
    return StepScalars(
        lr=check_lr(lr),
        rho=real_hyperparameter("rho", rho),
        eps=real_hyperparameter("eps", eps),
        weight_decay=real_hyperparameter("weight_decay", weight_decay),
        maximize=bool(maximize),
        grad_scale=grad_scale,
        found_inf=found_inf,
        grad_mode=GradMode.parse(grad_mode),
        stochastic_rounding=bool(stochastic_rounding),
        rounding_key=int(rounding_key) & 0xFFFFFFFF,
    )
