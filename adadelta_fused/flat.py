"""Flat buffers: one contiguous allocation per (param group, device, dtype), with every param a view of it.

A flattened group's step is one kernel call over four (or five) contiguous buffers, with no per-tensor
metadata at all, and ``zero_grad`` is one memset. Each tensor starts on a 16-byte boundary, so the
128-bit vector path of the CUDA and Triton kernels always applies.

Frozen params (``requires_grad=False`` and no grad) stay out of the buffers, as torch never steps them.

Gradients set to None (``model.zero_grad()``, the Hugging Face Trainer, Lightning) are allowed: the next
backward makes new gradient tensors, and the step copies each into its slot of the flat buffer and makes
the param's grad the view again. That is one extra pass over those gradients (8 bytes per fp32 element,
read and write, against the step's 28), once per step while grads keep being set to None. A param still
without a grad at the step is skipped, as torch skips it: the kernel runs over the ranges around it.

Edits of ``param_groups`` between steps (groups reordered or removed, params moved between groups, a
group's list replaced) are followed as torch follows them: at the next step each edited group is flattened
anew, its params and state copied into new buffers. Params left viewing the buffer of a flat optimizer that
is gone (a second training phase) are flattened again by a new one; those of a living one are refused.

What breaks the views, and raises at the next step instead of silently training a detached copy:
assigning ``param.data = ...``, ``param.set_(...)``, or moving the model with ``model.to(...)`` after the
optimizer was built. DTensor params (FSDP2, tensor parallel) cannot be flattened at all: their storage is
the engine's, which re-shards it and replaces their grads itself.
"""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from . import _extension, dtensor
from .contract import param_label
from .layout import is_dense
from .quantized_reference import BLOCK as QUANT_BLOCK
from .quantized_reference import MIN_SCALE, num_blocks

ALIGN_BYTES = 16

# The storage of every flat param buffer this process made, with its FlatGroup while that lives. The params
# stay views of a buffer after its optimizer is gone (a second training phase, an optimizer made again): such
# params are flattened again like any others, while those of a living flat optimizer are refused (each
# would step them in a buffer of its own). Keys are weak: an entry goes with the buffer's last view.
_FLAT_BUFFERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _listed_owner(p: torch.Tensor, storage, optimizer) -> "FlatGroup | None":
    """The living FlatGroup whose buffer (``storage``) ``p`` views, unless it is ``optimizer``'s, while its own
    optimizer still lists ``p`` (one that took it out of its groups lets the buffer go at its next step). The
    owning optimizer is asked first: the listing scans are the params' and the groups' whole lists, which a
    re-flattening of this optimizer's own edited group would otherwise run for each of its params."""
    ref = _FLAT_BUFFERS.get(storage)
    owner = None if ref is None else ref()
    owning = None if owner is None or owner.owner is None else owner.owner()
    if owning is None or owning is optimizer:
        return None
    if not any(q is p for q in owner.params):
        return None
    if not any(q is p for group in owning.param_groups for q in group["params"]):
        return None
    return owner


def _foreign_owner(p: torch.Tensor, storage, optimizer=None) -> "FlatGroup | None":
    """``_listed_owner`` of ``p``. An optimizer just deleted may still wait in a reference cycle: one collection
    decides (about 0.2 s on a large heap, only where such an owner is found, and then once: the next params of a
    collected buffer find it gone)."""
    if _listed_owner(p, storage, optimizer) is None:
        return None
    gc.collect()
    return _listed_owner(p, storage, optimizer)


def check_not_flattened_elsewhere(params: list[torch.Tensor], optimizer) -> None:
    """Raise, naming the param, if one of ``params`` (a group ``optimizer`` flattens anew after an edit) is in the
    flat buffer of another living optimizer that still lists it."""
    for index, p in enumerate(params):
        if _foreign_owner(p, p.untyped_storage(), optimizer) is not None:
            raise ValueError(
                f"flatten=True: param {index} (shape {tuple(p.shape)}) of an edited param group is in the flat "
                "buffer of another optimizer built with flatten=True, which still steps it there: take it out "
                "of that optimizer's groups first, or use flatten=False"
            )


def check_not_shared_by_copy(param_groups: list[dict], optimizer) -> None:
    """A copy of a flat optimizer builds buffers of its own around its params; raise if those are still the
    params a living optimizer steps in its buffers: ``copy.copy`` shares the original's params, and moving them
    into the copy's buffers would take them out of the original's (its next step raised)."""
    for group in param_groups:
        for p in group["params"]:
            if _foreign_owner(p, p.untyped_storage(), optimizer) is not None:
                raise TypeError(
                    "a shallow copy (copy.copy) of an Adadelta with flatten=True would share the original's "
                    "params and move them out of its flat buffers: use copy.deepcopy (of the model and the "
                    "optimizer together, to train the copy)"
                )


