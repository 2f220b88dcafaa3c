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
import itertools
import threading
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

    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    from torch.distributed._tools.mem_tracker import _MemRefType
    from torch.utils._pytree import tree_map_only

    in_compiled = getattr(torch._dynamo.eval_frame, "_is_in_optimized_module", None) or (lambda: False)  # 2.11-2.15.0
    device_query = torch.ops.prim.device.default

    def detach_leaf(t: Any) -> Any:
        return t.detach() if t.is_leaf and t.requires_grad else t

    def on_own_thread(tracker: Any, hook: Callable[..., Any], module: Any, *args: Any) -> Any:
        """ModTracker's forward ``hook(module, *args)`` where ``tracker``
        counts this thread's tensors. Leaf tensors among the inputs and
        outputs are passed on detached: ModTracker hangs gradient hooks on
        the tensors it is given, and one on a leaf makes
        ``torch.autograd.grad`` with that leaf as an input fail ("A leaf node
        was passed to _will_engine_execute_node"), as pipelining computes a
        stage's input gradients. The hooks only tell backward's module
        boundaries, which the memory figures do not use. Inside a compiled
        module nothing is done, as ModTracker's hooks do themselves (dynamo
        would break the graph here)."""
        if in_compiled() or counting() is not tracker:
            return None
        return hook(module, *(tree_map_only(torch.Tensor, detach_leaf, a) for a in args))

    class Tracker(MemTracker):  # type: ignore[misc, valid-type]
        on_wait: Callable[[Any], None] | None = None

        def __init__(self) -> None:
            super().__init__()
            # torch's module and optimizer hooks are process-wide: they
            # serve this tracker on its own thread only (NOTE [A tracker per
            # thread]). Instance attributes, read when the tracker enters.
            modules = self._mod_tracker
            for name in ("_fw_pre_hook", "_fw_post_hook"):
                setattr(modules, name, functools.partial(on_own_thread, self, getattr(modules, name)))
            self._seen: weakref.WeakSet[Any] = weakref.WeakSet()
            self.converting = 0  # module conversions running (NOTE [Module state made anew])
            self.propagating = 0  # DTensor propagations running (NOTE [DTensor's scratch tensors])
            self.grad_hooks: list[Any] = []  # NOTE [ModTracker's gradient hooks]

        @classmethod
        def ignore_compile_internals(cls) -> bool:
            # NOTE [Compiled code under the tracker]: torch.compile skips
            # every frame while a dispatch mode that does not say this is on
            # the stack (fullgraph=True then fails, "non-infra torch dispatch
            # mode present"). Saying it, the tracker is off while dynamo
            # traces and on again while the compiled code runs: it counts the
            # ops that code dispatches, not dynamo's tracing scratch.
            return True

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            # A view allocates nothing: its storage is counted already; a
            # tensor's device is no tensor.
            if func.is_view or func is device_query or self.propagating:
                return func(*args, **(kwargs or {}))
            if self.on_wait is not None and func.__name__ == "wait_tensor.default" and args:
                self.on_wait(args[0])
            out = super().__torch_dispatch__(func, types, args, kwargs)
            if self.converting and out is not NotImplemented:
                # NOTE [Module state made anew]: what a conversion makes is the module's state
                tree_map_only(torch.Tensor, lambda t: recategorize(self, t, _MemRefType.PARAM), out)
            return out

        def _track_optimizer_states(self, reftype: Any, optimizer: Any) -> None:
            if counting() is self:  # another thread's optimizer is another tracker's
                super()._track_optimizer_states(reftype, optimizer)
                track_master_copies(self, optimizer)

        def _track_module_params_and_buffers(self, module: Any, install_grad_hooks: bool = True) -> tuple[int, int]:
            # torch's, through track_as_parameter: it hangs no gradient hook
            # a parameter cannot take, and counts the tensors hung on it
            # (NOTE [Tensors hung on a parameter]). The sizes it returned
            # fed the per-module statistics this tracker leaves out.
            for param in module.parameters():
                track_as_parameter(self, param, hooks=install_grad_hooks)
                if param.grad is not None:
                    self._update_and_maybe_create_winfos(param.grad, _MemRefType.GRAD)
            for buffer in module.buffers():
                self._update_and_maybe_create_winfos(buffer, _MemRefType.BUFFER)
            return 0, 0

        def _pre_fw_hook(self, module: Any, inputs: Any) -> None:
            if module not in self._seen:
                self._seen.add(module)
                self._track_module_params_and_buffers(_unshadowed(module), install_grad_hooks=True)
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


