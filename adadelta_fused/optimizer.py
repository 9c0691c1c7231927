"""``Adadelta``: a drop-in for ``torch.optim.Adadelta`` whose step is one fused pass per tensor group."""

from __future__ import annotations

import operator
import weakref
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import torch
from torch.optim.adadelta import adadelta as torch_adadelta
from torch.optim.optimizer import (
    Optimizer,
    ParamsT,
    _get_capturable_supported_devices,
    _get_scalar_dtype,
    _use_grad_for_differentiable,
)

from . import backends, dtensor, flat_state, quantized, sparse
from ._compat import group_by_device_and_dtype
from .contract import LOW_PRECISION, STATE_DTYPES, GradMode, check_hyperparameters, param_label
from .flat import (FlatGroup, check_flattenable, check_not_flattened_elsewhere, check_not_shared_by_copy,
                   zero_as_torch_does)
from .functional import plan, replan, step_scalars
from .in_backward import StepInBackward, check_no_grad_scaler, check_not_taken, is_taken
from .reference import rounding_key
from .state_dict import cast_like_torch, check_installable, check_loadable, loaded_step
from .step_cache import GroupCache, StateMap, same_objects

_STATE_DTYPE_OPTIONS = (None, torch.float32, torch.bfloat16, torch.uint8)
# The options only the fused kernels carry out, which a param stepped by torch's Adadelta cannot take (a
# differentiable group, a gradient of another dtype than its param's).
_KERNEL_OPTIONS = ("state_dtype", "master_weights", "zero_grad_in_step", "stochastic_rounding")


