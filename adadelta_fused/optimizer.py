"""``Adadelta``: a drop-in for ``torch.optim.Adadelta`` whose step is one fused pass per tensor group."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.adadelta import adadelta as torch_adadelta
from torch.optim.optimizer import Optimizer, ParamsT, _get_scalar_dtype, _use_grad_for_differentiable

from .contract import check_hyperparameters
from .functional import adadelta_


class Adadelta(Optimizer):
    """torch.optim.Adadelta with the same arguments, defaults, errors and state, plus ``backend``.

    ``backend`` is ``"auto"`` (the fastest that can run), ``"cpp"``, ``"triton"`` or ``"reference"``; the
    environment variable ``ADADELTA_FUSED_BACKEND`` overrides ``"auto"``. ``foreach`` is accepted for
    compatibility and has no effect: every step is fused. ``differentiable=True`` needs autograd through
    the update, which a fused kernel cannot give, so it runs torch's own implementation.

    GradScaler support: when GradScaler sets ``grad_scale`` and ``found_inf`` on the optimizer, the
    gradients are unscaled inside the fused pass, and a step with an inf/NaN gradient changes nothing.
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
    ) -> None:
        check_hyperparameters(lr, rho, eps, weight_decay)
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

    def _init_group(self, group, params, grads, square_avgs, acc_deltas, state_steps) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("Adadelta does not support sparse gradients")
            params.append(p)
            grads.append(p.grad)
            state = self.state[p]
            if len(state) == 0:
                step_device = p.device if group["capturable"] else None
                state["step"] = torch.zeros((), dtype=_get_scalar_dtype(), device=step_device)
                state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["acc_delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            square_avgs.append(state["square_avg"])
            acc_deltas.append(state["acc_delta"])
            state_steps.append(state["step"])

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
        for group in self.param_groups:
            params, grads, square_avgs, acc_deltas, state_steps = [], [], [], [], []
            self._init_group(group, params, grads, square_avgs, acc_deltas, state_steps)
            if not params:
                continue
            if group["differentiable"]:
                torch_adadelta(
                    params, grads, square_avgs, acc_deltas, state_steps,
                    lr=group["lr"], rho=group["rho"], eps=group["eps"], weight_decay=group["weight_decay"],
                    maximize=group["maximize"], differentiable=True, capturable=group["capturable"],
                    foreach=False, has_complex=any(torch.is_complex(p) for p in params),
                )
                continue
            adadelta_(
                params,
                grads,
                square_avgs,
                acc_deltas,
                state_steps,
                lr=group["lr"],
                rho=group["rho"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                maximize=group["maximize"],
                grad_scale=grad_scale,
                found_inf=found_inf,
                grad_mode="unscale" if grad_scale is not None else "keep",
                backend=group["backend"],
            )
        return loss


FusedAdadelta = Adadelta
