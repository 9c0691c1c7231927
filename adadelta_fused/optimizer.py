"""``Adadelta``: a drop-in for ``torch.optim.Adadelta`` whose step is one fused pass per tensor group."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.adadelta import adadelta as torch_adadelta
from torch.optim.optimizer import Optimizer, ParamsT, _get_scalar_dtype, _use_grad_for_differentiable

from .contract import LOW_PRECISION, check_hyperparameters
from .flat import FlatGroup
from .functional import adadelta_
from .reference import rounding_key

_STATE_DTYPES = (None, torch.float32, torch.bfloat16)


class Adadelta(Optimizer):
    """torch.optim.Adadelta with the same arguments, defaults, errors and state, plus fused options.

    Args beyond torch's (all keyword-only; the defaults keep torch's behaviour):
        backend: ``"auto"`` (the fastest that can run), ``"cpp"``, ``"triton"`` or ``"reference"``; the
            environment variable ``ADADELTA_FUSED_BACKEND`` overrides ``"auto"``.
        flatten: move each (group, device, dtype)'s params, grads and state into contiguous buffers at
            construction; params stay the same objects (views), ``step`` is one kernel call per buffer and
            ``zero_grad`` zeroes in place. Every param is then stepped each time, with a zero gradient if it
            got none (torch skips params whose grad is None). See ``adadelta_fused.flat`` for what breaks it.
        zero_grad_in_step: the step zeroes the gradients in its own pass (no separate ``zero_grad``).
        state_dtype: dtype of ``square_avg`` and ``acc_delta``: None (the param's, as torch), ``torch.float32``
            or ``torch.bfloat16``. Kept through ``state_dict`` round trips.
        master_weights: for bf16/fp16 params, keep an fp32 copy in state (``master_param``), update it in
            fp32 and write the param as its rounded copy.
        stochastic_rounding: write bf16 params (without master weights) with unbiased stochastic rounding,
            reproducible from ``seed`` and the step count.

    ``foreach`` is accepted for compatibility and has no effect: every step is fused.
    ``differentiable=True`` needs autograd through the update, which a fused kernel cannot give, so it
    runs torch's own implementation (and takes none of the options above).

    GradScaler: when it sets ``grad_scale`` and ``found_inf`` on the optimizer, the gradients are unscaled
    inside the fused pass, and a step with an inf/NaN gradient changes nothing, without a host sync.
    """

    _step_supports_amp_scaling = True

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
    ) -> None:
        check_hyperparameters(lr, rho, eps, weight_decay)
        if state_dtype not in _STATE_DTYPES:
            raise ValueError(f"Invalid state_dtype: {state_dtype} (expected None, torch.float32 or torch.bfloat16)")
        fused_options = flatten or zero_grad_in_step or state_dtype or master_weights or stochastic_rounding
        if differentiable and fused_options:
            raise ValueError("differentiable=True runs torch's Adadelta and takes none of the fused options")
        self._flatten = flatten
        self._zero_grad_in_step = zero_grad_in_step
        self._state_dtype = state_dtype
        self._master_weights = master_weights
        self._stochastic_rounding = stochastic_rounding
        self._seed = int(seed)
        self._flat_groups: list[list[FlatGroup]] = []
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
        }
        super().__init__(params, defaults)

    # ---- state ----

    def _state_dtype_for(self, p: torch.Tensor) -> torch.dtype:
        if self._state_dtype is None or p.dtype == torch.float64 or torch.is_complex(p):
            return p.dtype
        return self._state_dtype

    def _wants_master(self, p: torch.Tensor) -> bool:
        return self._master_weights and p.dtype in LOW_PRECISION

    def _new_step(self, p: torch.Tensor, capturable: bool) -> torch.Tensor:
        return torch.zeros((), dtype=_get_scalar_dtype(), device=p.device if capturable else None)

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        dtype = self._state_dtype_for(p)
        state = {
            "step": self._new_step(p, group["capturable"]),
            "square_avg": torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format),
            "acc_delta": torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format),
        }
        if self._wants_master(p):
            state["master_param"] = p.detach().to(torch.float32, memory_format=torch.preserve_format, copy=True)
        return state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if self._flatten:
            self._flatten_group(self.param_groups[-1])

    def _flatten_group(self, group: dict[str, Any]) -> None:
        by_kind: dict[tuple, list[torch.Tensor]] = {}
        for p in group["params"]:
            by_kind.setdefault((p.device, p.dtype), []).append(p)
        flats = []
        for params in by_kind.values():
            flat = FlatGroup.build(params, self._state_dtype_for(params[0]), self._wants_master(params[0]))
            for p, offset in zip(params, flat.offsets):
                self.state[p] = {"step": self._new_step(p, group["capturable"]), **flat.state_views(p, offset)}
                flat.steps.append(self.state[p]["step"])
            flats.append(flat)
        self._flat_groups.append(flats)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("differentiable", False)
            group.setdefault("capturable", False)
            group.setdefault("backend", "auto")
            for p in group["params"]:
                p_state = self.state.get(p, [])
                if len(p_state) != 0 and not torch.is_tensor(p_state["step"]):
                    device = p.device if group["capturable"] else None
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=_get_scalar_dtype(), device=device)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load, except that accumulators keep this optimizer's state dtype (torch casts them to
        the param dtype, which would round fp32 state of bf16 params), master copies stay fp32, and
        flattened state is copied into the flat buffers."""
        saved_groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        flat_state = dict(self.state) if self._flatten else {}
        super().load_state_dict({**state_dict, "state": {}})
        self.state.update(flat_state)
        param_of = {
            saved_id: p
            for saved, group in zip(saved_groups, self.param_groups)
            for saved_id, p in zip(saved["params"], group["params"])
        }
        group_of = {p: group for group in self.param_groups for p in group["params"]}
        for saved_id, saved in saved_state.items():
            p = param_of[saved_id]
            target = self.state[p] if self._flatten else self._init_state(p, group_of[p])
            with torch.no_grad():
                for key, value in saved.items():
                    if key == "master_param" and not self._wants_master(p):
                        continue  # saved with master weights, loaded without: the param itself is the value
                    if key == "step" and key in target:
                        target[key] = value.to(device=target[key].device, dtype=target[key].dtype, copy=True)
                    elif key in target and isinstance(value, torch.Tensor):
                        target[key].copy_(value)  # casts into our dtype; a flat view stays a view
                    elif key not in target:
                        target[key] = value
            self.state[p] = target

    # ---- step ----

    def zero_grad(self, set_to_none: bool = True) -> None:
        """With ``flatten``, gradients are views of one buffer: always zeroed in place, never set to None."""
        if not self._flatten:
            return super().zero_grad(set_to_none)
        for flats in self._flat_groups:
            for flat in flats:
                flat.zero_grad()

    def _grad_mode(self, grad_scale) -> str:
        if self._zero_grad_in_step:
            return "zero"
        return "unscale" if grad_scale is not None else "keep"

    def _gather(self, group):
        """Per-param lists for one group, split into params with and without an fp32 master copy.

        This loop runs over every param each step, so it does only what it must (about 1 us a param).
        """
        without_master = ([], [], [], [], [], [])
        with_master = ([], [], [], [], [], [])
        state_of = self.state
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError("Adadelta does not support sparse gradients")
            state = state_of[p]
            if not state:
                state.update(self._init_state(p, group))
            master = state.get("master_param")
            lists = without_master if master is None else with_master
            lists[0].append(p)
            lists[1].append(grad)
            lists[2].append(state["square_avg"])
            lists[3].append(state["acc_delta"])
            lists[4].append(state["step"])
            if master is not None:
                lists[5].append(master)
        return [lists for lists in (without_master, with_master) if lists[0]]

    @_use_grad_for_differentiable
    def step(self, closure=None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the loss.
        """
        self._accelerator_graph_capture_health_check()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        for index, group in enumerate(self.param_groups):
            if group["differentiable"]:
                self._torch_step(group)
                continue
            hyper = dict(
                lr=group["lr"],
                rho=group["rho"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                maximize=group["maximize"],
                grad_scale=grad_scale,
                found_inf=found_inf,
                grad_mode=self._grad_mode(grad_scale),
                backend=group["backend"],
            )
            if self._stochastic_rounding:
                group["rounding_step"] = group.get("rounding_step", 0) + 1
                hyper.update(stochastic_rounding=True, rounding_key=rounding_key(self._seed, group["rounding_step"]))
            if self._flatten:
                for flat in self._flat_groups[index]:
                    flat.check_views()
                    masters = [flat.master] if flat.master is not None else None
                    adadelta_(
                        [flat.param], [flat.grad], [flat.square_avg], [flat.acc_delta], flat.steps,
                        master_params=masters, **self._rounding_for(masters, hyper),
                    )
                continue
            for params, grads, square_avgs, acc_deltas, steps, masters in self._gather(group):
                adadelta_(
                    params, grads, square_avgs, acc_deltas, steps,
                    master_params=masters or None, **self._rounding_for(masters, hyper),
                )
        return loss

    @staticmethod
    def _rounding_for(masters, hyper: dict[str, Any]) -> dict[str, Any]:
        """Stochastic rounding is for params without a master copy (the copy already keeps the bits)."""
        if masters and hyper.get("stochastic_rounding"):
            return {**hyper, "stochastic_rounding": False}
        return hyper

    def _torch_step(self, group: dict[str, Any]) -> None:
        gathered = self._gather(group)  # differentiable takes no master weights: at most one list set
        if not gathered:
            return
        params, grads, square_avgs, acc_deltas, steps, _ = gathered[0]
        torch_adadelta(
            params, grads, square_avgs, acc_deltas, steps,
            lr=group["lr"], rho=group["rho"], eps=group["eps"], weight_decay=group["weight_decay"],
            maximize=group["maximize"], differentiable=True, capturable=group["capturable"],
            foreach=False, has_complex=any(torch.is_complex(p) for p in params),
        )


FusedAdadelta = Adadelta
