"""Loads the compiled extension when the package is imported, and keeps the reason when it cannot be loaded.

A missing or broken build never breaks ``import adadelta_fused``: the package then runs on the reference
backend and ``available_backends()`` says why. Loading the built library takes a few milliseconds.
"""

from __future__ import annotations

import torch


def _load():
    try:
        from . import _C  # registers the ops' CPU (and CUDA) kernels with torch's dispatcher
    except ImportError as error:
        return None, f"the compiled extension adadelta_fused._C is missing or failed to load ({error})"
    return _C, None


# Loaded once, at import: a plain module global is what torch.compile can read while tracing a step
# without a graph break (a functools.cache wrapper is a function it refuses to trace).
_MODULE, _LOAD_ERROR = _load()


def module():
    """The loaded ``adadelta_fused._C`` module, or None."""
    return _MODULE


def op():
    """``torch.ops.adadelta_fused.adadelta_``; raises if the extension that holds its kernels is absent."""
    if module() is None:
        raise RuntimeError(load_error())
    return torch.ops.adadelta_fused.adadelta_.default


def steps_op():
    """``torch.ops.adadelta_fused.advance_steps_``, or None without the extension."""
    return torch.ops.adadelta_fused.advance_steps_.default if module() is not None else None


def _only_device_modes() -> bool:
    """Whether every active torch function mode is a default-device context (``torch.set_default_device``,
    ``with torch.device(...)``, common in LLM code): those change factory calls only, never this op."""
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._device import DeviceContext

    return all(type(mode) is DeviceContext for mode in _get_current_function_mode_stack())


def _eager_without_function_modes() -> bool:
    """Not compiling (Dynamo traces torch.ops calls), and no torch function mode active but default-device
    ones: where a call that skips torch.ops' Python path skips nothing a mode or tracer would see."""
    if torch.compiler.is_compiling():
        return False
    return not torch._C._is_torch_function_mode_enabled() or _only_device_modes()


def call_unboxed(name: str, *arguments) -> bool:
    """Call an op through the extension's unboxed entry ``_C.<name>`` (csrc/python_calls.cpp: torch.ops
    boxes each tensor of each list, 1.3 us a param for a step's four lists). Returns False, having done
    nothing, where the op must go through torch.ops: under torch.compile, which traces torch.ops calls;
    with a torch function mode active (other than a default device) or a tensor subclass in the lists,
    since only torch.ops' Python path runs their ``__torch_function__``; without the extension."""
    if _MODULE is None or not _eager_without_function_modes():
        return False
    return getattr(_MODULE, name)(*arguments)


def runs_unseen(*lists) -> bool:
    """Whether a Python op's eager body may run without torch.ops, no one the wiser: torch.ops' path through
    a ``torch.library`` Python op (autograd, ADInplaceOrView, the backend kernel, Dynamo's disable wrapper)
    took 107 of the Triton op's 207 us a call on an H200's host. That holds where nothing would see the call:
    not compiling, grad mode off (the optimizer's step; in grad mode the op's autograd kernel decides), no
    torch function mode but a default device, no dispatch mode, no profiler, no functorch transform, and
    ``lists`` (every tensor argument, each in a list) hold plain tensors only. The caller runs the body with
    torch function handling off, as the default-device mode runs the op it is handed (its factories would
    otherwise make the body's tables on the default device), and bumps the mutated tensors' version counters,
    as the op's ADInplaceOrView kernel does."""
    return (
        _MODULE is not None
        and not torch.is_grad_enabled()
        and _eager_without_function_modes()
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._autograd._profiler_enabled()  # (also a profiler started from C++, as Kineto's on-demand)
        and not torch._C._are_functorch_transforms_active()
        and _MODULE.plain_tensor_lists(*lists)
    )


def load_error() -> str | None:
    return _LOAD_ERROR


def has_cuda_kernel() -> bool:
    ext = module()
    return bool(ext is not None and ext.compiled_with_cuda())


def check_op_args(*args) -> None:
    """The op's one validator (csrc/op_host.cpp), for the backends written in Python and the fake kernel:
    the op's arguments in schema order, then the device type of the kernel that will run.

    Without the extension nothing is checked here; the reference backend's torch ops then raise their own
    errors, and ``available_backends()`` reports the missing build.
    """
    ext = module()
    if ext is None:
        return
    if torch.compiler.is_compiling():
        untraced("check_op_args")(*args)  # (the reference backend's validator, traced)
    else:
        ext.check_op_args(*args)


_UNTRACED: dict = {}


def untraced(name: str):
    """The extension's function ``name`` for a step Dynamo traces: wrapped in torch.compiler.disable, a graph
    break Dynamo is told about, where calling the pybind function itself breaks the graph with a warning that
    asks the user to report it (torch 2.14.1). Wrapped on first use: the wrapper imports torch._dynamo, which
    ``import adadelta_fused`` must not (seconds)."""
    wrapped = _UNTRACED.get(name)
    if wrapped is None:
        wrapped = _UNTRACED[name] = torch.compiler.disable(getattr(_MODULE, name))
    return wrapped


def check_state_steps(steps) -> bool | None:
    """The step counters' validator (csrc/op_host.cpp): whether all are CPU tensors; None without the
    extension."""
    ext = module()
    return ext.check_state_steps(steps if isinstance(steps, list) else list(steps)) if ext is not None else None


def build_info() -> dict[str, object]:
    """What the extension was built with (for reports), or the reason it is absent."""
    ext = module()
    if ext is None:
        return {"extension": load_error()}
    return {"extension": "loaded", "cuda": ext.compiled_with_cuda(), "cpu_isa": ext.cpu_isa()}
