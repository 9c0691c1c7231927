"""What the sweep times: each backend of ours and torch's own optimizers, one step callable per parameter set.

Our backends run through ``adadelta_fused.Adadelta(..., backend=name)``, the path users call; ``NAME-flat``
(e.g. ``cpp-flat``) is the same with ``flatten=True``, one kernel call over contiguous buffers. A state
dtype other than the param's, or master weights, are options the optimizer does not offer yet; such runs go
through ``adadelta_fused.adadelta_``, the functional step the optimizer calls.

torch's optimizers keep their state in the param dtype whatever ``--state-dtype`` says, so their rows are
credited with the bytes of that layout (``Implementation.config_run``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch.optim.adadelta import adadelta as torch_functional_adadelta

from .. import backends
from ..functional import adadelta_
from ..optimizer import Adadelta
from .cases import Case, Mi, ParamSet, format_count
from .traffic import StepConfig

TORCH_FORLOOP = "torch-forloop"
TORCH_FOREACH = "torch-foreach"
TORCH_COMPILE = "torch-compile"
TORCH_FUSED_ADAMW = "torch-fused-adamw"
FLAT_SUFFIX = "-flat"
# The speedup columns: what a user of torch.optim.Adadelta runs today.
BASELINES = (TORCH_FORLOOP, TORCH_FOREACH, TORCH_COMPILE)
# The reference has no flat variant: flatten=True exists for the fused kernels.
FLAT_NAMES = tuple(f"{name}{FLAT_SUFFIX}" for name in backends.BACKEND_NAMES if name != "reference")
IMPLEMENTATION_NAMES = (*backends.BACKEND_NAMES, *FLAT_NAMES, *BASELINES, TORCH_FUSED_ADAMW)

# The reference (and Triton's interpreter on a CPU) is slow by design: on this CPU ~0.5 ms per 64 Ki fp32
# elements (fp64 square roots) plus ~0.05 ms of Python per tensor, so ~0.2 s for a 4096-tensor step before
# any data. Unless named in --backends they run only up to these sizes.
SLOW_MAX_NUMEL = 1 * Mi
SLOW_MAX_TENSORS = 64
# Compiling a 64-tensor step took ~15 s (cold) on this 2-core CPU, and issue 3 measured 90 s for 256 tensors.
COMPILE_MAX_TENSORS = 64

StepFn = Callable[[], object]


@dataclass(frozen=True)
class Implementation:
    name: str
    description: str
    ours: bool
    build: Callable[[Sequence[ParamSet], StepConfig], list[StepFn]]

    def config_run(self, config: StepConfig) -> StepConfig:
        """The configuration this implementation really runs: torch's keep state in the param dtype."""
        return config if self.ours else StepConfig(config.param_dtype)


def _attach(optimizer: torch.optim.Optimizer, params, grads, square_avgs, acc_deltas, steps) -> torch.optim.Optimizer:
    """Gives the optimizer the set's gradients and (random, nonzero) state, as after earlier steps."""
    for param, grad, square_avg, acc_delta, step in zip(params, grads, square_avgs, acc_deltas, steps, strict=True):
        param.grad = grad
        optimizer.state[param] = {"step": step, "square_avg": square_avg, "acc_delta": acc_delta}
    return optimizer


