"""Which Triton the kernels run on: the compiler or the interpreter (TRITON_INTERPRET=1, on CPU tensors).

``triton.jit`` picks ``InterpretedFunction`` or ``JITFunction`` when it decorates, from
``knobs.runtime.interpret`` (triton/runtime/jit.py, ``jit``), and a kernel calls its helpers through its
module's globals. So each mode gets its own execution of ``adadelta_fused.triton_kernel``, and a launch
picks the mode that TRITON_INTERPRET names at that moment: setting it any time before a step takes effect.
"""

import contextlib
import importlib.util
import os
import threading

import triton

KERNEL_MODULE = "adadelta_fused.triton_kernel"

# Executing the kernel module flips a process-wide knob (and TRITON_INTERPRET) for the duration; two
# threads doing that at once would each see the other's setting, and triton then finds "0 active
# drivers". One lock around the flips and every read of the knob makes the first use from many threads
# safe; later calls hit the cache without taking it.
_LOCK = threading.RLock()
_MODULES: dict[tuple[str, bool], object] = {}


@contextlib.contextmanager
def _interpret_knob(enabled: bool):
    runtime = triton.knobs.runtime
    saved_env = os.environ.get("TRITON_INTERPRET")
    saved_override = runtime.__dict__.get("interpret")
    runtime.interpret = enabled  # also exports TRITON_INTERPRET
    try:
        yield
    finally:
        if saved_override is None:
            del runtime.interpret
        else:
            runtime.interpret = saved_override
        if saved_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved_env


def kernels(interpret: bool, name: str = KERNEL_MODULE):
    """A kernel module (``adadelta_fused.triton_kernel`` unless named) with its functions jitted for the
    interpreter or for the compiler."""
    module = _MODULES.get((name, interpret))
    if module is not None:
        return module
    with _LOCK:
        if (name, interpret) not in _MODULES:
            spec = importlib.util.find_spec(name)
            module = importlib.util.module_from_spec(spec)
            with _interpret_knob(interpret):
                spec.loader.exec_module(module)
            _MODULES[(name, interpret)] = module
        return _MODULES[(name, interpret)]


def interpreting() -> bool:
    """Whether launches run in Triton's interpreter now (TRITON_INTERPRET, or triton.knobs). Read under the
    lock: while another thread builds the compiled module, the knob reads False for a moment."""
    with _LOCK:
        return bool(triton.knobs.runtime.interpret)


def launching(interpret: bool):
    """Context for a launch: the interpreter swaps triton.language's builtins for its own while a kernel
    runs and swaps them back after, so two interpreted launches at once break each other ("Did you forget
    to add @triton.jit?"); they take turns. Compiled launches need no lock."""
    return _LOCK if interpret else contextlib.nullcontext()