# What torch's tracker calls on a module, which a module may shadow with an
# attribute (Megatron's DDP sets ``self.buffers = [...]``).
_SHADOWABLE = frozenset({"parameters", "buffers", "modules"})


def _unshadowed(module: Any) -> Any:
    """``module``, or where it shadows one of nn.Module's methods the tracker
    calls, a view of it whose methods are nn.Module's own."""
    return module if _SHADOWABLE.isdisjoint(vars(module)) else _Unshadowed(module)


class _Unshadowed:
    __slots__ = ("_module",)

    def __init__(self, module: Any) -> None:
        self._module = module

    def parameters(self, recurse: bool = True) -> Any:
        from torch.nn import Module

        return Module.parameters(self._module, recurse)

    def buffers(self, recurse: bool = True) -> Any:
        from torch.nn import Module

        return Module.buffers(self._module, recurse)

    def modules(self) -> Any:
        from torch.nn import Module

        return Module.modules(self._module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


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


# NOTE [Tensors hung on a parameter]
# Training libraries keep a parameter's real storage beside it: DeepSpeed
# ZeRO-3 empties ``param.data`` and keeps this rank's shard in
# ``param.ds_tensor`` (a view of one flat buffer), Megatron's DDP points
# ``param.main_grad`` into its contiguous gradient buffer and its
# distributed optimizer hangs the fp32 master shard on ``param.main_param``.
# A tensor in a parameter's ``__dict__`` counts as the parameter's (its whole
# storage: the flat buffer), unless ``HUNG`` names it as a gradient or an
# optimizer's. Likewise the tensors an optimizer steps that no module holds
# as a parameter (ZeRO's and Megatron's fp32 master shards) count as
# optimizer state, as in ZeRO's own accounting.
HUNG = {"main_grad": "GRAD", "grad_accumulation_buffer": "GRAD", "main_param": "OPT"}


@door("measure memory")
def track_as_parameter(tracker: Any, tensor: Any, buffer: bool = False, hooks: bool = True) -> None:
    """Attribute ``tensor``'s storage to parameters (or buffers) from now,
    and a parameter's gradient to gradients once autograd makes it:
    MemTracker's own ``_update_and_maybe_create_winfos`` and gradient hooks,
    which it sets up for a module's parameters only once the module's
    forward hooks run, and they do not run inside code torch.compile made.
    A parameter that is not a leaf (FSDP1's views) gets no post-accumulate
    hook, which torch refuses it; NOTE [Tensors hung on a parameter]."""
    import torch
    from torch.distributed._tools.mem_tracker import _MemRefType

    if tensor is None:
        return
    recategorize(tracker, tensor, _MemRefType.BUFFER if buffer else _MemRefType.PARAM)
    for name, hung in getattr(tensor, "__dict__", {}).items():
        if isinstance(hung, torch.Tensor) and hung is not tensor:
            recategorize(tracker, hung, getattr(_MemRefType, HUNG.get(name, "PARAM")))
    handles = tracker._param_to_grad_hook_handles
    if buffer or not hooks or not tensor.requires_grad or handles.get(tensor) is not None:
        return

    def count_gradient(grad: Any) -> None:
        tracker._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

    # As MemTracker installs them (and removes them on exit, through ``handles``: two a parameter).
    handles[tensor] = (
        tensor.register_hook(count_gradient),
        tensor.register_post_accumulate_grad_hook(lambda p: count_gradient(p.grad)) if tensor.is_leaf else _NoHook(),
    )


class _NoHook:
    """The post-accumulate hook a parameter that is not a leaf cannot take."""

    def remove(self) -> None:
        pass


@door("measure memory")
def track_master_copies(tracker: Any, optimizer: Any) -> None:
    """The tensors ``optimizer`` steps that are no module's parameters (and
    not counted as one) as optimizer state: NOTE [Tensors hung on a parameter]."""
    from torch.distributed._tools.common_utils import get_untyped_storages
    from torch.distributed._tools.mem_tracker import _MemRefType

    held = (_MemRefType.PARAM, _MemRefType.BUFFER)
    for group in getattr(optimizer, "param_groups", ()):
        for param in group.get("params", ()):
            infos = [tracker._WINFO.get(storage, (None, None))[0] for storage in get_untyped_storages(param)]
            if not any(info is not None and info.reftype in held for info in infos):
                recategorize(tracker, param, _MemRefType.OPT)


def recategorize(tracker: Any, tensor: Any, reftype: Any) -> None:
    """Count ``tensor``'s storages as ``reftype`` from now (see _refresh_peak)."""
    tracker._update_and_maybe_create_winfos(tensor, reftype)
    _refresh_peak(tracker)


def _refresh_peak(tracker: Any) -> None:
    """Where what is live now is the peak, the peak's categories are now's
    too: the same bytes at the same moment, told apart better."""
    for device, snap in tracker._curr_mem_snap.items():
        if tracker._peak_mem.get(device) == snap.get(_TOTAL):
            tracker._peak_mem_snap[device] = copy.deepcopy(snap)


# NOTE [Module state made anew]
# nn.Module's conversions give a module's parameters, buffers and gradients
# new storages: ``to_empty`` (a model built on the meta device comes to life
# this way), ``to``, ``half`` and the rest, through ``_apply``, and FSDP2's
# ``_apply`` pads each new shard after it. torch's tracker counts a storage by
# the context it was made in, so these counted as activations until the module
# first ran. While a conversion runs, what it makes counts as parameters, and
# when the outermost one returns each new storage counts as what it replaced:
# parameters, buffers, or a parameter's gradient.
CONVERSIONS = ("_apply", "to_empty", "to", "cpu", "cuda", "xpu", "half", "float", "double", "bfloat16", "type")


# NOTE [DTensor's scratch tensors]
# DTensor's sharding propagation runs each new op once on tensors of the
# global shape to learn its output's shape, under the fake mode it finds
# active, else one of its own. torch's tracker skips what runs under a fake
# mode other than the one it started in, so with real tensors these are not
# counted; in a fake-tensor world the active mode is the world's, and every
# propagation counted a global-size tensor (a whole unsharded weight, at
# ``to_empty`` of an FSDP2 model). ``ShardingPropagator._fake_mode_lock`` is
# entered around exactly that work (checked on 2.13.0, 2.14.1 and 2.15.0), so
# while the tracker runs it is wrapped by one that tells the tracker to skip.


# NOTE [A tracker per thread]
# torch's tensor modes are per thread, and in an exact world on fake tensors
# each rank's thread has a tracker of its own (NOTE [Exact worlds on fake
# tensors] in exact/world.py). What a tracker cannot see by itself is
# process-wide (module conversions, DTensor's propagation, a module getting a
# parameter), so it is wrapped once, while any tracker watches, and each
# wrapper tells the tracker of the thread it runs on, if that thread has one.

_THREAD = threading.local()  # .tracker: the tracker counting this thread's tensors
_WATCHING: list[Any] = []  # the trackers watching, in any thread
_UNWRAP: list[Callable[[], None]] = []  # undoes the wrappers, while any tracker watches
_LOCK = threading.Lock()


def counting() -> Any:
    """The tracker counting this thread's tensors, or None."""
    return getattr(_THREAD, "tracker", None)


class _Propagating:
    """``ShardingPropagator._fake_mode_lock`` while trackers count: the lock
    torch had, and this thread's tracker told that DTensor propagates."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock

    def __enter__(self) -> Any:
        entered = self.lock.__enter__()
        tracker = counting()
        if tracker is not None:
            tracker.propagating += 1
        return entered

    def __exit__(self, *exc: Any) -> Any:
        tracker = counting()
        if tracker is not None:
            tracker.propagating -= 1
        return self.lock.__exit__(*exc)


@door("measure memory")
def watch(tracker: Any) -> Callable[[], None]:
    """Tell ``tracker``, for this thread, what torch's tracker cannot see by
    itself, until the returned function is called: module conversions (NOTE
    [Module state made anew]) and DTensor's propagation (NOTE [DTensor's
    scratch tensors]); NOTE [A tracker per thread]."""
    with _LOCK:
        if not _WATCHING:
            _UNWRAP.append(_wrap_process_wide())
        _WATCHING.append(tracker)
    _THREAD.tracker = tracker

    def undo() -> None:
        if counting() is tracker:
            _THREAD.tracker = None
        with _LOCK:
            _WATCHING.remove(tracker)
            if not _WATCHING:
                _UNWRAP.pop()()

    return undo


def _wrap_process_wide() -> Callable[[], None]:
    import sys

    from torch.distributed.tensor._sharding_prop import ShardingPropagator

    from . import patching

    patches = []
    lock = vars(ShardingPropagator).get("_fake_mode_lock")
    if lock is not None:  # absent (a torch that moved it): scratch tensors count again
        patches.append((ShardingPropagator, {"_fake_mode_lock": _Propagating(lock)}))
    modules = sys.modules.get("torch.distributed._tools.mod_tracker")
    hang = getattr(modules, "register_multi_grad_hook", None)
    if hang is not None:
        patches.append((modules, {"register_multi_grad_hook": _kept_by_the_tracker(hang)}))
    saved = patching.install(patches)
    unwrap = _track_conversions()

    def undo() -> None:
        unwrap()
        patching.remove(saved)

    return undo


def _kept_by_the_tracker(hang: Callable[..., Any]) -> Callable[..., Any]:
    """NOTE [ModTracker's gradient hooks] ModTracker hangs a gradient hook
    on each module's inputs and outputs (``register_multi_grad_hook``,
    2.11-2.15.0) and drops the handle. The hook holds the node it hangs on
    (through the list of nodes it waits for), from torch's C++, where
    Python's collector cannot see it: the node, and the graph behind it,
    outlived the world. The handles go to the tracker of the calling
    thread, which removes them when it stops (``release``)."""

    @functools.wraps(hang)
    def kept(*args: Any, **kwargs: Any) -> Any:
        handle = hang(*args, **kwargs)
        tracker = counting()
        if tracker is not None:
            hooks = tracker.grad_hooks
            hooks.append(handle)
            if len(hooks) % 4096 == 0:  # a long run: forget those whose nodes died with their graph
                hooks[:] = [h for h in hooks if _hung(h)]
        return handle

    return kept


def _hung(handle: Any) -> bool:
    """Whether a hook ``register_multi_grad_hook`` returned still hangs on
    a live node (a handle keeps weak references to its hooks' dicts)."""
    parts = getattr(handle, "handles", (handle,))
    return any(getattr(part, "hooks_dict_ref", lambda: True)() is not None for part in parts)


def release(tracker: Any) -> None:
    """Remove the gradient hooks a stopped tracker's ModTracker hung (NOTE
    [ModTracker's gradient hooks])."""
    for handle in tracker.grad_hooks:
        handle.remove()
    tracker.grad_hooks.clear()


def _track_conversions() -> Callable[[], None]:
    """Wrap nn.Module's conversions (NOTE [Module state made anew]) for the
    tracker of the thread that converts, until the returned function is
    called."""
    import torch
    from torch.distributed._tools.mem_tracker import _MemRefType
    from torch.nn import Module

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def converting(module: Any, *args: Any, **kwargs: Any) -> Any:
            tracker = counting()
            if tracker is None:
                return original(module, *args, **kwargs)
            tracker.converting += 1
            try:
                return original(module, *args, **kwargs)
            finally:
                tracker.converting -= 1
                if not tracker.converting:
                    update = tracker._update_and_maybe_create_winfos
                    for sub in Module.modules(module):
                        for tensor in itertools.chain(sub._parameters.values(), sub._buffers.values()):
                            if tensor is None:
                                continue
                            is_param = isinstance(tensor, torch.nn.Parameter)
                            update(tensor, _MemRefType.PARAM if is_param else _MemRefType.BUFFER)
                            if tensor.grad is not None:
                                update(tensor.grad, _MemRefType.GRAD)
                    _refresh_peak(tracker)  # once, not per tensor

        return converting

    originals = {name: vars(Module)[name] for name in CONVERSIONS}
    wrapped = {name: wrap(fn) for name, fn in originals.items()}
    for name, fn in wrapped.items():
        setattr(Module, name, fn)

    def undo() -> None:
        for name, fn in originals.items():
            if vars(Module).get(name) is wrapped[name]:
                setattr(Module, name, fn)

    return undo