def _torch_state(param_set: ParamSet) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The set's accumulators in the param dtype, the only layout torch.optim.Adadelta keeps (the set's own
    tensors when they already are: ``Tensor.to`` to the same dtype returns its input)."""
    dtype = param_set.params[0].dtype
    return (
        [t.to(dtype) for t in param_set.square_avgs],
        [t.to(dtype) for t in param_set.acc_deltas],
    )


def _ours(backend: str) -> Callable[[Sequence[ParamSet], StepConfig], list[StepFn]]:
    def build(sets: Sequence[ParamSet], config: StepConfig) -> list[StepFn]:
        if config.is_torch_layout:
            return [
                _attach(Adadelta(s.params, backend=backend), s.params, s.grads, s.square_avgs, s.acc_deltas, s.steps).step
                for s in sets
            ]
        return [
            partial(
                adadelta_, s.params, s.grads, s.square_avgs, s.acc_deltas, s.steps,
                master_params=s.master_params, backend=backend,
            )
            for s in sets
        ]

    return build


def _ours_flat(backend: str) -> Callable[[Sequence[ParamSet], StepConfig], list[StepFn]]:
    def build(sets: Sequence[ParamSet], config: StepConfig) -> list[StepFn]:
        if not config.is_torch_layout:
            raise ValueError(f"{backend}{FLAT_SUFFIX} times the param-dtype state layout only, not {config.label()}")
        steps = []
        for s in sets:
            # flatten=True makes each param and grad a view of new buffers, which the other implementations
            # stepping this set must not see: it flattens copies (the flat buffers are new memory anyway,
            # one set's worth per set), given the set's values, so every implementation steps the same numbers.
            params = [param.detach().clone() for param in s.params]
            for param, grad in zip(params, s.grads, strict=True):
                param.grad = grad
            optimizer = Adadelta(params, backend=backend, flatten=True)
            with torch.no_grad():
                for param, square_avg, acc_delta in zip(params, s.square_avgs, s.acc_deltas, strict=True):
                    optimizer.state[param]["square_avg"].copy_(square_avg)
                    optimizer.state[param]["acc_delta"].copy_(acc_delta)
            steps.append(optimizer.step)
        return steps

    return build


def _torch_adadelta(foreach: bool) -> Callable[[Sequence[ParamSet], StepConfig], list[StepFn]]:
    def build(sets: Sequence[ParamSet], config: StepConfig) -> list[StepFn]:
        return [
            _attach(torch.optim.Adadelta(s.params, foreach=foreach), s.params, s.grads, *_torch_state(s), s.steps).step
            for s in sets
        ]

    return build


def _functional_torch_step(params, grads, square_avgs, acc_deltas, steps) -> None:
    # What torch.optim.Adadelta.step traces into, with its defaults.
    torch_functional_adadelta(
        params, grads, square_avgs, acc_deltas, steps,
        lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False, foreach=None,
        capturable=False, differentiable=False, has_complex=False,
    )


def _torch_compiled(sets: Sequence[ParamSet], config: StepConfig) -> list[StepFn]:
    # The functional step is compiled once and called on every set: a compiled ``optimizer.step`` is
    # guarded on its optimizer object and would recompile for each set of the rotation.
    torch._dynamo.reset()  # a case's first call then pays its whole compile time, as a user's does
    compiled = torch.compile(_functional_torch_step, dynamic=False)
    return [partial(compiled, s.params, s.grads, *_torch_state(s), s.steps) for s in sets]


def _torch_fused_adamw(sets: Sequence[ParamSet], config: StepConfig) -> list[StepFn]:
    # AdamW's step moves the same bytes as Adadelta's (reads p, g and two states; writes p and the states),
    # in any dtype torch's fused kernels take (on a CPU: fp32, fp64, bf16 and fp16, state in the param's), and
    # torch's fused kernel for it is tuned: the yardstick of a good single-pass optimizer step. Its state
    # starts at zero and is nonzero from the first warm-up step on.
    optimizers = []
    for s in sets:
        for param, grad in zip(s.params, s.grads, strict=True):
            param.grad = grad
        optimizers.append(torch.optim.AdamW(s.params, fused=True))
    return [optimizer.step for optimizer in optimizers]


_DESCRIPTIONS = {
    "cpp": "adadelta_fused, compiled extension (CPU or CUDA kernel)",
    "triton": "adadelta_fused, Triton kernel",
    "reference": "adadelta_fused, pure-torch reference (slow by design)",
}


def implementation(name: str) -> Implementation:
    if name in FLAT_NAMES:
        backend = name.removesuffix(FLAT_SUFFIX)
        description = f"{_DESCRIPTIONS[backend]}, flatten=True"
        return Implementation(name, description, True, _ours_flat(backend))
    if name in backends.BACKEND_NAMES:
        return Implementation(name, _DESCRIPTIONS.get(name, f"adadelta_fused backend {name!r}"), True, _ours(name))
    return {
        TORCH_FORLOOP: Implementation(TORCH_FORLOOP, "torch.optim.Adadelta(foreach=False)", False, _torch_adadelta(False)),
        TORCH_FOREACH: Implementation(TORCH_FOREACH, "torch.optim.Adadelta(foreach=True)", False, _torch_adadelta(True)),
        TORCH_COMPILE: Implementation(TORCH_COMPILE, "torch.compile of torch's Adadelta step", False, _torch_compiled),
        TORCH_FUSED_ADAMW: Implementation(
            TORCH_FUSED_ADAMW, "torch.optim.AdamW(fused=True), a yardstick", False, _torch_fused_adamw
        ),
    }[name]


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """Why ``name`` cannot run on ``device`` at all, or None."""
    backend = name.removesuffix(FLAT_SUFFIX) if name in FLAT_NAMES else name
    if backend in backends.BACKEND_NAMES:
        try:
            backends.resolve(backend, device)
        except backends.BackendUnavailableError as error:
            return str(error)
        return None
    return None


def _is_slow(name: str, device: torch.device) -> bool:
    return name == "reference" or (name.startswith("triton") and device.type == "cpu")


def case_skip_reason(name: str, case: Case, device: torch.device, *, named: bool, compile_all: bool) -> str | None:
    """Why ``name`` is left out of this case by default, or None. ``named``: the user asked for it."""
    if _is_slow(name, device) and not named and (case.numel > SLOW_MAX_NUMEL or case.tensors > SLOW_MAX_TENSORS):
        return (
            f"slow: runs up to {format_count(SLOW_MAX_NUMEL)} elements and {SLOW_MAX_TENSORS} tensors "
            f"unless named in --backends"
        )
    if name == TORCH_COMPILE and not compile_all and case.tensors > COMPILE_MAX_TENSORS:
        return f"compiling {case.tensors} tensors takes minutes; add --compile-all"
    return None
