"""torch.distributed._tools: the memory tracker the ``memory`` fixture is
built on.

``MemTracker`` (``torch.distributed._tools.mem_tracker``), checked on
2.13.0, 2.14.1 and 2.15.0: a dispatch mode that attributes every tensor
storage to a ``_MemRefType`` (parameter, buffer, gradient, activation,
temporary, optimizer state, other) and keeps the current and peak bytes of
each per device in ``_curr_mem_snap``, ``_peak_mem`` and ``_peak_mem_snap``.
A missing name raises UnsupportedTorchError through the door.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

from ._door import door

# The memory fixture's categories (NOTE [Memory categories] in memory.py),
# and _MemRefType's values -> them.
CATEGORIES = ("parameters", "gradients", "optimizer", "activations", "other")
CATEGORY_OF = {
    "Parameter": "parameters",
    "Buffer": "parameters",
    "Gradient": "gradients",
    "Optstate": "optimizer",
    "Activation": "activations",
    "Temp": "activations",
    "Other": "other",
}
_TOTAL = "Total"


@functools.cache
@door("measure memory")
def tracker_class() -> type:
    """MemTracker reduced to what the memory fixture reads: which category
    each storage is in, the current bytes and the peak. Its per-module
    statistics are left out: they grow with every module call, cost a loop
    over every module per op, and refuse a second training step ("does not
    support memory tracking for multiple iterative calls"). A functional
    collective's wait, which MemTracker answers itself under fake tensors,
    still reaches ``on_wait`` first, so a fault armed at wait fires."""
    import weakref

    from torch.distributed._tools.mem_tracker import MemTracker

    class Tracker(MemTracker):  # type: ignore[misc, valid-type]
        on_wait: Callable[[Any], None] | None = None

        def __init__(self) -> None:
            super().__init__()
            self._seen: weakref.WeakSet[Any] = weakref.WeakSet()

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func.is_view:  # a view allocates nothing: its storage is counted already
                return func(*args, **(kwargs or {}))
            if self.on_wait is not None and func.__name__ == "wait_tensor.default" and args:
                self.on_wait(args[0])
            return super().__torch_dispatch__(func, types, args, kwargs)

        def _pre_fw_hook(self, module: Any, inputs: Any) -> None:
            if module not in self._seen:
                self._seen.add(module)
                self._track_module_params_and_buffers(module, install_grad_hooks=True)
            elif self._mod_tracker.is_bw and self._ac_mod is None:
                # forward again during backward: activation checkpointing's recompute
                self._ac_mod = weakref.ref(module)
                self._in_ac = True

        def _post_fw_hook(self, module: Any, inputs: Any, outputs: Any) -> None:
            if self._mod_tracker.is_bw and self._ac_mod is not None and self._ac_mod() is module:
                self._ac_mod = None
                self._in_ac = False

        def _pre_bw_hook(self, module: Any, args: Any) -> None:
            pass

        def _post_bw_hook(self, module: Any, args: Any) -> None:
            pass

    return Tracker


def _by_category(snapshot: dict[Any, int]) -> dict[str, int]:
    out = dict.fromkeys(CATEGORIES, 0)
    for kind, nbytes in snapshot.items():
        name = getattr(kind, "value", kind)
        if name != _TOTAL:
            out[CATEGORY_OF.get(name, "other")] += nbytes
    return out


def _on(snapshots: dict[Any, dict[Any, int]], device_type: str) -> dict[str, int]:
    """Bytes by category over every device of ``device_type``."""
    total = _by_category({})
    for device, snap in snapshots.items():
        if getattr(device, "type", None) == device_type:
            for name, nbytes in _by_category(snap).items():
                total[name] += nbytes
    return total


@door("measure memory")
def current(tracker: Any, device_type: str) -> dict[str, int]:
    return _on(tracker._curr_mem_snap, device_type)


@door("measure memory")
def at_peak(tracker: Any, device_type: str) -> dict[str, int]:
    return _on(tracker._peak_mem_snap, device_type)


@door("measure memory")
def reset_peak(tracker: Any) -> None:
    """Make the peak what is live now."""
    tracker._peak_mem_snap = copy.deepcopy(tracker._curr_mem_snap)
    tracker._peak_mem = {dev: snap.get(_TOTAL, sum(snap.values())) for dev, snap in tracker._curr_mem_snap.items()}


@door("measure memory")
def track_as_parameter(tracker: Any, tensor: Any, buffer: bool = False) -> None:
    """Attribute ``tensor``'s storage to parameters (or buffers) from now:
    MemTracker's own ``_update_and_maybe_create_winfos``, which it calls for
    a module's parameters only once the module runs."""
    from torch.distributed._tools.mem_tracker import _MemRefType

    if tensor is not None:
        tracker._update_and_maybe_create_winfos(tensor, _MemRefType.BUFFER if buffer else _MemRefType.PARAM)
