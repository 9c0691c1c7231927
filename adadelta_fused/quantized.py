"""8-bit state in ``Adadelta(..., state_dtype=torch.uint8)``: the state's tensors, its conversions, and the steps.

The format and the step are ``adadelta_fused.quantized_reference``'s; the op is ``adadelta_fused::quantized_adadelta_``
(``adadelta_fused.quantized_ops``). A param with 8-bit state keeps torch's keys, with uint8 codes in them, and one
fp32 scale vector per accumulator:

    ``step``                 as torch's
    ``square_avg``           uint8 codes, the param's shape and layout
    ``acc_delta``            uint8 codes
    ``square_avg_scale``     fp32 ``[ceil(numel / 256)]``
    ``acc_delta_scale``      fp32 ``[ceil(numel / 256)]``

2 + 8 / 256 = 2.03 bytes of state per param instead of 8 (fp32 state). fp32, bf16 and fp16 params take 8-bit
state; fp64 and complex params keep their own dtype, as with ``state_dtype=torch.bfloat16``.

The codes stand for ``sqrt(x + eps)`` (quantized_reference), so every conversion takes the eps of the param's
group. ``state_dict()`` saves the codes and scales, and ``load_state_dict`` loads them back bit for bit. Loading a
state dict with fp32 (or any floating) accumulators into an optimizer with 8-bit state quantizes them, and
loading 8-bit state into one with floating state dequantizes it, automatically. ``torch.optim.Adadelta`` knows
nothing of codes: give it ``dequantize_state_dict(opt.state_dict())``.

Not supported with 8-bit state (each raises, naming it): DTensor params (FSDP2: the blocks would have to
follow the shards), sparse gradients.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from . import backends, dtensor
from .contract import StepScalars
from .functional import StepPlan, _check_lengths, check_steps, place_scalars, resolve_negated
from .layout import is_dense
from .quantized_reference import MIN_SCALE, dequantize, dequantize_roots, num_blocks, quantize, quantize_roots

QUANTIZED = torch.uint8
ACCUMULATORS = ("square_avg", "acc_delta")
SCALE_KEYS = {"square_avg": "square_avg_scale", "acc_delta": "acc_delta_scale"}


def is_quantized(state: dict[str, Any]) -> bool:
    return "square_avg_scale" in state


def new_state(p: torch.Tensor) -> dict[str, torch.Tensor]:
    """Zero accumulators: all codes 0 (laid out as ``p`` is walked), which decode to the floor sqrt(eps), an R
    whose value fma(R, R, -eps) is 0 up to the floor's rounding (1e-13 at eps 1e-6), whatever eps is; and the
    smallest scale."""
    state = {}
    for key in ACCUMULATORS:
        state[key] = _walk_like(p).zero_()
        state[SCALE_KEYS[key]] = torch.full((num_blocks(p.numel()),), MIN_SCALE, dtype=torch.float32, device=p.device)
    return state


def floating_values(codes: torch.Tensor, scales: torch.Tensor, eps: float) -> torch.Tensor:
    """An 8-bit accumulator's fp32 values for floating state, in the codes' shape and layout. The codes share the
    param's layout, which fixes the blocks (quantized_reference.walk_positions). A decoded value below 0 becomes
    0: the floor's square rounds below eps for some eps (-4.4e-16 at 1e-8), and an accumulator of floating state
    is never negative (an optimizer whose eps is later lowered below about 4e-16 would take the root of one)."""
    return _like(dequantize(codes, scales, codes, eps).clamp_min_(0.0), codes)


def to_floating(state: dict[str, Any], dtype: torch.dtype, eps: float) -> None:
    """Replace 8-bit accumulators by their values in ``dtype`` (in place in ``state``)."""
    for key in ACCUMULATORS:
        state[key] = floating_values(state[key], state.pop(SCALE_KEYS[key]), eps).to(dtype)


def to_quantized(p: torch.Tensor, state: dict[str, Any], eps: float) -> None:
    """Replace floating accumulators (param's shape) by 8-bit ones (in place in ``state``)."""
    for key in ACCUMULATORS:
        codes, scales = quantize(state[key].detach().to(torch.float32), p, eps)
        state[key] = _walk_like(p).copy_(codes)
        state[SCALE_KEYS[key]] = scales


def walk_layout(p: torch.Tensor) -> torch.Tensor:
    """The tensor whose memory order the kernels walk for ``p``: ``p`` when it is dense, else its contiguous
    copy (op_host.cpp DenseGroup). A param's codes must have this layout's strides: the blocks are runs of it."""
    return p if is_dense(p) else p.contiguous()


def _walk_strides(p: torch.Tensor) -> tuple[int, ...]:
    """``walk_layout(p).stride()``, without the copy."""
    if is_dense(p):
        return p.stride()
    strides, step = [], 1
    for size in reversed(p.shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _walk_like(p: torch.Tensor) -> torch.Tensor:
    """Uninitialized codes for ``p``, with the strides of its walk. Not ``empty_like(p, preserve_format)``: for a
    non-dense view that follows the view's suggested format (channels_last for ``base_cl[::2]``), where the kernels
    walk the view's contiguous copy."""
    return torch.empty_strided(p.shape, _walk_strides(p), dtype=QUANTIZED, device=p.device)


def laid_out_like(codes: torch.Tensor, p: torch.Tensor) -> bool:
    """Whether ``codes`` have the strides of ``p``'s walk (dims of size 1 aside: their stride moves nothing)."""
    if codes.shape != p.shape:
        return False
    # The usual case, asked of every param at every step: torch keeps both flags. With check_supported's one
    # call for all params, the host time of a step of 1024 params of 256 elements (one thread) went from 5.8
    # to 3.7 us a param; the stride walk below was most of the difference.
    if p.is_contiguous() and codes.is_contiguous():
        return True
    return all(a == b for size, a, b in zip(p.shape, codes.stride(), _walk_strides(p)) if size > 1)


def codes_laid_out(p: torch.Tensor, state: dict[str, Any]) -> bool:
    """Whether both accumulators' codes are laid out as ``p`` is walked (else ``relayout``)."""
    return all(laid_out_like(state[key], p) for key in ACCUMULATORS)


def relayout(p: torch.Tensor, state: dict[str, Any]) -> None:
    """Re-encode 8-bit accumulators whose codes are not laid out as ``p`` is walked (``model.to(memory_format=
    torch.channels_last)`` after some steps, a checkpoint saved from another layout): their blocks were runs of
    the old layout, so each is decoded in that layout and encoded in the new one. R itself is re-encoded, without
    the floor (eps 0): no eps is needed, and R below it keeps decoding to it."""
    layout = walk_layout(p)
    for key in ACCUMULATORS:
        codes = state[key]
        if laid_out_like(codes, p):
            continue
        roots = dequantize_roots(codes, state[SCALE_KEYS[key]], codes, 0.0)
        new_codes, state[SCALE_KEYS[key]] = quantize_roots(roots, layout)
        state[key] = _like(new_codes, torch.empty_like(layout, dtype=QUANTIZED))


def _like(values: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
    """``values`` in a new tensor with ``layout``'s shape, strides and device."""
    out = torch.empty_strided(layout.shape, layout.stride(), dtype=values.dtype, device=layout.device)
    out.copy_(values)
    return out


def convert_saved(saved: dict[str, Any], p: torch.Tensor, quantized: bool, eps: float) -> dict[str, Any]:
    """A saved param state in the representation of the optimizer loading it: 8-bit state is quantized or
    dequantized as needed (with the eps of ``p``'s group), or re-encoded in ``p``'s layout; anything else is left
    as saved."""
    if not saved or not all(isinstance(saved.get(key), torch.Tensor) for key in ACCUMULATORS):
        return saved
    if is_quantized(saved) and quantized:
        if all(laid_out_like(saved[key], p) for key in ACCUMULATORS):
            return saved
        converted = {**saved, **{key: saved[key].to(p.device) for key in (*ACCUMULATORS, *SCALE_KEYS.values())}}
        relayout(p, converted)
        return converted
    if is_quantized(saved) == quantized:
        return saved
    converted = dict(saved)
    state = {key: saved[key].to(p.device) for key in ACCUMULATORS}
    if quantized:
        to_quantized(p, state, eps)  # (integer accumulators too, cast to fp32 as torch casts them to the param's dtype)
    else:
        for key in ACCUMULATORS:
            state[SCALE_KEYS[key]] = saved[SCALE_KEYS[key]].to(p.device)
        to_floating(state, torch.float32, eps)
        for key in SCALE_KEYS.values():
            converted.pop(key, None)
    converted.update(state)
    return converted


def dequantize_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``state_dict`` with every 8-bit accumulator replaced by its fp32 values and the scales
    dropped: what ``torch.optim.Adadelta.load_state_dict`` (or an optimizer with floating state) loads. Each
    param's codes carry its shape and layout, which fix the blocks; its group's saved eps, what they stand for."""
    eps_of = {key: group["eps"] for group in state_dict["param_groups"] for key in group["params"]}
    out = copy.copy(state_dict)
    out["state"] = {}
    for key, saved in state_dict["state"].items():
        if is_quantized(saved):
            saved = dict(saved)
            for name in ACCUMULATORS:
                saved[name] = floating_values(saved[name], saved.pop(SCALE_KEYS[name]), eps_of[key])
        out["state"][key] = saved
    return out


def check_supported(params: list[torch.Tensor]) -> None:
    if dtensor.any_dtensor(params):
        raise RuntimeError(
            "state_dtype=torch.uint8 does not support DTensor params (FSDP2): its 256-element blocks would have to "
            "follow the shards; use state_dtype=torch.bfloat16 or None with FSDP2"
        )


@dataclass
class QuantizedCall:
    """One backend call of the quantized op: one (device, dtype) group with its scales (``BackendCall``'s
    interface, so that ``StepPlan`` runs it)."""

    module: object
    device: torch.device
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    square_avgs: list[torch.Tensor]
    acc_deltas: list[torch.Tensor]
    master_params: list[torch.Tensor] | None
    square_avg_scales: list[torch.Tensor]
    acc_delta_scales: list[torch.Tensor]
    scalars: StepScalars

    def _arguments(self) -> tuple:
        return (self.params, self.grads, self.square_avgs, self.acc_deltas, self.master_params,
                self.square_avg_scales, self.acc_delta_scales, self.scalars)

    def check(self) -> None:
        from .contract import quantized_op_arguments
        from .quantized_ops import check_quantized_args

        check_quantized_args(*quantized_op_arguments(*self._arguments()), self.device.type)

    def run(self) -> None:
        self.module.quantized_step_(*self._arguments())

    def with_step(self, grads: list[torch.Tensor], scalars: StepScalars) -> QuantizedCall:
        """This call with another step's grads and scalars (``BackendCall.with_step``: a cached plan's)."""
        return QuantizedCall(self.module, self.device, self.params, grads, self.square_avgs, self.acc_deltas,
                             self.master_params, self.square_avg_scales, self.acc_delta_scales, scalars)


def plan(params, grads, square_avgs, acc_deltas, state_steps, scalars: StepScalars, master_params,
         square_avg_scales, acc_delta_scales, backend: str | None, step_counters=None) -> StepPlan:
    """``functional.plan`` for 8-bit state: group by (device, dtype), place the scalars; nothing is written."""
    _check_lengths(params, grads, square_avgs, acc_deltas, master_params)
    check_supported(params)
    grads, write_back = resolve_negated(grads, scalars)
    groups: dict[tuple, list[int]] = {}
    for index, p in enumerate(params):
        groups.setdefault((p.device, p.dtype), []).append(index)
    calls, copies = [], {}
    for (device, _), indices in groups.items():
        pick = lambda tensors: [tensors[i] for i in indices]  # noqa: E731
        calls.append(QuantizedCall(
            backends.resolve(backend, device), device, pick(params), pick(grads), pick(square_avgs),
            pick(acc_deltas), pick(master_params) if master_params else None, pick(square_avg_scales),
            pick(acc_delta_scales), place_scalars(scalars, device, copies),
        ))
    return StepPlan(calls, state_steps, step_counters, check_steps(state_steps), scalars.found_inf, write_back)
