"""``adadelta_``: one fused Adadelta step over tensor lists, grouped by (device, dtype) and dispatched."""

from __future__ import annotations

import torch

from . import _extension, backends
from ._compat import group_by_device_and_dtype
from .contract import GradMode, StepScalars, check_lr


def _advance_steps(state_steps: list[torch.Tensor], found_inf: torch.Tensor | None) -> None:
    """``step += 1 - found_inf``: a skipped step leaves the counters alone, with no sync on the device."""
    if not state_steps:
        return
    steps_op = _extension.steps_op()
    if steps_op is not None and state_steps[0].is_cpu and (found_inf is None or found_inf.is_cpu):
        steps_op(state_steps, found_inf)  # one C++ loop instead of a dispatch per counter
        return
    if found_inf is None:
        # A CPU scalar tensor as the operand keeps CPU steps on foreach's fast path (as torch does).
        one = torch.tensor(1.0, device=state_steps[0].device) if state_steps[0].is_cpu else 1
        torch._foreach_add_(state_steps, one)
        return
    increment = 1 - found_inf
    for device, steps in _by_device(state_steps).items():
        torch._foreach_add_(steps, increment.to(device, non_blocking=True))


def _by_device(tensors: list[torch.Tensor]) -> dict[torch.device, list[torch.Tensor]]:
    grouped: dict[torch.device, list[torch.Tensor]] = {}
    for tensor in tensors:
        grouped.setdefault(tensor.device, []).append(tensor)
    return grouped


def _as_real(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Adadelta treats a complex number as two real ones (as torch does with view_as_real)."""
    return [torch.view_as_real(t) for t in tensors]


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
    given, are advanced by one unless ``found_inf`` is set.
    """
    n = len(params)
    for name, tensors in (("grads", grads), ("square_avgs", square_avgs), ("acc_deltas", acc_deltas)):
        if len(tensors) != n:
            raise ValueError(f"{name} has {len(tensors)} tensors but params has {n}")
    if master_params is not None and master_params and len(master_params) != n:
        raise ValueError(f"master_params has {len(master_params)} tensors but params has {n}")
    check_lr(lr)
    scalars = StepScalars(
        lr=lr,
        rho=float(rho),
        eps=float(eps),
        weight_decay=float(weight_decay),
        maximize=bool(maximize),
        grad_scale=grad_scale,
        found_inf=found_inf,
        grad_mode=GradMode.parse(grad_mode),
        stochastic_rounding=bool(stochastic_rounding),
        rounding_key=int(rounding_key) & 0xFFFFFFFF,
    )
    lists = [params, grads, square_avgs, acc_deltas] + ([master_params] if master_params else [])
    grouped = group_by_device_and_dtype(lists)
    for (device, dtype), (group, _) in grouped.items():
        group_params, group_grads, group_sq, group_acc = (
            (_as_real(tensors) for tensors in group[:4]) if dtype.is_complex else group[:4]
        )
        group_master = group[4] if master_params else None
        module = backends.resolve(backend, device)
        group_scalars = scalars
        if isinstance(lr, torch.Tensor) and lr.device != device and not lr.is_cpu:
            group_scalars = StepScalars(**{**scalars.__dict__, "lr": lr.to(device)})
        module.check_group(group_params, group_grads, group_sq, group_acc, group_master, group_scalars)
        module.step_(group_params, group_grads, group_sq, group_acc, group_master, group_scalars)
    if state_steps is not None:
        _advance_steps(state_steps, found_inf)
