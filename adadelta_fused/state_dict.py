"""Loading an optimizer state dict: what must hold before anything is changed, and the forms saved values take.

A checkpoint that does not fit the optimizer (a state id no param group lists, an accumulator of another
shape, a missing key) is refused with the param and the key named, before the optimizer is touched.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import torch
from torch.optim.optimizer import _get_scalar_dtype

from .dtensor import describe, is_dtensor

REQUIRED_KEYS = ("step", "square_avg", "acc_delta")
SHAPED_KEYS = ("square_avg", "acc_delta", "master_param")
STATE_KEYS = ("step", "square_avg", "acc_delta", "master_param", "square_avg_scale", "acc_delta_scale")


def check_loadable(param_groups: list[dict[str, Any]], state_dict: dict[str, Any]) -> dict[Any, torch.Tensor]:
    """Raise if ``state_dict`` cannot load into these param groups; return saved param id -> param."""
    saved_groups = state_dict["param_groups"]
    # torch's own checks and messages (Optimizer.load_state_dict), made before ours.
    if len(param_groups) != len(saved_groups):
        raise ValueError("loaded state dict has a different number of parameter groups")
    if any(len(g["params"]) != len(s["params"]) for g, s in zip(param_groups, saved_groups)):
        raise ValueError(
            "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"
        )
    param_of = dict(zip(chain.from_iterable(s["params"] for s in saved_groups),
                        chain.from_iterable(g["params"] for g in param_groups)))
    for saved_id, saved in state_dict["state"].items():
        if saved_id not in param_of:
            raise ValueError(
                f"loaded state dict has state for param id {saved_id!r}, which none of its param groups lists "
                f"(they list {sorted(param_of, key=str)})"
            )
        if not saved:
            continue
        param = param_of[saved_id]
        where = f"loaded state of param {saved_id!r} (shape {tuple(param.shape)})"
        if not isinstance(saved, dict):
            raise ValueError(f"{where} is a {type(saved).__name__}, expected a dict")
        missing = [key for key in REQUIRED_KEYS if key not in saved]
        if missing:
            raise ValueError(f"{where} lacks {', '.join(map(repr, missing))}")
        for key in SHAPED_KEYS:
            value = saved.get(key)
            if key not in saved:
                continue
            if not isinstance(value, torch.Tensor) or value.shape != param.shape:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"{where}: {key!r} has shape {shape}, expected {tuple(param.shape)}")
            if is_dtensor(value) != is_dtensor(param):
                # Neither kind copies into the other; found here, before anything is loaded.
                raise ValueError(
                    f"{where}: {key!r} is {describe(value)}, but the param is {describe(param)}. A state dict "
                    "saved by one FSDP2 rank holds only its shards: load it with torch.distributed.checkpoint "
                    "(dcp.load and set_optimizer_state_dict), which reshards it for the model at hand"
                )
        _check_eight_bit(where, saved, param)
        step = saved["step"]
        if is_dtensor(step):
            # (torch keeps a plain step beside DTensor accumulators; ours advances plain counters only)
            raise ValueError(f"{where}: 'step' is {describe(step)}, expected a plain tensor or a number")
        if isinstance(step, torch.Tensor) and step.numel() != 1:
            raise ValueError(f"{where}: 'step' has {step.numel()} elements, expected 1")
        if not isinstance(step, (torch.Tensor, int, float)):
            raise ValueError(f"{where}: 'step' is a {type(step).__name__}, expected a number or a tensor")
    return param_of


def _check_eight_bit(where: str, saved: dict[str, Any], param: torch.Tensor) -> None:
    """8-bit accumulators (adadelta_fused.quantized) come as uint8 codes with their scales, or not at all."""
    keys = (("square_avg", "square_avg_scale"), ("acc_delta", "acc_delta_scale"))
    coded_keys = [isinstance(saved[key], torch.Tensor) and saved[key].dtype == torch.uint8 for key, _ in keys]
    if coded_keys[0] != coded_keys[1]:
        only = keys[0][0] if coded_keys[0] else keys[1][0]
        raise ValueError(f"{where}: only {only!r} is uint8 codes; 8-bit state holds both accumulators as codes "
                         "(with their scales), floating state neither")
    for (key, scale_key), coded in zip(keys, coded_keys):
        scales = saved.get(scale_key)
        if coded != (scale_key in saved):
            raise ValueError(
                f"{where}: {key!r} is {'uint8 codes without' if coded else 'not uint8 codes but has'} {scale_key!r}; "
                "8-bit state needs both (a state dict from Adadelta(state_dtype=torch.uint8))"
            )
        blocks = -(-param.numel() // 256)
        if coded and (not isinstance(scales, torch.Tensor) or scales.dtype != torch.float32
                      or tuple(scales.shape) != (blocks,)):
            described = f"{scales.dtype} of shape {tuple(scales.shape)}" if isinstance(scales, torch.Tensor) else (
                type(scales).__name__)
            raise ValueError(f"{where}: {scale_key!r} is {described}, expected float32 of shape ({blocks},)")


def check_installable(saved_id, saved: dict[str, Any], param: torch.Tensor, quantized: bool) -> None:
    """Raise for a saved param state (one ``check_loadable`` took) whose values would fail while they are
    installed: a meta tensor for a param that is not (torch's load raises NotImplementedError there too), a
    state tensor of a layout other than strided (a sparse ``square_avg``), complex accumulators for 8-bit state."""
    where = f"loaded state of param {saved_id!r} (shape {tuple(param.shape)})"
    for key, value in saved.items():
        # (a meta param takes meta values: an optimizer built over a model not yet materialized loads its own)
        if not param.is_meta and any(tensor.is_meta for tensor in _tensors_in(value)):
            raise NotImplementedError(f"{where}: {key!r} holds a meta tensor, which has no values to load")
        if key in STATE_KEYS and isinstance(value, torch.Tensor) and value.layout != torch.strided:
            raise ValueError(f"{where}: {key!r} has layout {value.layout}; optimizer state is strided tensors")
    if quantized:
        for key in ("square_avg", "acc_delta"):
            if saved.get(key) is not None and saved[key].is_complex():
                raise ValueError(f"{where}: {key!r} is {saved[key].dtype}; 8-bit state holds real accumulators")


def _tensors_in(value) -> list[torch.Tensor]:
    """The tensors of a saved value, in dicts, lists and tuples too (as torch's load walks them)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in _tensors_in(item)]
    return []


def loaded_step(value, current: torch.Tensor, capturable: bool, device: torch.device) -> torch.Tensor:
    """A saved step as torch keeps it: a float (torch's format before 1.12) becomes a 0-d tensor; a
    capturable group keeps it in fp32 on the param's device."""
    if not isinstance(value, torch.Tensor):
        value = torch.tensor(float(value), dtype=_get_scalar_dtype())
    value = value.reshape(())  # a 1-element counter of shape (1,) loads into the 0-d one torch keeps
    if capturable:
        return value.to(dtype=torch.float32, device=device, copy=True)
    return value.to(dtype=current.dtype, device=current.device, copy=True)


def cast_like_torch(value, param: torch.Tensor):
    """A saved value of a key the optimizer does not keep itself, as torch's load casts it
    (``Optimizer._process_value_according_to_param_policy``): a tensor moves to the param's device, and to
    its dtype when the param is floating; dicts, lists and tuples are rebuilt around their cast values."""
    if isinstance(value, torch.Tensor):
        if param.is_floating_point():
            return value.to(dtype=param.dtype, device=param.device)
        return value.to(device=param.device)
    if isinstance(value, dict):
        return {key: cast_like_torch(item, param) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cast_like_torch(item, param) for item in value)
    return value
