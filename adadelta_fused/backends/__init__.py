"""The backend registry: which implementations exist, which can run here, and which one a step uses.

Choice order: the ``backend`` argument, then ``ADADELTA_FUSED_BACKEND``, then ``auto``. An explicit
choice runs or raises with the reason it cannot; ``auto`` takes the first usable backend for the device
and warns once when a GPU falls back from a fused path.
"""

from __future__ import annotations

import importlib
import os
import warnings
from functools import cache

import torch

ENV_VAR = "ADADELTA_FUSED_BACKEND"

# name -> module implementing ``unavailable_reason()``, ``unsupported_reason(device)`` and ``step_(...)``.
_MODULES = {
    "cpp": "adadelta_fused.backends.cpp",
    "triton": "adadelta_fused.backends.triton",
    "reference": "adadelta_fused.backends.reference",
}

# The order in which ``auto`` tries backends on each device type; anything else gets the reference.
_AUTO_ORDER = {
    "cpu": ("cpp", "reference"),
    "cuda": ("cpp", "triton", "reference"),
}

BACKEND_NAMES = tuple(_MODULES)

# name -> module, for each backend that loaded and can run (see resolve).
_loaded: dict[str, object] = {}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run; the message says why."""


def _load(name: str):
    """Import a backend module; returns (module, None) or (None, reason). A backend that can run is kept; one
    that cannot is asked again next time, since its reason may pass (TRITON_INTERPRET set later in the
    process: its error says to set it)."""
    if name in _loaded:
        return _loaded[name], None
    try:
        module = importlib.import_module(_MODULES[name])
    except Exception as error:  # an optional dependency may fail in any way on import
        return None, f"import failed: {type(error).__name__}: {error}"
    reason = module.unavailable_reason()
    if reason:
        return None, reason
    _loaded[name] = module
    return module, None


def reprobe() -> None:
    """Forget which backends loaded and what ``auto`` chose (tests that change TRITON_INTERPRET)."""
    _loaded.clear()
    _auto.cache_clear()


def available_backends() -> dict[str, str]:
    """Every backend with ``"available"`` or the reason it is not."""
    return {name: _load(name)[1] or "available" for name in BACKEND_NAMES}


def _explicit(name: str, device: torch.device):
    if name not in _MODULES:
        raise ValueError(f"Invalid backend: {name!r} (expected 'auto' or one of {BACKEND_NAMES})")
    module, reason = _load(name)
    if module is None:
        raise BackendUnavailableError(f"backend {name!r} is unavailable: {reason}")
    reason = module.unsupported_reason(device)
    if reason:
        raise BackendUnavailableError(f"backend {name!r} cannot run on {device}: {reason}")
    return module


@cache
def _auto(device_type: str, device: torch.device):
    skipped = []
    for name in _AUTO_ORDER.get(device_type, ("reference",)):
        module, reason = _load(name)
        reason = reason or module.unsupported_reason(device)
        if not reason:
            if skipped and device_type == "cuda":
                warnings.warn(
                    f"adadelta_fused: using backend {name!r} on {device}; " + "; ".join(skipped),
                    RuntimeWarning,
                    stacklevel=4,
                )
            return module
        skipped.append(f"{name!r} unavailable ({reason})")
    raise BackendUnavailableError(f"no backend can run on {device}: " + "; ".join(skipped))


def requested_backend(backend: str | None) -> str:
    """The backend name in force: the argument, else the environment variable, else ``auto``."""
    if backend is None or backend == "auto":
        return os.environ.get(ENV_VAR, "auto") or "auto"
    return backend


def resolve(backend: str | None, device: torch.device):
    """The backend module that runs a step for ``device``."""
    return _loaded[_resolve_name(backend, device)]


def _resolve_name(backend: str | None, device: torch.device) -> str:
    name = requested_backend(backend)
    if name not in _MODULES and name != "auto" and (backend is None or backend == "auto"):
        raise ValueError(f"Invalid {ENV_VAR}={name!r} in the environment (expected 'auto' or one of "
                         f"{BACKEND_NAMES})")
    module = _auto(device.type, device) if name == "auto" else _explicit(name, device)
    return module.NAME


# torch.compile calls _resolve_name() once while tracing and keeps the name as a constant of the graph
# (traced line by line, the cached probes above would re-run importlib and break the graph); the module
# is then read from ``_loaded``, which it can guard. This is the mark that
# torch.compiler.assume_constant_result sets (tests/test_compile.py checks it still is); calling that here
# would import torch._dynamo, 4 s, into every eager user's import.
_resolve_name._dynamo_marked_constant = True
