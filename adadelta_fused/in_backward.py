"""``step_in_backward``: each param is stepped by a post-accumulate-grad hook as soon as its gradient is
final, and the gradient is freed at once, so backward never holds more than about one layer of gradients.

A hook steps its one param through the optimizer's own planner (``Adadelta._plan_group`` over a group of
that one param): state creation, ``state_dtype``, master copies, the step counter and the group's current
``lr`` are those of the ordinary step, and so are the bits, since every element's update depends only on
its own param, gradient and state. The one per-call quantity, the stochastic-rounding noise, is drawn
under the key that gives this param the noise of its place in the group's call
(``reference.key_as_tensor_zero``).

An iteration ends at ``optimizer.step()`` or ``optimizer.zero_grad()``: each param may be stepped once in it. What
cannot fit that raises, since it would silently step more than once or with a partial gradient:
a second gradient for a param before ``step()`` (gradient accumulation over several backwards, or one
backward that reaches the param twice, as a reentrant checkpoint does), a gradient another hook already
took, a gradient written after the hook (DDP's reducer; ``check_no_gradient_after_hook``), and a GradScaler
(``check_no_grad_scaler``). The hooks go with their optimizer; while it lives, a new
optimizer (of either mode) on its params raises (``check_not_taken``), since both would step them.
"""

from __future__ import annotations

import weakref
from dataclasses import replace

import torch

from .contract import param_label
from .reference import key_as_tensor_zero


class StepInBackward:
    """The hooks of one optimizer and what they know of the current iteration.

    Nothing here holds a param: a hook lives in the param's hook dict, which autograd keeps in C++, out of
    the garbage collector's sight, so a param held here would keep itself (and its model) alive for good.
    """

    def __init__(self, optimizer) -> None:
        # A weak reference: the hooks live on the params, which outlive an optimizer that is dropped.
        self._optimizer = weakref.ref(optimizer)
        self._stepped: set[int] = set()  # ids of the params stepped in this iteration
        self._refused: set[int] = set()  # ids of those whose hook refused a second gradient in it
        self._places: dict[int, tuple[int, int, int]] | None = None  # this iteration's id(param) -> place
        self._handles: list = []
        # The hooks go with the optimizer, so that a new optimizer can take the params over.
        self._finalizer = weakref.finalize(optimizer, _remove_hooks, self._handles)

    @property
    def live(self) -> bool:
        return self._finalizer.alive

    @property
    def stepped_any(self) -> bool:
        """Whether a hook stepped a param in this iteration."""
        return bool(self._stepped)

    def register(self, params) -> None:
        """Hooks on the params that require grad; the others never get a gradient from backward (one that is
        set by hand is stepped by ``step()``, as the ordinary step would). Hooks nothing if a param is taken."""
        check_not_taken(params)
        for p in params:
            if not p.requires_grad:
                continue
            self._handles.append(p.register_post_accumulate_grad_hook(self._step_param))

    def remove(self) -> None:
        """Removes the hooks now (an optimizer whose construction failed must not step anything)."""
        self._finalizer()

    def check_no_gradient_after_hook(self, param_groups) -> None:
        """Called by ``step()`` before it writes anything. A param stepped by its hook in this iteration has
        a gradient again only if something wrote one after the hook: DDP's reducer writes the averaged
        gradients back into ``p.grad`` at the end of backward. Stepping it would step it twice."""
        if not self._stepped:
            return
        for index, group in enumerate(param_groups):
            for position, p in enumerate(group["params"]):
                if p.grad is None or id(p) not in self._stepped:
                    continue
                if id(p) in self._refused:
                    why = ("holds the second gradient its hook refused in backward (the error raised there): that "
                           "gradient was not applied, and optimizer.step() cannot apply it either, since the param "
                           "was stepped in this iteration already, so it steps nothing. Call optimizer.zero_grad() "
                           "to drop it and begin the next iteration.")
                else:
                    why = ("was stepped in backward by its hook, which freed its gradient, and has a gradient again: "
                           "something wrote a gradient after the hook (DistributedDataParallel's reducer writes "
                           "the averaged gradients back after backward, when the params were already stepped with "
                           "their local ones). optimizer.step() would step it a second time, so it steps nothing. "
                           "step_in_backward cannot work with DistributedDataParallel: use step_in_backward=False.")
                raise RuntimeError(
                    f"step_in_backward: {param_label(position, index)} (shape {tuple(p.shape)}) {why}")

    def end_iteration(self) -> None:
        """``step()`` or ``zero_grad()`` was called: every param may be stepped again, and param groups edited since the last
        iteration (params moved, lists changed) are read anew."""
        self._stepped.clear()
        self._refused.clear()
        self._places = None

    def _step_param(self, p: torch.Tensor) -> None:
        optimizer = self._optimizer()
        if optimizer is None:
            return
        if self._places is None:
            self._places = _places(optimizer.param_groups)
        place = self._places.get(id(p))
        if place is None:
            return  # taken out of every param group: not this optimizer's any more
        index, position, tensor_index = place
        if id(p) in self._stepped:
            self._refused.add(id(p))
            raise RuntimeError(
                f"step_in_backward: {param_label(position, index)} got a second "
                "gradient before optimizer.step(); it was already stepped with the first one. Each param is "
                "stepped once per iteration (backward, then optimizer.step()), with its whole gradient: "
                "gradient accumulation over several backwards, or one backward that reaches a param twice "
                "(torch.utils.checkpoint with use_reentrant=True around a param also used outside it) cannot "
                "work. Call optimizer.step() after each backward (or optimizer.zero_grad() to skip a step: "
                "backward already applied the gradients, but the next iteration may begin), use "
                "use_reentrant=False, or use step_in_backward=False."
            )
        if p.grad is None:
            raise RuntimeError(
                f"step_in_backward: {param_label(position, index)} has no gradient "
                "when its hook runs: another post-accumulate-grad hook took it (set it to None) before this "
                "one. Give the param to one of them."
            )
        group = optimizer.param_groups[index]
        optimizer._check_differentiable(group)  # `group["differentiable"] = True` since the constructor
        with torch.no_grad():
            for step_plan in optimizer._plan_group(index, {**group, "params": [p]}, None, None):
                if isinstance(step_plan, dict):
                    optimizer._torch_step(step_plan)  # a gradient of another dtype (Adadelta._other_grad_dtypes)
                    continue
                for call in step_plan.calls:
                    if call.scalars.stochastic_rounding:
                        key = key_as_tensor_zero(call.scalars.rounding_key, tensor_index)
                        call.scalars = replace(call.scalars, rounding_key=key)
                step_plan.run()
        self._stepped.add(id(p))
        p.grad = None


