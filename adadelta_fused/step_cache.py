"""The per-tensor step's cache: a param group's planned backend calls, kept from one step to the next.

Planning a step of a group finds each param's grad and state (``Adadelta._init_group``: 2.4 us a param,
mostly the Python hash of ``self.state[p]``) and groups the tensors by device and dtype (0.65 us a param),
every step, for the same answer. The cache keeps the calls that planning made (each call's params and
state tensors) and checks, each step, that they still describe the group:

- the group is the same dict with the same params, and a param without a grad at build still has none
  (a param that gains a grad rebuilds); the requested backend (``ADADELTA_FUSED_BACKEND`` included) is the
  one the calls were planned for;
- ``opt.state`` is the same mapping, not mutated since (``StateMap`` counts its writes: ``opt.state[p] = {}``,
  ``del``, ``clear``, a loaded state dict);
- per param, in one native pass (``_C.cached_grads``, about 60 ns a param): it has a dense grad without the
  negation bit, its dtype and device are the cached ones (``model.to`` rebuilds, and the state follows the
  param as torch's does), and its state dict holds the cached ``step``, ``square_avg``, ``acc_delta`` and
  ``master_param`` (``opt.state[p]["step"] = t`` rebuilds), each still of the dtype (and a CPU counter
  still on the CPU) the plan was made for (a ``.data =`` cast rebuilds, as state-offload tools make);
- with 8-bit state, also its two scale vectors, and codes laid out as the param is walked (its shape, and
  its strides in every dim of more than one element): the codes' blocks are runs of the param's layout,
  which planning re-encodes when it changes (``quantized.relayout``). A group with an 8-bit param that is
  not dense (a view with gaps, whose codes follow its contiguous copy) is planned every step.

Anything else (a param that loses its grad, ``set_to_none`` included) falls back to planning, which
builds a new cache. Only the common case is cached: eager steps of plain tensors (no DTensor, no complex
params, whose steps go through views made each step), without ``step_in_backward``, whose hooks plan one
param at a time.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from dataclasses import dataclass, replace

import torch

from . import _extension
from .functional import BackendCall, StepPlan, place_scalars
from .layout import is_dense
from .quantized import QuantizedCall, codes_laid_out

_STATE_KEYS = ("step", "square_avg", "acc_delta", "master_param")
_QUANTIZED_STATE_KEYS = (*_STATE_KEYS, "square_avg_scale", "acc_delta_scale")


class CountedWrites:
    """A dict mixin that calls ``self._wrote()`` before every write through the dict's methods (reads stay
    the plain dict's). Writes that bypass them (``dict.__setitem__(d, k, v)``) are not seen."""

    def _wrote(self) -> None:
        raise NotImplementedError

    def __setitem__(self, key, value):
        self._wrote()
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self._wrote()
        super().__delitem__(key)

    def __ior__(self, other):
        self._wrote()
        return super().__ior__(other)

    def clear(self):
        self._wrote()
        super().clear()

    def pop(self, *args):
        self._wrote()
        return super().pop(*args)

    def popitem(self):
        self._wrote()
        return super().popitem()

    def setdefault(self, key, default=None):
        self._wrote()
        return super().setdefault(key, default)

    def update(self, *args, **kwargs):
        self._wrote()
        super().update(*args, **kwargs)


class StateMap(CountedWrites, defaultdict):
    """``Optimizer.state`` that counts its own writes, so a cache can tell it was changed. Reads are the
    plain dict's; a param's own state dict is checked entry by entry instead (``_C.cached_grads``)."""

    writes = 0

    def _wrote(self) -> None:
        self.writes += 1

    def __reduce__(self):
        # Pickled (torch.save(opt), deepcopy) as torch's defaultdict: a pickle names no class of ours, so
        # it loads where this module does not exist (a version before it); __setstate__ wraps it again.
        return defaultdict, (self.default_factory,), None, None, iter(self.items())


@dataclass
class _CachedCall:
    template: BackendCall | QuantizedCall  # grads and scalars are replaced each step
    states: list[dict]  # each param's state dict
    keys: tuple[str, ...]  # the state keys the call reads
    held: list  # per param, the objects its state dict held under ``keys`` (None: absent)
    like: torch.Tensor  # an empty tensor of the params' dtype and device
    state_like: torch.Tensor  # the same, of the accumulators' dtype
    quantized: bool  # 8-bit state: each param's codes must stay laid out as it is walked