class Adadelta(Optimizer):
    """torch.optim.Adadelta with the same arguments, defaults, errors and state, plus fused options.

    Args beyond torch's (all keyword-only; the defaults keep torch's behaviour):
        backend: ``"auto"`` (the fastest that can run), ``"cpp"``, ``"triton"`` or ``"reference"``; the
            environment variable ``ADADELTA_FUSED_BACKEND`` overrides ``"auto"``.
        flatten: move each (group, device, dtype)'s params, grads and state into contiguous buffers at
            construction; params stay the same objects (views), ``step`` is one kernel call per buffer and
            ``zero_grad`` zeroes in place. Grads set to None elsewhere (``model.zero_grad()``) cost one copy
            into the buffer at the next step, and a param still without a grad is skipped, as torch skips
            it. See ``adadelta_fused.flat`` for what breaks it (DTensor params cannot be flattened).
        zero_grad_in_step: the step zeroes the gradients in its own pass (no separate ``zero_grad``).
        state_dtype: dtype of ``square_avg`` and ``acc_delta``: None (the param's, as torch), ``torch.float32``,
            ``torch.bfloat16``, or ``torch.uint8``: 8-bit state, 2.03 bytes a param (see ``adadelta_fused.quantized``).
            fp64 and complex params keep their own dtype. Kept through ``state_dict`` round trips.
        master_weights: for bf16/fp16 params, keep an fp32 copy in state (``master_param``), update it in
            fp32 and write the param as its rounded copy.
        stochastic_rounding: write bf16 params (without master weights) with unbiased stochastic rounding,
            reproducible from ``seed`` and the step count.
        step_in_backward: step each param inside backward, in a post-accumulate-grad hook, as soon as its
            gradient is final, then set its ``grad`` to None: backward holds about one layer of gradients
            instead of the whole model's. Params, state and ``state_dict`` are bit for bit those of the
            ordinary step (the group's current ``lr`` is read as each hook runs). ``step()`` still ends each
            iteration (it runs the closure, steps any param whose gradient came outside backward, and lets
            every param be stepped again); so does ``zero_grad()``, which finds no gradient to clear: by
            then the gradients were applied, so skipping ``step()`` after a bad loss skips nothing.
            Raises: with ``flatten=True``; while a live step_in_backward optimizer hooks one of the params;
            when a param gets a second gradient before ``step()`` (accumulation over several backwards, a
            reentrant checkpoint); in ``GradScaler.step``, since ``found_inf`` is known only after the
            whole backward; in ``step()``, before writing anything, when a param stepped in backward has a
            gradient again (DDP's reducer writes the averaged gradients after the hooks: step_in_backward
            cannot work with DDP, use step_in_backward=False). Limitations that do not raise: gradient
            clipping cannot see the gradients; ``zero_grad(set_to_none=False)`` acts as
            ``set_to_none=True`` (a param backward did not reach keeps no zero grad, so weight decay does
            not move it, as it would with torch); a graph that reads a param's value outside its own
            gradient path breaks (``w.detach()`` raises torch's in-place version error; ``.data`` or a
            custom Function that saves the weight on ``ctx`` reads the stepped value); an error inside a
            hook leaves the params stepped before it updated; under FSDP2 the hooks may not fire, so
            ``step()`` steps those params and no memory is saved. See ``adadelta_fused.in_backward``.

    ``foreach`` is accepted for compatibility and has no effect: every step is fused.
    ``differentiable=True`` needs autograd through the update, which a fused kernel cannot give, so it
    runs torch's own implementation (and takes none of the options above).

    GradScaler: when it sets ``grad_scale`` and ``found_inf`` on the optimizer, the gradients are unscaled
    inside the fused pass, and a step with an inf/NaN gradient changes nothing, without a host sync.
    """

    _step_supports_amp_scaling = True

    # The fused options live in ``defaults``, which torch's __getstate__ keeps (deepcopy, pickle), and are
    # stripped from each param group: they are the optimizer's, not a group's, and a state_dict loaded
    # from another optimizer must not change them.
    # (Keys a group has and torch's lacks would also stop DCP's set_optimizer_state_dict from loading our
    # full state dict into torch.optim.Adadelta: it maps each non-tensor key onto the target's groups.)
    _OPTIONS = (
        "backend", "flatten", "zero_grad_in_step", "state_dtype", "master_weights", "stochastic_rounding", "seed",
        "step_in_backward",
    )

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
        backend: str = "auto",
        flatten: bool = False,
        zero_grad_in_step: bool = False,
        state_dtype: torch.dtype | None = None,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
        seed: int = 0,
        step_in_backward: bool = False,
    ) -> None:
        check_hyperparameters(lr, rho, eps, weight_decay)
        if backend is not None and backend != "auto" and backend not in backends.BACKEND_NAMES:
            # (the same words as the first step's: whether the backend can run is the device's question)
            raise ValueError(f"Invalid backend: {backend!r} (expected 'auto' or one of {backends.BACKEND_NAMES})")
        try:
            if isinstance(seed, bool):
                raise TypeError
            seed = operator.index(seed)
        except TypeError:
            raise TypeError(f"Invalid seed: {seed!r} (expected an integer)") from None
        if state_dtype not in _STATE_DTYPE_OPTIONS:
            raise ValueError(
                f"Invalid state_dtype: {state_dtype!r} (expected None, torch.float32, torch.bfloat16 or torch.uint8)")
        if flatten and step_in_backward:
            raise ValueError(
                "flatten=True and step_in_backward=True exclude each other: flat gradients are views of one "
                "buffer that lives as long as the optimizer, so there is nothing to free after each param's step"
            )
        self._in_backward = StepInBackward(self) if step_in_backward else None
        self._flat_groups: list[list[FlatGroup]] = []  # per param group
        self._unflat_params: list[list[torch.Tensor]] = []  # per param group: params outside the buffers
        self._flat_sources: list[list[torch.Tensor]] = []  # per param group: its params when flattened
        self._step_caches: dict[int, GroupCache] = {}  # per param group index (step_cache.py)
        # Master copies made by a first step with every lr zero (DCP's get_optimizer_state_dict makes state so),
        # copies of the params and nothing more while unwritten since: id(param) -> the copy's version counter
        # after that step (``_unloaded_masters``). Decided in an eager step; nothing here is written while a
        # step is traced (Dynamo does not keep such a write on the optimizer).
        self._fresh_masters: dict[int, int] = {}
        self._flat_synced_writes: int | None = None  # StateMap's count when flat_state.sync last ran
        defaults = {
            "lr": lr,
            "rho": rho,
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "capturable": capturable,
            "foreach": foreach,
            "differentiable": differentiable,
            "backend": backend,
            "flatten": bool(flatten),
            "zero_grad_in_step": bool(zero_grad_in_step),
            "state_dtype": state_dtype,
            "master_weights": bool(master_weights),
            "stochastic_rounding": bool(stochastic_rounding),
            "seed": seed,
            "step_in_backward": bool(step_in_backward),
        }
        # Groups are flattened once all are known, so that a group that cannot be flattened raises before
        # any other group's params have moved into buffers.
        self._flatten_later = True
        try:
            super().__init__(params, defaults)
        except BaseException:
            if self._in_backward is not None:
                self._in_backward.remove()  # the groups hooked before the error must not be stepped
            raise
        self._flatten_later = False
        self.state = StateMap(dict, self.state)
        if not step_in_backward:
            for index, group in enumerate(self.param_groups):
                check_not_taken(group["params"], f"param group {index}")
        if flatten:
            kinds = [self._flattenable(group) for group in self.param_groups]
            for group, (by_kind, _) in zip(self.param_groups, kinds):
                for params in by_kind.values():
                    check_flattenable(params, labels=self._param_labels(group, params))
            for group in self.param_groups:
                self._append_flat(group)

    # ---- state ----

    def _state_dtype_for(self, p: torch.Tensor, held: torch.dtype | None = None) -> torch.dtype:
        """The accumulators' dtype for ``p``: ``state_dtype``, or without one the param's own, as torch makes
        them. ``held``: the dtype of state made for an earlier dtype of ``p`` (``model.to(dtype)`` since); without
        ``state_dtype`` it is kept where the kernels take it with the param's new dtype, as torch's in-place ops
        keep theirs (fp32 state of params now bf16)."""
        state_dtype = self.defaults["state_dtype"]
        if state_dtype is None and held in STATE_DTYPES.get(p.dtype, ()):
            return held
        if state_dtype is None or p.dtype == torch.float64 or torch.is_complex(p):
            return p.dtype
        return state_dtype

    def _wants_master(self, p: torch.Tensor) -> bool:
        return self.defaults["master_weights"] and p.dtype in LOW_PRECISION

    def _new_step(self, p: torch.Tensor, capturable: bool) -> torch.Tensor:
        return torch.zeros((), dtype=_get_scalar_dtype(), device=p.device if capturable else None)

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        dtype = self._state_dtype_for(p)
        state = {"step": self._new_step(p, group["capturable"])}
        if dtype == quantized.QUANTIZED:
            quantized.check_supported([p])
            state.update(quantized.new_state(p))
        else:
            state["square_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
            state["acc_delta"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        if self._wants_master(p):
            state["master_param"] = p.detach().to(torch.float32, memory_format=torch.preserve_format, copy=True)
        return state

    def _follow_param_dtype(self, p: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """After ``model.to(dtype)`` the state takes the dtype the param now needs (``_state_dtype_for``: its
        own where the kernels take it, as torch keeps stepping); a master copy stays only while the param is
        bf16/fp16."""
        dtype = self._state_dtype_for(p, state["square_avg"].dtype)
        with torch.no_grad():
            held_quantized = quantized.is_quantized(state)
            if held_quantized and dtype != quantized.QUANTIZED:
                quantized.to_floating(state, dtype, group["eps"])  # model.double(): 8-bit state becomes fp64
            elif not held_quantized and dtype == quantized.QUANTIZED:
                quantized.to_quantized(p, state, group["eps"])
            elif not held_quantized:
                for key in ("square_avg", "acc_delta"):
                    state[key] = state[key].to(dtype)
            master = state.pop("master_param", None)
            if master is not None and not self._wants_master(p):
                p.copy_(master)  # the fp32 copy is the more precise value of the param
            elif self._wants_master(p):
                # A loaded checkpoint without master copies leaves none: it is made from the loaded param.
                state["master_param"] = master if master is not None else p.detach().to(
                    torch.float32, memory_format=torch.preserve_format, copy=True)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        if not isinstance(params, (torch.Tensor, set)):
            params = param_group["params"] = list(params)  # as torch does; a generator is read once here
            tensors = [p[1] if isinstance(p, tuple) else p for p in params]
            seen: dict[int, int] = {}
            for index, p in enumerate(tensors):
                if id(p) in seen:
                    # The fused step updates every listed tensor at once: a tensor listed twice would race
                    # with itself (torch warns and applies the two updates one after the other).
                    raise ValueError(
                        f"param {index} of the new param group is the same tensor as param {seen[id(p)]}; "
                        "list each param once"
                    )
                seen[id(p)] = index
        if self.defaults.get("flatten") and not self._flatten_later:
            self._match_flat_groups()  # edits since the last step first: their old buffers are let go
        if isinstance(param_group, dict):
            for key in self._OPTIONS:
                if key in param_group and param_group[key] != self.defaults[key]:
                    raise ValueError(
                        f"{key}={param_group[key]!r} in a param group: {key} is the optimizer's option "
                        f"({self.defaults[key]!r} here), one for all its groups; use another optimizer instead"
                    )
        super().add_param_group(param_group)
        self._step_caches.clear()
        group = self.param_groups[-1]
        for key in self._OPTIONS:
            group.pop(key, None)
        try:
            self._check_differentiable(group)
            if self._in_backward is None and not self._flatten_later:
                check_not_taken(group["params"])  # (as the constructor: another optimizer's hooks step them)
            if self.defaults["flatten"] and not self._flatten_later:
                self._append_flat(group)
            if self._in_backward is not None:
                self._in_backward.register(group["params"])
        except Exception:
            # torch appended the group; both refuse before changing anything, so a refused group is not added
            self.param_groups.pop()
            raise

    def _check_differentiable(self, group: dict[str, Any]) -> None:
        """A differentiable group runs torch's Adadelta on its state, which knows none of the fused options (8-bit
        or flat buffers, master copies, zeroing in the step...): refused in the constructor, in a new group, in a
        loaded state dict's groups, and (``group["differentiable"] = True`` later) first thing in a step or a
        step-in-backward hook, before anything is written."""
        if not group["differentiable"]:
            return  # (every step asks, for every group)
        fused = [f"{key}={self.defaults[key]!r}" for key in (*_KERNEL_OPTIONS, "flatten", "step_in_backward")
                 if self.defaults[key]]
        if fused:
            raise ValueError("differentiable=True runs torch's Adadelta and takes none of the fused options "
                             f"(this optimizer has {', '.join(fused)})")

    def _append_flat(self, group: dict[str, Any], copied: bool = False,
                     stale_masters: frozenset[int] = frozenset()) -> None:
        flats, others = self._flatten_group(group, copied, stale_masters)
        self._flat_groups.append(flats)
        self._unflat_params.append(others)
        self._flat_sources.append(list(group["params"]))

    def _match_flat_groups(self) -> None:
        """Pair each param group with the buffers of its params again after ``param_groups`` was edited (groups
        reordered or removed, params moved between groups or ``group["params"]`` replaced), which torch's step
        follows: a group whose params were flattened together keeps its buffers, any other is flattened anew
        (its params and state copied out of the old buffers), so that each param steps with its group's
        hyperparameters. Otherwise one identity compare of each group's params."""
        groups, sources = self.param_groups, self._flat_sources
        if len(groups) == len(sources) and all(
                len(group["params"]) == len(source) and same_objects(group["params"], source)
                for group, source in zip(groups, sources)):
            return
        old = {tuple(map(id, source)): index for index, source in enumerate(sources)}
        keys = [tuple(map(id, group["params"])) for group in groups]
        flat_groups, unflat_params = self._flat_groups, self._unflat_params
        listed: dict[int, int] = {}
        for index, group in enumerate(groups):
            for p in group["params"]:
                if listed.setdefault(id(p), index) != index:
                    raise ValueError(
                        f"flatten=True: a param of shape {tuple(p.shape)} is in param groups {listed[id(p)]} and "
                        f"{index}; a flat param lives in one group's buffer: list it in one group"
                    )
        for group, key in zip(groups, keys):  # refused before anything is rebuilt
            if key not in old:
                check_not_flattened_elsewhere(group["params"], self)
        stale = frozenset(self._stale_masters())
        frozen_have_none = False
        for flats in flat_groups:
            for flat in flats:
                frozen_have_none |= flat.frozen_have_none
                if flat.frozen_have_none:  # a param frozen since zero_grad() leaves the buffers, as at a step
                    for i, p in enumerate(flat.params):
                        if not p.requires_grad and p.grad is not None:
                            flat._has_no_grad(i)
        self._flat_groups, self._unflat_params, self._flat_sources = [], [], []
        for group, key in zip(groups, keys):
            index = old.pop(key, None)
            if index is None:
                # (its params may view this optimizer's old buffers)
                self._append_flat(group, copied=True, stale_masters=stale)
                for flat in self._flat_groups[-1]:
                    flat.frozen_have_none = frozen_have_none
            else:
                self._flat_groups.append(flat_groups[index])
                self._unflat_params.append(unflat_params[index])
                self._flat_sources.append(sources[index])
        self._flat_synced_writes = None

    @staticmethod
    def _flattenable(group: dict[str, Any]) -> tuple[dict[tuple, list[torch.Tensor]], list[torch.Tensor]]:
        """The group's params that go into buffers, by (device, dtype), and the frozen ones that stay out.

        Frozen: no grad and none to come. torch never touches such a param; in a buffer it would get a zero
        grad every step and move with weight decay.
        """
        by_kind: dict[tuple, list[torch.Tensor]] = {}
        others = []
        for p in group["params"]:
            if p.requires_grad or p.grad is not None:
                by_kind.setdefault((p.device, p.dtype), []).append(p)
            else:
                others.append(p)
        return by_kind, others

    def _param_labels(self, group: dict[str, Any], params: list[torch.Tensor]) -> list[str]:
        """``param k of param group g`` for each of ``params`` (some of ``group``'s), as a message names them."""
        position = {id(p): k for k, p in enumerate(group["params"])}
        index = next((i for i, g in enumerate(self.param_groups) if g is group), None)
        return [param_label(position[id(p)], index) for p in params]

    def _flatten_group(self, group: dict[str, Any], copied: bool = False,
                       stale_masters: frozenset[int] = frozenset()) -> tuple[list[FlatGroup], list]:
        """Move the group's trainable params (and any state they have) into flat buffers; ``copied``: the
        params come out of a copy of this optimizer or of its old buffers, still views of them;
        ``stale_masters``: ids of params whose master copy was still to be taken from the param (a loaded
        checkpoint), which the new buffers take from it too. Returns the buffers and the params left out (the
        frozen ones, stepped as torch steps them if they ever get a grad)."""
        by_kind, others = self._flattenable(group)
        flats = []
        for params in by_kind.values():
            old_state = [self.state.get(p, {}) for p in params]
            flat = FlatGroup.build(
                params, self._state_dtype_for(params[0]), self._wants_master(params[0]), shared_ok=copied,
                labels=self._param_labels(group, params),
            )
            flat.owner = weakref.ref(self)
            flat.counters = torch.zeros(len(params), dtype=_get_scalar_dtype(),
                                        device=params[0].device if group["capturable"] else None)
            with torch.no_grad():
                for index, (p, offset, old) in enumerate(zip(params, flat.offsets, old_state)):
                    views = {"step": flat.counters[index], **flat.state_views(p, offset)}
                    stale = id(p) in stale_masters
                    for key, value in old.items():
                        if key in views and not (stale and key == "master_param"):
                            views[key].copy_(value)
                    flat.installed_views.append(dict(views))
                    # keys of the user's or a library's own stay in the dict, as in flat_state.sync
                    flat_state.install(self, p, {**views, **{k: v for k, v in old.items() if k not in views}})
                    flat.steps.append(views["step"])
                    if "master_param" in old and not stale:
                        flat.stale_masters.discard(index)
            flats.append(flat)
        return flats, others

    def __getstate__(self) -> dict[str, Any]:
        """torch's (defaults, state, param groups), where a flat param's master copy that was still to be taken
        from the param (a checkpoint loaded since the buffers were made) is left out: the copy then takes it
        from its copied param at its first step, as this optimizer would."""
        state = super().__getstate__()
        stale = self._stale_masters()
        if stale:
            state = {**state, "state": {
                p: {k: v for k, v in s.items() if k != "master_param"} if id(p) in stale else s
                for p, s in self.state.items()}}
        return state

    def _fill_stale_masters(self) -> None:
        """Write each flat master copy still to be taken from its param (``_stale_masters``) with the param's
        value, the copy the next step will take, keeping it to be taken again: a state dict then saves the
        master copy that step would use (a loaded model checkpoint, not the copy before it), under the key a
        distributed checkpoint loads into (writing the views: loaded masters), and a model loaded after it
        still reaches the step, also through a load of that very dict unwritten since (``filled_version``)."""
        stale = self._stale_masters()
        if not stale:
            return
        with torch.no_grad():
            for flats in self._flat_groups:
                for flat in flats:
                    for i in flat.stale_masters:
                        if id(flat.params[i]) in stale:
                            flat.installed_views[i]["master_param"].copy_(flat.params[i])
                    if flat.master is not None:
                        flat.filled_version = flat.master._version

    def _stale_masters(self) -> set[int]:
        """Ids of the flat params whose master copy is still to be taken from the param (``stale_masters``) and
        whose state dict still holds the buffer's view (a master copy the user assigned since is current)."""
        return {id(flat.params[i]) for flats in self.__dict__.get("_flat_groups", ()) for flat in flats
                for i in flat.stale_masters
                if self.state.get(flat.params[i], {}).get("master_param") is flat.installed_views[i].get("master_param")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._flatten_later = False
        # A loaded state dict arrives here as torch's new defaultdict, a copy as what was copied; either way
        # nothing cached before describes it.
        if not isinstance(self.state, StateMap):
            self.state = StateMap(dict, self.state)
        self._step_caches = {}
        for key in self._OPTIONS:
            self.defaults.setdefault(
                key, {"backend": "auto", "flatten": False, "seed": 0, "step_in_backward": False}.get(key))
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("differentiable", False)
            group.setdefault("capturable", False)
            for key in self._OPTIONS:
                group.pop(key, None)  # a pickle from before the options left the groups
            for p in group["params"]:
                p_state = self.state.get(p, [])
                if len(p_state) != 0 and not torch.is_tensor(p_state["step"]):
                    device = p.device if group["capturable"] else None
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=_get_scalar_dtype(), device=device)
        self._flat_synced_writes = None
        self._fresh_masters = {}  # (a copy's params are other objects)
        if "_flat_groups" not in self.__dict__:
            # A copy (deepcopy, pickle) brings params and state but not the buffers they viewed, and pickle
            # does not even keep the views shared: build the buffers again, around the copied values.
            self._flat_groups, self._unflat_params, self._flat_sources = [], [], []
            if self.defaults["flatten"]:
                check_not_shared_by_copy(self.param_groups, self)
                for group in self.param_groups:
                    self._append_flat(group, copied=True)
        if "_in_backward" not in self.__dict__:
            # Hooks are not copied with tensors (deepcopy and pickle drop them): the copy hooks its own
            # params, which are the copied model's when model and optimizer are copied together.
            self._in_backward = None
            if self.defaults["step_in_backward"]:
                if any(is_taken(p) for group in self.param_groups for p in group["params"]):
                    raise TypeError(
                        "a shallow copy (copy.copy) of an Adadelta with step_in_backward=True would hook the "
                        "original's params a second time: use copy.deepcopy (of the model and the optimizer "
                        "together, to train the copy)"
                    )
                self._in_backward = StepInBackward(self)
                for group in self.param_groups:
                    self._in_backward.register(group["params"])

    def state_dict(self) -> dict[str, Any]:
        """torch's, once every sparse-stepped row has caught up on its pending decays: the saved state is
        dense Adadelta's, with torch's keys only (adadelta_fused.sparse)."""
        sparse.settle_all(self)
        self._fill_stale_masters()
        # The post-hooks run last, on the finished dict, as torch's run (one may return another object).
        post_hooks = self._optimizer_state_dict_post_hooks
        self._optimizer_state_dict_post_hooks = OrderedDict()
        try:
            saved = super().state_dict()
        finally:
            self._optimizer_state_dict_post_hooks = post_hooks
        # A flat param's dict as a plain dict: a dict subclass would pickle as a reference to a class, which
        # torch.load(weights_only=True) refuses, even the builtin dict reached that way.
        saved["state"] = {key: dict(value) if isinstance(value, flat_state.FlatParamState) else value
                          for key, value in saved["state"].items()}
        for hook in post_hooks.values():
            result = hook(self, saved)
            if result is not None:
                saved = result
        return saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load, checked first, except that accumulators keep this optimizer's state dtype (torch
        casts them to the param dtype, which would round fp32 state of bf16 params), master copies stay
        fp32, and flattened state is copied into the flat buffers (the step counters included).

        The pre-hooks see (and may replace) the whole state dict, and the post-hooks run after the state is
        in place, as with torch. A state dict that does not fit raises before anything changes.
        """
        # Master buffers as the last state_dict() filled them: a load of that very dict keeps them to be taken
        # from the params (a model checkpoint loaded since must reach the step).
        filled = {id(flat) for flats in self._flat_groups for flat in flats
                  if flat.master is not None and flat.filled_version == flat.master._version}
        self._sync_flat_state(repair=True)  # every flat param has its views again, to load into
        state_dict = state_dict.copy()
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        param_of = check_loadable(self.param_groups, state_dict)
        for group in state_dict["param_groups"]:
            self._check_differentiable({"differentiable": group.get("differentiable", False)})
        located = {
            p: (flat, index) for flats in self._flat_groups for flat in flats for index, p in enumerate(flat.params)
        }
        # What could fail while the values are installed is checked first, so that a state dict that cannot load
        # raises with the optimizer as it was, as torch's load leaves it; each param's values are then converted
        # as they are installed, one param at a time (no converted copy of the whole state is held).
        eight_bit = {p: self._state_dtype_for(p) == quantized.QUANTIZED for p in param_of.values()}
        unloaded = self._unloaded_masters(param_of, state_dict["state"])
        for saved_id, p in param_of.items():
            check_installable(saved_id, state_dict["state"].get(saved_id) or {}, p, eight_bit[p])
        self._step_caches.clear()
        pre_hooks, post_hooks = self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks
        # A flat param's state is views of the buffers, kept and loaded into; any other param's is dropped, as
        # torch drops it (one frozen when the buffers were built has state of its own once stepped).
        kept = {p: state for p, state in self.state.items() if p in located}
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        try:
            super().load_state_dict({**state_dict, "state": {}})
        finally:
            self._optimizer_load_state_dict_pre_hooks = pre_hooks
            self._optimizer_load_state_dict_post_hooks = post_hooks
        self.state.update(kept)
        group_of = {p: group for group in self.param_groups for p in group["params"]}
        for saved_id, p in param_of.items():
            saved = state_dict["state"].get(saved_id) or {}
            # 8-bit state loads into floating state and the other way round, converted.
            saved = quantized.convert_saved(saved, p, eight_bit[p], group_of[p]["eps"])
            where = located.get(p)
            if where is None:
                if not saved:
                    continue  # as torch: a param without saved state gets none
                target = self._init_state(p, group_of[p])
                target.pop("master_param", None)  # made from the param at its next step, unless saved below
                own = set(target)
            else:
                # A flat param's state is views of the buffers: reset in place where nothing was saved (a
                # saved value may be this very view: opt.state_dict()); a key of its own the checkpoint lacks
                # is dropped, as torch's load drops it.
                target = self.state[p]
                flat, index = where
                own = set(flat.installed_views[index])
                with torch.no_grad():
                    flat_state.reset(flat, index, {key: view for key, view in flat.installed_views[index].items()
                                                   if key not in saved})
                for key in [key for key in target if key not in own and key not in saved]:
                    del target[key]
            with torch.no_grad():
                for key, value in saved.items():
                    if key == "master_param":
                        if not self._wants_master(p) or p in unloaded:
                            # Saved with master weights and loaded without: the param itself is the value. A
                            # copy nothing was loaded into: made from the (loaded) param at the next step.
                            continue
                        if where is None:
                            target[key] = value.to(device=p.device, dtype=torch.float32,
                                                   memory_format=torch.preserve_format, copy=True)
                        elif not (value is target[key] and id(flat) in filled and index in flat.stale_masters):
                            target[key].copy_(value)
                            flat.stale_masters.discard(index)
                    elif key == "step":
                        step = loaded_step(value, target["step"], group_of[p]["capturable"], p.device)
                        if where is not None:
                            target["step"].copy_(step)  # the flat buffer advances this very tensor
                        else:
                            target["step"] = step
                    elif key in own:
                        target[key].copy_(value)  # casts into our dtype; a flat view stays a view
                    else:
                        target[key] = cast_like_torch(value, p)
            self.state[p] = target
        self._fresh_masters = {}
        for hook in post_hooks.values():
            hook(self)

    def _unloaded_masters(self, param_of: dict, saved_state: dict) -> set:
        """The params whose saved master copy is their own fresh copy (``_fresh_masters``), unwritten since the
        zero-lr step made it (no step, load or DCP read into it): DCP's get_optimizer_state_dict makes one so, and a
        checkpoint without master copies (torch.optim.Adadelta's, loaded with ``allow_partial_load``) leaves
        it as it was, a copy of the params from before the load. Such a copy is made from the loaded param
        instead, as for any checkpoint without master copies (it held nothing the param does not)."""
        unloaded = set()
        for saved_id, p in param_of.items():
            version = self._fresh_masters.get(id(p))
            if version is None:
                continue
            master = self.state.get(p, {}).get("master_param")
            saved = (saved_state.get(saved_id) or {}).get("master_param")
            if master is not None and saved is not None and _same_memory(saved, master) and \
                    _written_version(master) == version:
                unloaded.add(p)
        return unloaded

    # ---- step ----

    @torch.no_grad()
    def sync_master_weights(self) -> None:
        """Copy every bf16/fp16 param into its fp32 master copy (exact). With ``master_weights=True`` each step
        computes from the master copy and writes the param as its rounded copy, so a write to the param
        itself after the first step (``model.load_state_dict`` of a model checkpoint alone, clamping, an EMA
        swap) is undone by the next step unless this is called after it."""
        self._sync_flat_state()  # (a flat param's master_param is then its view of the master buffer)
        for group in self.param_groups:
            for p in group["params"]:
                master = self.state.get(p, {}).get("master_param")
                if master is not None:
                    master.copy_(p)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """With ``flatten``, gradients are views of one buffer: zeroed in place, not set to None, so the next
        backward accumulates into the buffer (params outside the buffers, the frozen ones, are treated as
        torch treats them). After ``set_to_none``, a param frozen since has no grad at the next step unless
        a backward filled it before the freeze, as with torch (``FlatGroup._has_no_grad``).
        ``model.zero_grad()`` may still set them to None: see ``adadelta_fused.flat`` for what that costs.

        With ``step_in_backward``, it ends the iteration as ``step()`` does (so that a loop that skips a
        step, ``backward(); opt.zero_grad(); continue``, goes on), but it cannot undo it: the gradients were
        applied inside backward."""
        if self._in_backward is not None:
            if self._in_backward.stepped_any:
                self._advance_rounding_step()  # the hooks stepped with this iteration's noise, as step() counts
            self._in_backward.end_iteration()
        if not self.defaults["flatten"]:
            return super().zero_grad(set_to_none)
        self._match_flat_groups()
        for flats in self._flat_groups:
            for flat in flats:
                flat.zero_grad(set_to_none)
        for others in self._unflat_params:
            for p in others:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    zero_as_torch_does(p.grad)

    def _grad_mode(self, grad_scale) -> GradMode:
        if self.defaults["zero_grad_in_step"]:
            return GradMode.ZERO
        return GradMode.UNSCALE if grad_scale is not None else GradMode.KEEP

    def _gather(self, group):
        """Per-param lists for one group, split into params with and without an fp32 master copy, and by the
        accumulators' dtype (8-bit, or fp32 state kept under params cast to bf16 beside a new param's bf16
        state): each set is one kind of op call. (Sets of stochastically rounded params share the group's noise
        stream, each numbering its tensors from 0.)"""
        params, grads, square_avgs, acc_deltas, steps, masters = [], [], [], [], [], []
        self._init_group(group, params, grads, square_avgs, acc_deltas, steps, masters)
        # (str: dtypes do not sort)
        kinds = [(master is not None, str(sq.dtype)) for master, sq in zip(masters, square_avgs)]
        if not params:
            return []
        if all(kind == kinds[0] for kind in kinds):
            return [(params, grads, square_avgs, acc_deltas, steps, masters if kinds[0][0] else [])]
        sets = []
        for kind in dict.fromkeys(sorted(kinds)):
            chosen = [i for i, k in enumerate(kinds) if k == kind]
            lists = [[tensors[i] for i in chosen] for tensors in (params, grads, square_avgs, acc_deltas, steps)]
            sets.append((*lists, [masters[i] for i in chosen] if kind[0] else []))
        return sets

    def _init_group(self, group, params, grads, square_avgs, acc_deltas, steps, masters) -> None:
        """Append each param with a grad, its grad, state and master copy (or None), making state as needed.

        The name and the list arguments are what torch.compile looks for in an optimizer: it runs this
        method before tracing the step (as for torch's own optimizers), so that creating the state on the
        first step does not make a second graph. It costs 2.4 us a param (4096 params, much of it
        ``self.state[p]``, whose Tensor ``__hash__`` is Python code), so an eager step runs it only when
        the group's cache (step_cache.py) no longer holds.
        """
        state_of = self.state
        state_dtype = self.defaults["state_dtype"]
        master_weights = self.defaults["master_weights"]
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                sparse.defer(self, group, p)  # stepped lazily by adadelta_fused.sparse (see _plan_group)
                continue
            state = state_of[p]
            if not state:
                state.update(self._init_state(p, group))
            else:
                if "row_step" in state:
                    sparse.settle(self, p, state)  # a dense step after sparse ones: every row catches up first
                # Identity tests first: the full rule (_state_dtype_for) only runs when the param's dtype
                # may have changed since the state was made (model.to(dtype)).
                # (acc_delta too: `state["acc_delta"].data = ...double()` changes it alone)
                held, other = state["square_avg"].dtype, state["acc_delta"].dtype
                if other is not held or (held is not p.dtype and (held is not state_dtype or p.dtype is torch.float64)):
                    if held != self._state_dtype_for(p, held) or other is not held:
                        self._follow_param_dtype(p, state, group)
                if state["square_avg"].dtype is quantized.QUANTIZED and not quantized.codes_laid_out(p, state):
                    # model.to(memory_format=...) since the codes were made, or one accumulator's codes replaced
                    quantized.relayout(p, state)
            master = state.get("master_param")
            if master_weights and (master is None) == (p.dtype is torch.bfloat16 or p.dtype is torch.float16):
                # A master copy is missing (a checkpoint without one, model.to(bf16)) or no longer wanted.
                self._follow_param_dtype(p, state, group)
                master = state.get("master_param")
            params.append(p)
            grads.append(grad)
            square_avgs.append(state["square_avg"])
            acc_deltas.append(state["acc_delta"])
            steps.append(state["step"])
            masters.append(master)

    @_use_grad_for_differentiable
    def step(self, closure=None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the loss.
        """
        try:
            return self._step(closure)
        except BaseException:
            # GradScaler sets grad_scale and found_inf before the step and deletes them after one that returns.
            # After one that raised it would leave them, and its retry would multiply the old grad_scale by
            # the scale again (a later plain step would read the old found_inf): the step used them up.
            self.__dict__.pop("grad_scale", None)
            self.__dict__.pop("found_inf", None)
            raise

    def _step(self, closure):
        self._accelerator_graph_capture_health_check()
        for group in self.param_groups:
            self._check_differentiable(group)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        if self._in_backward is not None:
            check_no_grad_scaler(self)
            self._in_backward.check_no_gradient_after_hook(self.param_groups)
            self._in_backward.end_iteration()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        compiling = torch.compiler.is_compiling()
        if not compiling:
            self._sync_flat_state()
        makes_fresh_masters = (not compiling and not self.state and self.defaults["master_weights"]
                               and all(_is_zero(group["lr"]) for group in self.param_groups))
        # StateMap's count when the step begins, for the caches below (a compiled step neither reads nor
        # settles them: Dynamo would guard on the count, which the step itself may change)
        writes = None if compiling else getattr(self.state, "writes", None)
        plans = []
        for index, group in enumerate(self.param_groups):
            if group["differentiable"]:
                plans.append(group)
                continue
            plans.extend(self._plan_group(index, group, grad_scale, found_inf))
        if not compiling:
            for index in [index for index in self._step_caches if index >= len(self.param_groups)]:
                del self._step_caches[index]  # a removed group's: it would keep its params and state alive
            for cache in self._step_caches.values():
                cache.settle(self.state, writes)  # this step's own new state (a new param's) changes no plan
        # Everything is planned and checked before the first write: a bad group never leaves a step half
        # applied. One backend call checks itself (the op validates first), so only several need this.
        fused = [p for p in plans if not isinstance(p, dict)]
        if sum(len(p.calls) for p in fused) > 1 and not torch.compiler.is_compiling():
            for step_plan in fused:
                step_plan.check()
        for step_plan in plans:
            if isinstance(step_plan, dict):
                self._torch_step(step_plan, grad_scale, found_inf)
            else:
                step_plan.run()
        self._advance_rounding_step()
        if makes_fresh_masters:
            self._fresh_masters = {id(p): _written_version(state["master_param"])
                                   for p, state in self.state.items() if "master_param" in state}
        return loss

    def _advance_rounding_step(self) -> None:
        """The next step's stochastic rounding draws new noise (the key counts steps, ``reference.rounding_key``)."""
        if self.defaults["stochastic_rounding"]:
            for group in self.param_groups:
                group["rounding_step"] = group.get("rounding_step", 0) + 1

    def _sync_flat_state(self, repair: bool = False) -> None:
        """After a write to ``self.state`` (or a flat param's dict) since the last sync, bring the flat
        buffers in line with it (adadelta_fused.flat_state); otherwise one compare. ``repair``: a param whose
        state no longer fits is reset instead of refused (a state dict is about to be loaded over it)."""
        if not self.defaults["flatten"]:
            return
        self._match_flat_groups()
        if not isinstance(self.state, StateMap):
            self.state = StateMap(dict, self.state)  # `opt.state = defaultdict(dict)`: count its writes again
            self._flat_synced_writes = None
        if self.state.writes == self._flat_synced_writes:
            return
        for flats in self._flat_groups:
            for flat in flats:
                flat_state.sync(self, flat, flat.installed_views, repair=repair)
        self._flat_synced_writes = self.state.writes

    def _plan_group(self, index: int, group: dict[str, Any], grad_scale, found_inf) -> list:
        options = self.defaults
        rounding_step = group.get("rounding_step", 0) + 1  # counted in step(), once the step has run
        scalars = step_scalars(
            group["lr"], group["rho"], group["eps"], group["weight_decay"], group["maximize"], grad_scale, found_inf,
            self._grad_mode(grad_scale), False, 0,
        )

        def with_rounding(masters, stream: int):
            # Stochastic rounding is for params without a master copy (the copy already keeps the bits);
            # each (group, buffer) draws its own noise, since every call numbers its tensors from 0.
            if not options["stochastic_rounding"] or masters:
                return scalars
            rounding = rounding_key(options["seed"], rounding_step, stream)
            return replace(scalars, stochastic_rounding=True, rounding_key=rounding)

        plans = []
        unflat = group
        compiling = torch.compiler.is_compiling()
        cacheable = not options["flatten"] and self._in_backward is None and not compiling
        # What kept plans were made for: ADADELTA_FUSED_BACKEND, read each step, takes effect in the next eager step.
        backend = backends.requested_backend(options["backend"])
        stream = (index << 16) + 0xFFFF
        if cacheable and index in self._step_caches:
            cached = self._step_caches[index].plans(
                group, self.state, backend, lambda call: with_rounding(call.master_params, stream))
            if cached is not None:
                return cached
        if options["flatten"]:
            for buffer, flat in enumerate(self._flat_groups[index]):
                params, grads, square_avgs, acc_deltas, masters, steps, counters, scales = flat.step_tensors()
                if flat.stale_masters:
                    flat.refresh_masters()
                buffer_scalars = with_rounding(masters, (index << 16) + buffer + 1)
                if scales is not None:
                    plans.append(quantized.plan(
                        params, grads, square_avgs, acc_deltas, steps, buffer_scalars, masters, *scales,
                        options["backend"], counters,
                    ))
                    continue
                # A plan of the whole buffers is kept (not of the ranges that params without grads make, new
                # each step), and never while compiling, as with the per-tensor cache (a plan kept while Dynamo
                # traces would hold its traced tensors).
                keepable = counters is not None and not compiling
                if keepable and flat.planned is not None and flat.planned[0] == backend:
                    plans.append(replan(flat.planned[1], buffer_scalars, counters))
                    continue
                plans.append(plan(
                    params, grads, square_avgs, acc_deltas, steps, buffer_scalars, masters, options["backend"],
                    counters,
                ))
                if keepable and all(g is flat.grad for call in plans[-1].calls for g in call.grads):
                    flat.planned = (backend, plans[-1])  # its calls hold the buffers themselves
            unflat = {**group, "params": self._unflat_params[index]}  # usually none: frozen params
            if group["capturable"] and not compiling:
                flats = self._flat_groups[index]
                _check_capturable([flat.param for flat in flats], [flat.counters for flat in flats])
        by_torch = []  # params with gradients of another dtype (grad_dtype): torch's Adadelta steps them
        for params, grads, square_avgs, acc_deltas, steps, masters in self._gather(unflat):
            if group["capturable"] and not compiling:  # (as torch's: the compiler checks graph capture)
                _check_capturable(params, steps)
            # (not traced: Dynamo breaks the graph on this loop; a compiled step's kernel refuses such grads)
            fits = [] if compiling else [g.dtype == p.dtype for p, g in zip(params, grads)]
            if not all(fits):
                by_torch += self._other_grad_dtypes(index, [p for p, fit in zip(params, fits) if not fit],
                                                    [g for g, fit in zip(grads, fits) if not fit])
                kept = [i for i, fit in enumerate(fits) if fit]
                if not kept:
                    continue
                params, grads, square_avgs, acc_deltas, steps = (
                    [tensors[i] for i in kept] for tensors in (params, grads, square_avgs, acc_deltas, steps))
                masters = [masters[i] for i in kept] if masters else masters
            if square_avgs[0].dtype is quantized.QUANTIZED:
                states = [self.state[p] for p in params]
                plans.append(quantized.plan(
                    params, grads, square_avgs, acc_deltas, steps, with_rounding(masters, stream), masters or None,
                    [state["square_avg_scale"] for state in states], [state["acc_delta_scale"] for state in states],
                    options["backend"],
                ))
                continue
            plans.append(plan(
                params, grads, square_avgs, acc_deltas, steps, with_rounding(masters, stream), masters or None,
                options["backend"],
            ))
        deferred = sparse.plan_deferred(self, index, unflat, scalars)
        if by_torch:
            deferred.append({**group, "params": by_torch})
        if cacheable:
            # A group with sparse grads is planned every step: its sparse params are stepped row by row
            # (adadelta_fused.sparse), which the cache does not describe; so is one with grads of other dtypes.
            cache = None if deferred else GroupCache.build(group, self.state, plans, backend)
            if cache is None:
                self._step_caches.pop(index, None)
            else:
                self._step_caches[index] = cache
        plans.extend(deferred)
        return plans

    def _other_grad_dtypes(self, index: int, params, grads) -> list[torch.Tensor]:
        """``params`` of param group ``index``, whose ``grads`` have another dtype than theirs (``param.grad_dtype``:
        fp32 gradients of bf16 params), which the kernels do not read: without fused options torch's Adadelta
        steps them, as it would; with one, refused before anything is written."""
        d = self.defaults
        fused = [key for key in _KERNEL_OPTIONS if d[key]]
        if fused:
            p, g = params[0], grads[0]
            position = next(i for i, q in enumerate(self.param_groups[index]["params"]) if q is p)
            raise TypeError(
                f"{param_label(position, index)} has a {g.dtype} gradient for its {p.dtype} data "
                f"(its grad_dtype), which the fused kernels do not read, and {fused[0]}={d[fused[0]]!r} needs "
                "them: leave grad_dtype unset, or drop the option (torch's Adadelta then steps such params)"
            )
        return params

    def _torch_step(self, group: dict[str, Any], grad_scale=None, found_inf=None) -> None:
        """torch's Adadelta over ``group``: a differentiable group, or params with gradients of another dtype
        (torch then picks its implementation as torch.optim.Adadelta does). Neither takes master weights: one
        list set per state dtype. Under a GradScaler, as the scaler's own path for optimizers without fused
        scaling: the gradients unscaled in place (times the scale's reciprocal), and no step where found_inf
        is set (one read of it, a host sync on a GPU)."""
        if grad_scale is not None:
            grads = [p.grad for p in group["params"] if p.grad is not None]
            inv_scale = grad_scale.double().reciprocal().float()
            for (device, _), ([same_kind], _) in group_by_device_and_dtype([grads]).items():
                found = torch.zeros(1, device=device)
                torch._amp_foreach_non_finite_check_and_unscale_(same_kind, found, inv_scale.to(device))
        if found_inf is not None and float(found_inf) != 0.0:
            return
        differentiable = group["differentiable"]
        if differentiable and group["foreach"]:
            raise AssertionError("_foreach ops don't support autograd")  # torch's, with grads or without
        for params, grads, square_avgs, acc_deltas, steps, _ in self._gather(group):
            torch_adadelta(
                params, grads, square_avgs, acc_deltas, steps,
                lr=group["lr"], rho=group["rho"], eps=group["eps"], weight_decay=group["weight_decay"],
                maximize=group["maximize"], differentiable=differentiable, capturable=group["capturable"],
                foreach=group["foreach"],  # (differentiable with foreach=True: torch's AssertionError, as torch)
                has_complex=any(torch.is_complex(p) for p in params),
            )


def _written_version(t: torch.Tensor) -> int:
    """The version counter a write into ``t`` advances: a DTensor's local tensor's (DCP loads a sharded state
    into the local shards, which leaves the DTensor's own counter where it was)."""
    return (t.to_local() if dtensor.is_dtensor(t) else t)._version


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` is ``b`` or a view of the same elements (DCP's full_state_dict path hands back
    ``value.detach().to(device)``: another object over the same storage, with the same version counter)."""
    if a is b:
        return True
    a, b = (t.to_local() if dtensor.is_dtensor(t) else t for t in (a, b))
    return (isinstance(a, torch.Tensor) and a.device == b.device and a.dtype == b.dtype and a.shape == b.shape
            and a.stride() == b.stride() and a.storage_offset() == b.storage_offset()
            and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())


def _is_zero(lr) -> bool:
    """Whether a group's lr is zero (a tensor lr is read: only on an eager first step with master weights)."""
    return bool(lr == 0)


def _check_capturable(params, steps) -> None:
    """torch's Adadelta asserts, once the state is made, that a capturable group's params and step counters are
    on one device where CUDA graphs (or another accelerator's) can capture them: the same error. (Planning
    only, as the step cache allows: a graph replays no Python.)"""
    supported = _get_capturable_supported_devices(supports_xla=False)
    if any(p.device.type not in supported or s.device.type != p.device.type for p, s in zip(params, steps)):
        raise AssertionError(
            f"If capturable=True, params and state_steps must be on supported devices: {supported}.")


FusedAdadelta = Adadelta