def zero_as_torch_does(grad: torch.Tensor) -> None:
    """``Optimizer.zero_grad(set_to_none=False)`` on one grad: out of autograd (``detach_`` only where it has
    a grad_fn: a view grad, DDP's bucket view say, cannot be detached in place), then zeroed in place."""
    if grad.grad_fn is not None:
        grad.detach_()
    else:
        grad.requires_grad_(False)
    grad.zero_()


def _view_status(params: list[torch.Tensor], buffer: torch.Tensor, grad_buffer: torch.Tensor,
                 expected: torch.Tensor, grad_views: list[torch.Tensor],
                 frozen_have_none: bool) -> tuple[int, list[int], list[int]]:
    """(the first param that left the buffer or -1, the params without a grad (with ``frozen_have_none``,
    also those that no longer require grad and still hold their zeroed view), those whose grad is not their
    view): one native pass when the extension is loaded (csrc/ops.cpp flat_view_status), which also keeps in
    ``expected`` the addresses of the objects it found (``FlatGroup._expected``)."""
    ext = _extension.module()
    if ext is not None:
        if torch.compiler.is_compiling():
            return _extension.untraced("flat_view_status")(params, buffer, grad_buffer, expected, frozen_have_none)
        return ext.flat_view_status(params, buffer, grad_buffer, expected, frozen_have_none)

    def views(t: torch.Tensor, storage: torch.Tensor, offset: int) -> bool:
        return t.untyped_storage().data_ptr() == storage.untyped_storage().data_ptr() and t.storage_offset() == offset

    skipped, foreign = [], []
    for index, (p, (offset, *_)) in enumerate(zip(params, expected.tolist())):
        if not views(p, buffer, offset):
            return index, skipped, foreign
        if p.grad is None:
            skipped.append(index)
        elif p.grad is not grad_views[index] or not views(p.grad, grad_buffer, offset):
            foreign.append(index)
        elif frozen_have_none and not p.requires_grad:
            skipped.append(index)
    return -1, skipped, foreign


def check_flattenable(params: list[torch.Tensor], *, shared_ok: bool = False, labels: list[str] | None = None) -> None:
    """Raise, naming the param, if ``params`` (one buffer's worth) cannot be moved into a flat buffer.
    ``labels``: how each param is named (``param k of param group g``: a buffer holds one (device, dtype)
    of a group, so its own numbering is not the user's)."""
    storages: dict[int, int] = {}
    for index, p in enumerate(params):
        name = _label(labels, index)
        if dtensor.any_dtensor([p]):
            raise ValueError(
                f"flatten=True cannot take {name} (shape {tuple(p.shape)}): it is a DTensor with "
                f"placements {tuple(p.placements)}, whose local storage belongs to FSDP2 or tensor parallel "
                "(they re-shard it and replace its grad each step). Use flatten=False: a DTensor group's "
                "step is already one fused kernel call per (device, dtype) over the local shards"
            )
        if p.is_meta:
            raise ValueError(
                f"flatten=True cannot take {name} (shape {tuple(p.shape)}): it is on the meta device, whose "
                "tensors have no memory to move into a buffer. Build the optimizer after the model has its "
                "memory (`model.to_empty(device=...)` and its initialization), or use flatten=False"
            )
        if not p.is_leaf:
            # (torch's optimizers take a non-leaf that retains its grad; autograd gives it a new grad each
            # backward, which a flat buffer cannot hold, and grad_dtype below is for leaves only)
            raise ValueError(
                f"flatten=True cannot take {name} (shape {tuple(p.shape)}): it is not a leaf tensor "
                "(retain_grad), and autograd replaces a non-leaf's grad each backward instead of accumulating "
                "into the flat gradient buffer. Optimize leaf tensors, or use flatten=False"
            )
        grad_dtype = getattr(p, "grad_dtype", p.dtype)  # (torch 2.10 and later)
        if grad_dtype != p.dtype:
            raise ValueError(
                f"flatten=True cannot take {name} (shape {tuple(p.shape)}): its grad_dtype is {grad_dtype}, "
                f"not its dtype {p.dtype}, and the flat gradient buffer holds gradients of the params' dtype. "
                "Leave grad_dtype unset, or use flatten=False"
            )
        if not is_dense(p):
            raise ValueError(
                f"flatten=True needs dense params; {name} has shape {tuple(p.shape)} and strides "
                f"{p.stride()} (make it contiguous before building the optimizer)"
            )
        storage = p.untyped_storage()
        if not shared_ok and _foreign_owner(p, storage) is not None:
            raise ValueError(
                f"flatten=True: {name} (shape {tuple(p.shape)}) is in the flat buffer of another "
                "optimizer built with flatten=True, which still steps it there: delete that optimizer first, "
                "or use flatten=False"
            )
        # Two params over one storage would each get a copy in the buffer and drift apart; the params of a
        # flat buffer no optimizer steps any more share it and move to the new one together.
        address = storage.data_ptr()
        if p.numel() and address in storages and not shared_ok and storage not in _FLAT_BUFFERS:
            raise ValueError(
                f"flatten=True: {_label(labels, storages[address])} and {name} share storage (views of one tensor, "
                "two Parameters over the same data, or a copy of a model trained with flatten=True); "
                "flattening would untie them. Pass each tensor once, give each its own storage "
                "(`p.data = p.data.clone()`), or use flatten=False"
            )
        storages[address] = index


