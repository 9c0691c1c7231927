"""A flat param's ``optimizer.state[p]``: views of the flat buffers, kept in step with what the user does to it.

With ``flatten=True`` the step reads and writes the buffers, not ``optimizer.state``. torch users reset or
replace state through the dict (``opt.state[p] = {}``, ``del opt.state[p]``, ``opt.state[p]["square_avg"] =
torch.zeros_like(p)``); torch's next step then starts that param afresh or reads the new tensor. So that the
flat step does the same (and ``state_dict()`` saves what the step used), every write to
``optimizer.state`` or to a flat param's own dict is counted (``StateMap.writes``; a flat param's dict is a
``FlatParamState``), and the first step after a write brings the buffers in line (``sync``): a param whose
state is gone is reset in its slots, a replaced tensor is copied into its slot, and the views go back into
the dict. Steps with no write in between cost one integer compare.

Not seen: a state tensor changed in place, which the buffers see anyway, except ``.data = x`` and ``set_``,
which re-point the view itself (assign the new tensor to the dict instead); and any write while the step is
compiled (torch.compile traces the buffers, not the dict: the next eager step applies it).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from .quantized import SCALE_KEYS
from .quantized_reference import MIN_SCALE
from .step_cache import CountedWrites


class FlatParamState(CountedWrites, dict):
    """A flat param's state dict: a dict whose writes the optimizer counts. ``state_dict()`` hands out plain
    copies; pickled with the optimizer (torch.save(opt), deepcopy) it becomes a plain dict, and the copy makes
    its own again around its new buffers."""

    def __init__(self, views: dict[str, torch.Tensor], optimizer) -> None:
        super().__init__(views)
        self._optimizer = weakref.ref(optimizer)

    def _wrote(self) -> None:
        optimizer = self._optimizer()
        state = None if optimizer is None else optimizer.__dict__.get("state")
        if hasattr(state, "writes"):
            state.writes += 1

    def __reduce__(self):
        return dict, (), None, None, iter(self.items())


def install(optimizer, p: torch.Tensor, views: dict[str, torch.Tensor]) -> FlatParamState:
    """Make ``views`` (the param's slots of the buffers, its step counter included) ``optimizer.state[p]``."""
    state = FlatParamState(views, optimizer)
    optimizer.state[p] = state
    return state


def sync(optimizer, flat, views_of: list[dict[str, torch.Tensor]], *, repair: bool = False) -> None:
    """Bring ``flat``'s buffers in line with ``optimizer.state`` for each of its params (``views_of[i]``: the
    views param i's dict held when installed); see the module's docstring. ``repair``: a param whose state
    does not fit (a key missing, a tensor of another shape) is reset instead of refused."""
    for index, (p, views) in enumerate(zip(flat.params, views_of, strict=True)):
        state = optimizer.state.get(p)
        if isinstance(state, FlatParamState) and all(state.get(key) is view for key, view in views.items()):
            continue
        with torch.no_grad():
            if not state:
                reset(flat, index, views)
            else:
                try:
                    _take_values(flat, index, p, state, views)
                except (KeyError, ValueError):
                    if not repair:
                        raise
                    reset(flat, index, views)
        extra = {key: value for key, value in (state or {}).items() if key not in views}
        install(optimizer, p, {**views, **extra})


def reset(flat, index: int, views: dict[str, torch.Tensor]) -> None:
    """As torch starts a param whose state is empty, for the slots in ``views`` (param ``index``'s, all or
    some): step 0, zero accumulators, a master copy of the param."""
    for key, view in views.items():
        if key in SCALE_KEYS.values():
            view.fill_(MIN_SCALE)  # what a fresh optimizer holds
        elif key != "master_param":
            view.zero_()
    if "master_param" in views:
        flat.stale_masters.add(index)


def _take_values(flat, index: int, p: torch.Tensor, state: dict[str, Any], views: dict[str, torch.Tensor]) -> None:
    """Copy each tensor that replaced a view into the view's slot, after checking all of them."""
    copies = []
    for key, view in views.items():
        value = state.get(key, None)
        if value is view:
            continue
        if value is None:
            if key == "master_param":
                flat.stale_masters.add(index)  # made from the param, as for a checkpoint without one
                continue
            raise KeyError(key)  # what torch's step raises for a param whose state lacks it
        if key == "step" and not torch.is_tensor(value):
            value = torch.tensor(float(value))
        if not torch.is_tensor(value) or value.shape != view.shape or (view.dtype == torch.uint8) != (
                value.dtype == torch.uint8):
            what = f"a {value.dtype} tensor of shape {tuple(value.shape)}" if torch.is_tensor(value) else repr(value)
            raise ValueError(
                f"flatten=True: state[{key!r}] of param {index} (shape {tuple(p.shape)}) was replaced by {what}, "
                f"which does not fit its slot ({view.dtype}, shape {tuple(view.shape)})"
            )
        copies.append((view, value))
    for view, value in copies:
        view.copy_(value)
        if view is views.get("master_param"):
            flat.stale_masters.discard(index)
