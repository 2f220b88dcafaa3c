"""Per-thread and per-process state of torch and Python that a world reads
or sets: the default device, autograd's threads, the environment."""

from __future__ import annotations

import functools
import os
from typing import Any

# -- the environment ---------------------------------------------------------------


def environ_data() -> dict[Any, Any]:
    """``os.environ._data``: its encoded items, a plain dict that copies and
    compares at C speed (walking ``os.environ`` decodes every item). CPython
    3.10-3.13; elsewhere a decoded copy, slower and equal."""
    data = getattr(os.environ, "_data", None)
    return data if isinstance(data, dict) else dict(os.environ)


def default_device() -> Any:
    """NOTE [compat: default device] ``torch.get_default_device()``, which
    costs about 8 us (two imports, a walk of the mode stack) and is asked at
    every exact run on every rank's thread. It is cpu unless this thread has a
    device context (``torch._GLOBAL_DEVICE_CONTEXT``, set by
    ``set_default_device``) or a mode on its torch-function mode stack
    (2.11-2.15.0): torch is asked only then, or when either name is missing."""
    import torch

    context = getattr(torch, "_GLOBAL_DEVICE_CONTEXT", None)
    modes = getattr(torch._C, "_len_torch_function_stack", None)
    if context is not None and modes is not None and getattr(context, "device_context", None) is None and not modes():
        return _cpu()
    return torch.get_default_device()


@functools.cache
def _cpu() -> Any:
    import torch

    return torch.device("cpu")


def autograd_threads() -> bool:
    """Whether autograd runs backward on its device threads
    (``torch._C._is_multithreading_enabled``, 2.11-2.15.0): an exact world
    turns them off on each rank's thread, so that backward runs there (NOTE
    [Exact worlds] in csrc/exact.cpp)."""
    import torch

    return bool(torch._C._is_multithreading_enabled())


def set_autograd_threads(enabled: bool) -> None:
    import torch

    torch._C._set_multithreading_enabled(enabled)



def tensor_property(name: str) -> Any:
    """The descriptor of ``TensorBase.<name>`` (``is_cuda``, ``is_cpu``):
    what a property standing in for it on ``torch.Tensor`` falls back to."""
    import torch

    return vars(torch._C.TensorBase)[name]


# Modules between an op's dispatch and the Python code that called it:
# torch's dispatch machinery and the trackers' modes (2.11-2.15.0).
_DISPATCH_MODULES = ("torch._", "torch.utils._python_dispatch", "torch.distributed._tools", "pytest_fakepg")


def called_from_autograd_engine() -> bool:
    """Whether the op being dispatched was asked for by C++ autograd while it
    runs backward: the first frame up outside the dispatch machinery is
    ``torch.autograd.graph._engine_run_backward``, which called the engine
    (2.11-2.15.0). A Python backward (a custom Function's, a hook) is not."""
    from .stdlib import getframe

    frame = getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "_engine_run_backward":
            return True
        if not frame.f_globals.get("__name__", "").startswith(_DISPATCH_MODULES):
            return False
        frame = frame.f_back
    return False