def same_objects(params, cached: list) -> bool:
    """Whether ``params`` (a group's, of ``cached``'s length) holds ``cached``'s objects in order: natively for
    the list torch.optim keeps (15 ns a param in Python)."""
    ext = _extension.module()
    if type(params) is list and ext is not None:
        if torch.compiler.is_compiling():
            return _extension.untraced("same_objects")(params, cached)  # (Python's loop: one graph more)
        return ext.same_objects(params, cached)
    return all(map(operator.is_, params, cached))


@dataclass
class GroupCache:
    """One param group's planned calls, valid while ``plans`` finds them unchanged."""

    group: dict
    params: list[torch.Tensor]  # group["params"] at build
    idle: list[torch.Tensor]  # params that had no grad at build
    state: StateMap
    writes: int
    calls: list[_CachedCall]
    state_steps: list[torch.Tensor]
    steps_on_cpu: bool
    backend: str  # backends.requested_backend at build
    capturable: bool  # group["capturable"] at build (planning checks the devices: Adadelta._check_capturable)

    @classmethod
    def build(cls, group: dict, state, plans: list[StepPlan], backend: str) -> GroupCache | None:
        """The cache of a group just planned into ``plans`` for the requested ``backend``, or None where it
        cannot be cached."""
        params = list(group["params"])
        if (
            _extension.module() is None  # the per-step check is native (cached_grads, same_objects)
            or not isinstance(state, StateMap)
            or any(plan.write_back for plan in plans)
            or any(type(p) not in (torch.Tensor, torch.nn.Parameter) or p.is_complex() for p in params)
        ):
            return None  # complex params step through views made each step, DTensors through their shards
        calls, steps, stepped = [], [], set()
        for plan in plans:
            for call in plan.calls:
                states = [state.get(p) for p in call.params]
                if any(s is None for s in states):
                    return None
                quantized = isinstance(call, QuantizedCall)
                if quantized and not all(
                    (p.numel() == 0 or is_dense(p)) and codes_laid_out(p, s) for p, s in zip(call.params, states)
                ):
                    return None
                keys = _QUANTIZED_STATE_KEYS if quantized else _STATE_KEYS
                held = [s.get(key) for s in states for key in keys]
                like = torch.empty(0, dtype=call.params[0].dtype, device=call.params[0].device)
                state_like = torch.empty(0, dtype=call.square_avgs[0].dtype, device=call.params[0].device)
                calls.append(_CachedCall(replace(call, grads=[]), states, keys, held, like, state_like, quantized))
                stepped.update(map(id, call.params))
            steps += plan.state_steps or []
        idle = [p for p in params if id(p) not in stepped]
        steps_on_cpu = all(plan.steps_on_cpu for plan in plans)
        return cls(group, params, idle, state, state.writes, calls, steps, steps_on_cpu, backend,
                   bool(group["capturable"]))

    def settle(self, state: StateMap, before: int | None) -> None:
        """After a step's planning: the state writes it made (a new param's state, made by planning
        another group) are not a user's change. ``before``: ``state.writes`` when the step began; a cache
        that a user's write made stale before it, and that this step did not check (a compiled step, a
        group taken out of ``param_groups`` for a while), stays stale."""
        if state is self.state and before is not None and self.writes >= before:
            self.writes = state.writes

    def plans(self, group: dict, state, backend: str, scalars_for) -> list[StepPlan] | None:
        """This step's plan (one), or None when the cache no longer describes the group or ``backend`` (the
        requested one) changed. ``scalars_for(call)`` gives a call's StepScalars (stochastic rounding differs
        between calls with and without masters)."""
        params = group["params"]
        if (
            backend != self.backend
            or group is not self.group
            or bool(group["capturable"]) is not self.capturable
            or state is not self.state
            or state.writes != self.writes
            or len(params) != len(self.params)
            or not same_objects(params, self.params)
            or any(p.grad is not None for p in self.idle)
        ):
            return None
        calls, copies = [], {}
        for cached in self.calls:
            template = cached.template
            grads = _extension.module().cached_grads(template.params, cached.states, cached.keys, cached.held,
                                                     cached.like, cached.state_like, self.steps_on_cpu,
                                                     cached.quantized)
            if grads is None:
                return None
            scalars = place_scalars(scalars_for(template), template.device, copies)
            calls.append(template.with_step(grads, scalars))
        found_inf = calls[0].scalars.found_inf if calls else None
        return [StepPlan(calls, self.state_steps, None, self.steps_on_cpu, found_inf, [])]