def _places(param_groups) -> dict[int, tuple[int, int, int]]:
    """Each param's (by id: group index, position in the group, index in the group's backend call of the ordinary
    step).

    The ordinary step numbers a call's tensors in group order over the params that have a gradient, per
    (device, dtype); here, over those that require grad. The two agree when every trainable param gets a
    gradient; a param without one shifts the stochastic-rounding noise of the later params (other noise,
    as unbiased).
    """
    places = {}
    for index, group in enumerate(param_groups):
        counts: dict[tuple, int] = {}
        for position, p in enumerate(group["params"]):
            kind = (p.device, p.dtype)
            places[id(p)] = (index, position, counts.get(kind, 0))
            if p.requires_grad:
                counts[kind] = counts.get(kind, 0) + 1
    return places


def _remove_hooks(handles: list) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()


def check_not_taken(params, group: str = "the new param group") -> None:
    """Raises if a param is hooked by a live step_in_backward optimizer: its hooks would keep stepping the
    param next to any new optimizer (of either mode), which would step it a second time."""
    for position, p in enumerate(params):
        if is_taken(p):
            raise ValueError(
                f"param {position} of {group} (shape {tuple(p.shape)}) is stepped in backward by "
                "another live Adadelta(step_in_backward=True), whose hooks would go on stepping it next to "
                "this optimizer: drop it first (del it, and every reference to it, such as an LR scheduler's); "
                "its hooks go with it"
            )


def is_taken(p: torch.Tensor) -> bool:
    """Whether a live step_in_backward optimizer hooks ``p``."""
    return any(owner.live for owner in _hooked_by(p))


def _hooked_by(p: torch.Tensor) -> list[StepInBackward]:
    """The StepInBackward objects whose hooks ``p`` holds, read from the param's own hook dict: a table of its
    own keyed by the param would hold a weak reference to it, which torch.utils.swap_tensors refuses
    (``model.to()`` and ``load_state_dict`` under torch.__future__.set_swap_module_params_on_conversion)."""
    hooks = getattr(p, "_post_accumulate_grad_hooks", None) or {}
    return [hook.__self__ for hook in hooks.values() if isinstance(getattr(hook, "__self__", None), StepInBackward)]


def check_no_grad_scaler(optimizer) -> None:
    """GradScaler sets ``found_inf`` on the optimizer in ``scaler.step``; by then every param was stepped
    during backward, with scaled gradients, before anyone could know whether one of them was inf/NaN."""
    if getattr(optimizer, "found_inf", None) is None and getattr(optimizer, "grad_scale", None) is None:
        return
    optimizer.__dict__.pop("found_inf", None)
    optimizer.__dict__.pop("grad_scale", None)
    raise RuntimeError(
        "step_in_backward=True cannot work with a GradScaler: each param was stepped inside backward, as "
        "soon as its gradient was ready, so the scaled gradients were applied before found_inf (which needs "
        "every gradient) was known. Train without the scaler (bf16 autocast needs none), or use "
        "step_in_backward=False."
    )
