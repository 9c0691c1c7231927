"""DTensor params (FSDP2's ``fully_shard``, tensor parallel): the step runs on each rank's local tensors.

Adadelta is elementwise, so when a param, its grad and its state are DTensors on one mesh with the same
placements (``Shard(d)`` or ``Replicate()``), each rank's local shards line up element for element and one
fused pass over them is the whole step: no all-gather, no redistribution. Unwrapping here, rather than
registering a sharding rule for the ops, keeps the ops plain-tensor ops, so their fake kernels, opcheck
and the CUDA-graph path stay as they are; ``to_local`` costs no copy and traces under torch.compile.

Everything that would make the shards not line up is refused before anything is written: a grad or state
with other placements or on another mesh, a ``Partial`` placement (a sum still pending), and a mix of
DTensors and plain tensors.
"""

from __future__ import annotations

import sys

import torch

_ROLES = ("grad", "square_avg", "acc_delta", "master_param")


def _dtensor_module():
    """``torch.distributed.tensor`` if it was imported, else None: no DTensor can exist before its module is,
    and importing it here would add 1.5 s to every import of this package."""
    return sys.modules.get("torch.distributed.tensor")


def is_dtensor(t) -> bool:
    module = _dtensor_module()
    return module is not None and isinstance(t, module.DTensor)


def any_dtensor(tensors: list[torch.Tensor]) -> bool:
    module = _dtensor_module()
    return module is not None and any(isinstance(t, module.DTensor) for t in tensors)


def describe(t: torch.Tensor) -> str:
    """What a checkpoint or step error says of a tensor's kind."""
    if isinstance(t, _dtensor_module().DTensor):
        return f"a DTensor with placements {tuple(t.placements)} on {t.device_mesh}"
    return f"a plain {type(t).__name__}"


def to_local(params, grads, square_avgs, acc_deltas, master_params):
    """The local tensors of each list, after checking that every param's tensors are sharded alike.

    Plain params may sit beside DTensor ones (a module left out of ``fully_shard``). The DTensor params of
    one step must share a mesh: torch's per-param loop would step a group spanning two meshes, but such a
    group is more often a mistake than a design, and FSDP2 + tensor parallel keeps its meshes apart more
    clearly in two param groups.
    """
    DTensor, Partial = _dtensor_module().DTensor, _dtensor_module().Partial
    mesh = None
    for index, p in enumerate(params):
        others = [grads[index], square_avgs[index], acc_deltas[index]]
        if master_params:
            others.append(master_params[index])
        where = f"param {index} (shape {tuple(p.shape)})"
        if not isinstance(p, DTensor):
            for role, t in zip(_ROLES, others):
                if isinstance(t, DTensor):
                    raise ValueError(f"{where} is a plain tensor but its {role} is {describe(t)}; "
                                     "give the param and its grad and state the same kind")
            continue
        if mesh is None:
            mesh, first = p.device_mesh, index
        elif p.device_mesh != mesh:
            raise ValueError(f"{where} is {describe(p)}, but param {first} of the same step is on {mesh}; "
                             "params on different meshes must be in separate param groups")
        if any(isinstance(placement, Partial) for placement in p.placements):
            raise ValueError(f"{where} is {describe(p)}: a Partial placement is a sum still pending, so its "
                             "local tensor is not the param; redistribute it to Shard or Replicate first")
        for role, t in zip(_ROLES, others):
            if not isinstance(t, DTensor) or t.device_mesh != mesh or t.placements != p.placements:
                raise ValueError(f"{where} is {describe(p)}, but its {role} is {describe(t)}; the fused step "
                                 "needs them sharded alike (redistribute the grad to the param's placements)")
    return tuple(None if tensors is None else [_local(t) for t in tensors]
                 for tensors in (params, grads, square_avgs, acc_deltas, master_params))


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, _dtensor_module().DTensor) else t