def _label(labels: list[str] | None, index: int) -> str:
    return labels[index] if labels else param_label(index)


def label_in_groups(param: torch.Tensor, param_groups: list[dict]) -> str | None:
    """``param k of param group g`` for where ``param`` is now (None: in no group)."""
    for g, group in enumerate(param_groups):
        for k, p in enumerate(group["params"]):
            if p is param:
                return param_label(k, g)
    return None


def _padded(numel: int, element_size: int, quantized: bool = False) -> int:
    """A param's slot: whole 16-byte lines, and with 8-bit state whole 256-element blocks, so that each param's
    blocks are its own (its state views are then what a per-param step keeps, bit for bit)."""
    per_line = QUANT_BLOCK if quantized else ALIGN_BYTES // element_size
    return -(-numel // per_line) * per_line


def _view(buffer: torch.Tensor, like: torch.Tensor, offset: int) -> torch.Tensor:
    """A view of ``buffer`` at ``offset`` with ``like``'s shape and strides (channels_last stays so)."""
    return buffer.as_strided(like.shape, like.stride(), offset)


@dataclass
class FlatGroup:
    """The params of one (param group, device, dtype), moved into contiguous buffers."""

    params: list[torch.Tensor]
    offsets: list[int]
    param: torch.Tensor  # flat buffers, each ``total`` elements long
    grad: torch.Tensor
    square_avg: torch.Tensor
    acc_delta: torch.Tensor
    master: torch.Tensor | None
    # 8-bit state: the scales of square_avg and acc_delta (one per 256 elements of the buffers), else None.
    square_avg_scale: torch.Tensor | None = None
    acc_delta_scale: torch.Tensor | None = None
    # Each param's step counter, one element a param: ``state["step"]`` is a 0-d view of it (``steps``), so
    # a step advances every counter with one op, not one per param.
    counters: torch.Tensor | None = None
    steps: list[torch.Tensor] = field(default_factory=list)
    # Indices of params whose master copy must be taken from the param before the next step: a model
    # checkpoint loaded after the optimizer was built (or a torch state dict, which has no master copies)
    # changed the params, and stepping from the old copy would undo the load.
    stale_masters: set[int] = field(default_factory=set)
    # zero_grad(set_to_none=True) ran since the last step: torch's would have left every grad None, so a
    # param frozen since (requires_grad_(False)) gets none from backward and is not stepped.
    frozen_have_none: bool = False
    # Per param, the views its state dict held when the optimizer installed it (flat_state.sync).
    installed_views: list[dict[str, torch.Tensor]] = field(default_factory=list)
    # The grad views the optimizer gave the params (held, so each keeps its identity while the param's grad
    # is something else), and per param (its storage offset, its grad view's TensorImpl address, and the
    # addresses of its TensorImpl and AutogradMeta as the native check last found them, 0 until then).
    _grad_views: list[torch.Tensor] = field(default_factory=list)
    _expected: torch.Tensor | None = None
    # (requested backend, the StepPlan of the whole buffers), made by the optimizer's first step of them: the
    # buffers stay the same objects for the group's life, so later steps only swap the scalars (replan).
    planned: tuple | None = field(default=None, repr=False, compare=False)
    # A weak reference to the optimizer whose buffers these are (a living one keeps its params).
    owner: Any = field(default=None, repr=False, compare=False)
    # The master buffer's version counter when a state dict filled its stale copies with the params
    # (Adadelta._fill_stale_masters): a load of that same dict, unwritten since, leaves them stale.
    filled_version: int | None = None

    @classmethod
    def build(cls, params: list[torch.Tensor], state_dtype: torch.dtype, master: bool, *,
              shared_ok: bool = False, labels: list[str] | None = None) -> "FlatGroup":
        """``shared_ok``: the params are a copy of an optimizer's own flat params (deepcopy, torch.save keep
        them views of one storage), not a user's tied tensors. ``labels``: check_flattenable's."""
        check_flattenable(params, shared_ok=shared_ok, labels=labels)
        quantized = state_dtype == torch.uint8
        offsets, total = [], 0
        for p in params:
            offsets.append(total)
            total += _padded(p.numel(), p.element_size(), quantized)
        first = params[0]
        flat_param = torch.zeros(total, dtype=first.dtype, device=first.device)
        flat_grad = torch.zeros_like(flat_param)
        flat_master = torch.zeros(total, dtype=torch.float32, device=first.device) if master else None
        with torch.no_grad():
            for p, offset in zip(params, offsets):
                _view(flat_param, p, offset).copy_(p)
                if flat_master is not None:
                    _view(flat_master, p, offset).copy_(p)
                grad = p.grad
                # The data moves into the flat buffer; the old storage is freed with its last reference.
                p.data = _view(flat_param, p, offset)
                p.grad = _view(flat_grad, p, offset)
                if grad is not None:
                    p.grad.copy_(grad)
        group = cls(
            params=list(params),
            offsets=offsets,
            param=flat_param,
            grad=flat_grad,
            square_avg=torch.zeros(total, dtype=state_dtype, device=first.device),
            acc_delta=torch.zeros(total, dtype=state_dtype, device=first.device),
            master=flat_master,
        )
        _FLAT_BUFFERS[flat_param.untyped_storage()] = weakref.ref(group)
        if quantized:
            group.square_avg_scale = torch.full((total // QUANT_BLOCK,), MIN_SCALE, device=first.device)
            group.acc_delta_scale = torch.full((total // QUANT_BLOCK,), MIN_SCALE, device=first.device)
        group._grad_views = [p.grad for p in params]
        group._expected = torch.tensor([(p.storage_offset(), p.grad._cdata, 0, 0) for p in params], dtype=torch.int64,
                                       device="cpu")  # (read on the host, whatever torch's default device)
        if flat_master is not None:
            group.stale_masters = set(range(len(params)))
        return group

    def state_views(self, p: torch.Tensor, offset: int) -> dict[str, torch.Tensor]:
        views = {"square_avg": _view(self.square_avg, p, offset), "acc_delta": _view(self.acc_delta, p, offset)}
        if self.master is not None:
            views["master_param"] = _view(self.master, p, offset)
        if self.square_avg_scale is not None:
            blocks = slice(offset // QUANT_BLOCK, offset // QUANT_BLOCK + num_blocks(p.numel()))
            views["square_avg_scale"] = self.square_avg_scale[blocks]
            views["acc_delta_scale"] = self.acc_delta_scale[blocks]
        return views

    def refresh_masters(self) -> None:
        """Copy each stale param into its master copy (bf16/fp16 to fp32 is exact)."""
        with torch.no_grad():
            for index in sorted(self.stale_masters):
                p = self.params[index]
                _view(self.master, p, self.offsets[index]).copy_(p)
        self.stale_masters.clear()

    def step_tensors(self) -> tuple:
        """The tensors one step runs over: (params, grads, square_avgs, acc_deltas, masters, steps, counters,
        scales), where scales is None, or with 8-bit state (square_avg_scales, acc_delta_scales).

        Normally the whole buffers, one tensor each, and ``counters`` to advance (``steps`` is None). A
        param whose grad is None is left out, as torch leaves it: the lists then hold the ranges of the
        buffers between such params, and ``steps`` the stepped params' counters (``counters`` is None).
        Raises if a param stopped viewing its buffer.
        """
        skipped = self._gather_grads()
        buffers = [self.param, self.grad, self.square_avg, self.acc_delta]
        if self.master is not None:
            buffers.append(self.master)
        if not skipped:
            tensors = [[buffer] for buffer in buffers]
            steps, counters = None, self.counters
        else:
            bounds = [*self.offsets, self.param.numel()]
            ranges, start = [], 0
            for index in [*skipped, len(self.params)]:
                if bounds[index] > bounds[start]:
                    ranges.append((bounds[start], bounds[index]))
                start = index + 1
            tensors = [[buffer[begin:end] for begin, end in ranges] for buffer in buffers]
            skipped_set = set(skipped)
            steps = [step for index, step in enumerate(self.steps) if index not in skipped_set]
            counters = None
        masters = tensors[4] if self.master is not None else None
        scales = None
        if self.square_avg_scale is not None:
            # Range bounds are slot bounds, whole blocks: each range's blocks are a slice of the scales.
            spans = [(0, self.param.numel())] if not skipped else ranges
            scales = tuple([buffer[begin // QUANT_BLOCK: end // QUANT_BLOCK] for begin, end in spans]
                           for buffer in (self.square_avg_scale, self.acc_delta_scale))
        return (*tensors[:4], masters, steps, counters, scales)

    def _gather_grads(self) -> list[int]:
        """Bring every param's grad into the flat gradient buffer; returns the indices of params without one.

        A grad that is not the param's view of the buffer (autograd made it after the grad was set to None,
        or DDP's bucket view) is copied into the param's slot, and the view becomes the param's grad again.
        """
        moved, skipped, foreign = _view_status(self.params, self.param, self.grad, self._expected, self._grad_views,
                                               self.frozen_have_none)
        self.frozen_have_none = False
        if moved >= 0:
            raise RuntimeError(
                f"flatten=True: {self._label(moved)} (shape {tuple(self.params[moved].shape)}) no longer views "
                "the optimizer's flat buffer; was `param.data` reassigned or the model moved after building the "
                "optimizer?"
            )
        skipped = [index for index in skipped if self._has_no_grad(index)]
        if foreign:
            buffer_storage = self.grad.untyped_storage().data_ptr()
            sources = []
            for index in foreign:
                grad = self.params[index].grad
                if grad.layout != torch.strided:
                    raise RuntimeError(
                        f"Adadelta does not support sparse gradients with flatten=True ({self._label(index)}): "
                        "the flat buffers hold dense gradients; use flatten=False, whose step takes them row by row"
                    )
                # A grad viewing another slot of this buffer would be overwritten before it is read.
                sources.append(grad.clone() if grad.untyped_storage().data_ptr() == buffer_storage else grad)
            with torch.no_grad():
                for index, grad in zip(foreign, sources):
                    p = self.params[index]
                    view = self._grad_views[index]
                    offset = self.offsets[index]
                    if view.untyped_storage().data_ptr() != buffer_storage or view.storage_offset() != offset:
                        # `grad.data = x` re-pointed the optimizer's own view (which may since have been
                        # replaced as the param's grad, too): make a new one
                        view = self._grad_views[index] = _view(self.grad, p, offset)
                        self._expected[index, 1] = view._cdata
                    view.copy_(grad)
                    p.grad = view
        return skipped

    def _label(self, index: int) -> str:
        """How a message names param ``index``: by its place in the owner's param groups now (groups may have
        been reordered or removed since the buffers were built), else by its index here."""
        optimizer = self.owner() if self.owner is not None else None
        found = label_in_groups(self.params[index], optimizer.param_groups) if optimizer is not None else None
        return found or param_label(index)

    def _has_no_grad(self, index: int) -> bool:
        """Whether param ``index``, reported without a grad, has none as torch would see it. A param frozen
        since ``zero_grad(set_to_none=True)`` still holds its view: torch's grad is None unless a backward
        filled it before the freeze, so a view still all zero becomes None (one read of that grad, which
        syncs with a GPU, once: it is None from then on) and a filled one is stepped. (A backward's grad of
        exact zeros before the freeze is skipped where torch would step it.)"""
        p = self.params[index]
        if p.grad is None:
            return True
        if p.grad.any():
            return False
        p.grad = None
        return True

    def zero_grad(self, set_to_none: bool) -> None:
        """Zero the gradient buffer in place; with ``set_to_none``, the next step treats a param that no
        longer requires grad as torch would find it: without a grad (``frozen_have_none``).

        A grad that is not the param's view of the buffer (autograd made it after ``model.zero_grad()`` set
        grads to None, or it was assigned) is only brought into the buffer by the next step, so it is zeroed
        here as torch zeroes it (set to None, or zeroed in place): a batch dropped with ``opt.zero_grad()``
        must not reach the next step. Finding them is the step's native check (29 us for 4096 params on one
        thread here, where the memset takes 5; torch's own zero_grad is a Python loop over the params)."""
        self.grad.zero_()
        self.frozen_have_none = self.frozen_have_none or set_to_none
        moved, _, foreign = _view_status(self.params, self.param, self.grad, self._expected, self._grad_views,
                                         False)
        if moved >= 0:  # (the next step raises for it; the check stopped there, so look at every param)
            foreign = [index for index, p in enumerate(self.params)
                       if p.grad is not None and p.grad is not self._grad_views[index]]
        for index in foreign:
            p = self.params[index]
            if set_to_none:
                p.grad = None
            else:
                zero_as_torch_does(p.grad)
