"""A fake CUDA device: torch.cuda's API served by a tensors="fake" world with
device="cuda" on a machine without a GPU.

NOTE [A fake CUDA device]
Fake tensors on device "cuda" need no GPU (factories, linear, SDPA run on
their meta kernels), but training code around them calls torch.cuda:
Megatron's RNG tracker reads ``get_rng_state``, its DDP makes streams and
events, schedules call ``current_device`` and ``synchronize``, optimizers
compare ``param.type()`` with ``'torch.cuda.FloatTensor'``. While such a
world is up, torch.cuda answers as the world's node would:

- devices: ``is_available`` is true, ``device_count`` is the world's ranks
  per node (LOCAL_WORLD_SIZE), ``current_device`` starts at 0 in every
  thread and ``set_device`` / ``torch.cuda.device(i)`` move it, per thread
  as in CUDA (an exact world's ranks are threads);
- streams and events: objects of their own types whose waits, records and
  syncs do nothing (there is no work to order), ``elapsed_time`` 0;
- RNG: one CPU generator a device, so ``get_rng_state`` /
  ``set_rng_state`` / ``manual_seed`` / ``default_generators`` keep and give
  back states (the values of fake random tensors are not drawn from them);
- memory: ``memory_allocated`` / ``max_memory_allocated`` /
  ``memory_stats`` / ``reset_peak_memory_stats`` are the plan's (the
  calling thread's tracker: NOTE [Memory categories]), ``memory_reserved``
  the same; ``mem_get_info`` and ``get_device_properties`` describe an
  80 GiB device (``FAKE_DEVICE``);
- ``synchronize``, ``empty_cache``, ``nvtx`` ranges: nothing to do;
- tensors: ``.cuda()``, ``.to("cuda")`` and ``device=<index>`` name the
  current device (without an index torch would ask the CUDA runtime:
  ``device_indices``), ``type()`` is ``torch.cuda.FloatTensor``, ``is_cuda``
  true; FakeTensorMode never touches a real device (``avoid_device_init``).

Below Python: autograd records a stream for every tensor it saves, through
the device's guard, which a torch built without CUDA lacks (the process
ended in std::terminate): csrc/fake_cuda.cpp registers one while the device
is served, with the current device per thread. In backward, autograd's
engine asks the CUDA runtime for the current stream of each gradient it
accumulates; to the engine alone a fake CUDA tensor says it is on the CPU
(``as_cpu``), so it accumulates it on the calling thread, as multithreading
is off while the device is served. Backward needs a CPU build of torch: a
CUDA build on a machine without a GPU asks the CUDA runtime for each
device's primary context as backward starts, and refuses ("hasPrimaryContext
expects a valid device index"); forward plans work on both.

What it cannot answer, and raises for as torch does: anything that runs a
CUDA kernel on real tensors (a real tensor moved to "cuda", CUDA graphs,
the allocator's memory history), and ``Tensor.record_stream``
with its streams. Real-tensor worlds with device="cuda" and no GPU still
skip; where a GPU is present none of this is installed.
"""

from __future__ import annotations

import contextlib
from typing import Any

from .._compat import runtime
from .._compat import tools as _tools
from .._frames import user_line

# What the fake device says it is: an 80 GiB, compute capability 9.0 GPU.
FAKE_DEVICE = {"name": "fakepg CUDA device", "total_memory": 80 * 2**30, "major": 9, "minor": 0,
               "multi_processor_count": 132}


class _Properties:
    def __init__(self, index: int) -> None:
        self.index = index
        for name, value in FAKE_DEVICE.items():
            setattr(self, name, value)

    def __repr__(self) -> str:
        return f"_CudaDeviceProperties(name='{self.name}', total_memory={self.total_memory // 2**20}MB)"


class Stream:
    """A CUDA stream of the fake device: orders nothing, as there is no work."""

    def __init__(self, device: Any = None, priority: int = 0, **_: Any) -> None:
        import torch

        index = _device(device)
        self.device = torch.device("cuda", index if index >= 0 else _SERVED[0].current() if _SERVED else 0)
        self.priority = priority
        self.cuda_stream = 0

    def wait_event(self, event: Any) -> None:
        pass

    def wait_stream(self, stream: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> Event:
        event = event if event is not None else Event()
        event.record(self)
        return event

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)


class Event:
    """A CUDA event of the fake device: always complete."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False) -> None:
        self.enable_timing = enable_timing

    def record(self, stream: Any = None) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end_event: Any) -> float:
        return 0.0


class _Device:
    """What serves torch.cuda while the world is up."""

    def __init__(self, count: int) -> None:
        import torch

        from .. import _backend

        self.native = _backend.load()  # the guard autograd asks: fake_cuda.cpp
        self.count = count
        self.generators = tuple(torch.Generator() for _ in range(count))
        self.streams: dict[int, Stream] = {}

    def current(self) -> int:
        return self.native.fake_cuda_device()  # per thread, in C++, where autograd reads it too

    def set(self, device: Any) -> None:
        index = _device(device)
        if index >= 0:
            if index >= self.count:
                raise RuntimeError(f"CUDA error: invalid device ordinal {index} (the fake device has "
                                   f"{self.count}: the world's ranks per node)")
            self.native.set_fake_cuda_device(index)

    def exchange(self, device: Any) -> int:
        previous = self.current()
        self.set(device)
        return previous

    def index(self, device: Any) -> int:
        """A device argument's index; the current device's where it names none."""
        index = _device(device)
        return self.current() if index < 0 else index

    def stream(self, device: Any = None) -> Stream:
        index = self.index(device)
        if index not in self.streams:
            self.streams[index] = Stream(index)
        return self.streams[index]

    def generator(self, device: Any = "cuda") -> Any:
        return self.generators[self.index(device)]

    def patches(self) -> list[tuple[Any, dict[str, Any]]]:
        import torch

        cuda = torch.cuda
        served = self

        @contextlib.contextmanager
        def stream_context(stream: Any) -> Any:
            yield stream

        def memory(what: str) -> Any:
            def read(device: Any = None) -> int:
                tracker = _tools.counting()
                if tracker is None:
                    return 0
                figures = (_tools.current if what == "current" else _tools.at_peak)(tracker, "cuda")
                return sum(figures.values())
            return read

        def memory_stats(device: Any = None) -> dict[str, int]:
            now, peak = memory("current")(), memory("peak")()
            return {"allocated_bytes.all.current": now, "allocated_bytes.all.peak": peak,
                    "reserved_bytes.all.current": now, "reserved_bytes.all.peak": peak,
                    "active_bytes.all.current": now, "active_bytes.all.peak": peak, "num_alloc_retries": 0,
                    "num_ooms": 0}

        def reset_peak(device: Any = None) -> None:
            tracker = _tools.counting()
            if tracker is not None:
                _tools.reset_peak(tracker)

        class _DeviceGuard:  # torch.cuda.device(i)
            def __init__(self, index: Any) -> None:
                self.index, self.previous = index, 0

            def __enter__(self) -> None:
                self.previous = served.exchange(self.index)

            def __exit__(self, *exc: object) -> None:
                served.set(self.previous)

        def seed_all(seed: int) -> None:
            for generator in served.generators:
                generator.manual_seed(seed)

        api: dict[str, Any] = {
            "is_available": lambda: True, "is_initialized": lambda: True, "init": lambda: None,
            "_lazy_init": lambda: None, "_lazy_call": lambda fn, **_: fn(),
            "device_count": lambda: served.count, "current_device": served.current, "set_device": served.set,
            "_exchange_device": served.exchange, "_maybe_exchange_device": served.exchange, "device": _DeviceGuard,
            "synchronize": lambda device=None: None, "Stream": Stream, "Event": Event,
            "current_stream": served.stream, "default_stream": served.stream, "stream": stream_context,
            "set_stream": lambda stream: None,
            "get_rng_state": lambda device="cuda": served.generator(device).get_state(),
            "set_rng_state": lambda new_state, device="cuda": served.generator(device).set_state(new_state),
            "get_rng_state_all": lambda: [g.get_state() for g in served.generators],
            "set_rng_state_all": lambda states: [g.set_state(s) for g, s in zip(served.generators, states)],
            "manual_seed": lambda seed: served.generator().manual_seed(seed), "manual_seed_all": seed_all,
            "seed": lambda: served.generator().seed(), "seed_all": lambda: [g.seed() for g in served.generators],
            "initial_seed": lambda: served.generator().initial_seed(), "default_generators": served.generators,
            "memory_allocated": memory("current"), "max_memory_allocated": memory("peak"),
            "memory_reserved": memory("current"), "max_memory_reserved": memory("peak"),
            "memory_stats": memory_stats, "reset_peak_memory_stats": reset_peak,
            "reset_max_memory_allocated": reset_peak, "empty_cache": lambda: None,
            "mem_get_info": lambda device=None: (FAKE_DEVICE["total_memory"] - memory("current")(),
                                                 FAKE_DEVICE["total_memory"]),
            "get_device_properties": lambda device=None: _Properties(served.index(device)),
            "get_device_capability": lambda device=None: (FAKE_DEVICE["major"], FAKE_DEVICE["minor"]),
            "get_device_name": lambda device=None: FAKE_DEVICE["name"],
            "is_bf16_supported": lambda including_emulation=True: True,
        }
        to = torch.Tensor.to

        def tensor_to(self: Any, *args: Any, **kwargs: Any) -> Any:
            if "device" in kwargs:
                kwargs["device"] = indexed(kwargs["device"])
            return to(self, *map(indexed, args), **kwargs)

        def tensor_cuda(self: Any, device: Any = None, non_blocking: bool = False, **kwargs: Any) -> Any:
            return to(self, torch.device("cuda", served.index(device)), non_blocking=non_blocking, **kwargs)

        # C++ is told the fake device's tensors are on the CPU (as_cpu): what
        # C++ answers from it, Python asks again.
        base_type, base_get_device = torch.Tensor.type, torch.Tensor.get_device
        base_is_cuda, base_is_cpu = runtime.tensor_property("is_cuda"), runtime.tensor_property("is_cpu")

        def on_fake_cuda(t: Any) -> bool:
            device = getattr(t, "fake_device", None)
            return device is not None and device.type == "cuda"

        def tensor_type(self: Any, dtype: Any = None, non_blocking: bool = False, **kwargs: Any) -> Any:
            if dtype is None and not kwargs and on_fake_cuda(self):
                return "torch.cuda." + base_type(self).rpartition(".")[2]  # torch.cuda.FloatTensor
            return base_type(self) if dtype is None and not kwargs else base_type(self, dtype, non_blocking, **kwargs)

        tensor = {
            "to": tensor_to, "cuda": tensor_cuda, "type": tensor_type,
            "get_device": lambda self: self.fake_device.index if on_fake_cuda(self) else base_get_device(self),
            "is_cuda": property(lambda self: on_fake_cuda(self) or base_is_cuda.__get__(self)),
            "is_cpu": property(lambda self: not on_fake_cuda(self) and base_is_cpu.__get__(self)),
        }
        patches: list[tuple[Any, dict[str, Any]]] = [(cuda, api), (torch.Tensor, tensor)]
        for module in (cuda.random, cuda.memory):
            patches.append((module, {name: api[name] for name in api if name in vars(module)}))
        nvtx = getattr(cuda, "nvtx", None)
        if nvtx is not None:
            patches.append((nvtx, {"range_push": lambda msg: 0, "range_pop": lambda: 0, "mark": lambda msg: None,
                                   "range": lambda msg, *a, **k: contextlib.nullcontext()}))
        return patches


def _device(device: Any) -> int:
    """A device argument as an index; -1 for "the current one"."""
    import torch

    if device is None:
        return -1
    if isinstance(device, int):
        return device
    if isinstance(device, str):
        device = torch.device(device)
    if isinstance(device, torch.device):
        return -1 if device.index is None else device.index
    return int(device)


_SERVED: list[Any] = []  # the device being served, while a world serves it


def as_cpu(device: Any) -> Any:
    """What C++ is told a fake CUDA tensor's ``device`` is (Python reads the
    fake device itself): "cpu" to autograd's engine running backward, else
    ``device``. The engine asks the CUDA runtime for the current stream of
    every CUDA gradient it accumulates, which a torch built without CUDA
    cannot answer ("Cannot access accelerator device when none is
    available"); as a CPU gradient it runs on the calling thread. What the
    engine makes from a gradient's recorded metadata (zeros for a gradient
    nobody gave) stays on CUDA: that was recorded in forward."""
    if _SERVED and runtime.called_from_autograd_engine():
        import torch

        return torch.device("cpu")
    return device


def serving() -> bool:
    return bool(_SERVED)


def indexed(device: Any) -> Any:
    """``device`` as a CUDA device with its index, where it is a bare index
    or "cuda" without one (the current device): without an index, torch asks
    the CUDA runtime which one, and a torch built without CUDA has none.
    Anything else is left as it is."""
    import torch

    if not _SERVED or isinstance(device, bool):
        return device
    if isinstance(device, int):
        return torch.device("cuda", device)
    if device == "cuda" or isinstance(device, torch.device) and device.type == "cuda" and device.index is None:
        return torch.device("cuda", _SERVED[0].current())
    return device


def rank_modes() -> Any:
    """What a rank's thread enters beside its fake-tensor mode while the
    device is served (tensor modes are per thread)."""
    return device_indices() if _SERVED else contextlib.nullcontext()


def needed(device: str, tensors: str) -> bool:
    """Whether a world of ``device`` and ``tensors`` serves the fake device."""
    if device != "cuda" or tensors != "fake":
        return False
    import torch

    return not torch.cuda.is_available()


def device_indices() -> Any:
    """A TorchFunctionMode that gives a device index its device type
    before torch parses it: ``torch.empty(n, device=torch.cuda.current_device())``
    names "the current accelerator's device 0", which a torch built without
    CUDA refuses ("Cannot access accelerator device when none is available")."""
    import torch
    from torch.overrides import TorchFunctionMode

    makers = (torch.tensor, torch.as_tensor)

    class DeviceIndices(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            if func in makers and args and _holds_fake(args[0]):
                # C++ reads each element's value past every mode: say so, not "no CUDA backend"
                line = user_line()
                raise RuntimeError(
                    f"pytest-fakepg: {func.__name__}() of fake tensors needs their values"
                    f"{f' at {line}' if line else ''}, and this world has tensors='fake' (shapes and dtypes "
                    "only, no values). Keep value-dependent code out of a fake-tensor test: see README.md, "
                    "'Will it fit?'")
            if "device" in kwargs:
                kwargs["device"] = indexed(kwargs["device"])
            return func(*args, **kwargs)

    return DeviceIndices()


def _holds_fake(data: Any) -> bool:
    from .._compat.fake_tensor import fake_tensor_class

    if isinstance(data, (list, tuple)):
        return any(_holds_fake(item) for item in data)
    return isinstance(data, fake_tensor_class())


class Served:
    """The fake device while a world is up: torch.cuda's API patched, the
    C++ guard registered, and backward on the calling thread (autograd's
    device threads are for real GPUs); ``stop()`` undoes it all."""

    def __init__(self, ranks_per_node: int) -> None:
        from .. import _compat

        device = _Device(ranks_per_node)
        device.native.serve_fake_cuda(ranks_per_node)
        self.native = device.native
        _SERVED.append(device)
        self.indices = device_indices()
        self.indices.__enter__()  # this thread's; an exact world's ranks enter their own (rank_modes)
        self.threads = _compat.runtime.autograd_threads()
        _compat.runtime.set_autograd_threads(False)
        self.installed = _compat.patching.install(device.patches())

    def stop(self) -> None:
        from .. import _compat

        _compat.patching.remove(self.installed)
        self.indices.__exit__(None, None, None)
        _SERVED.clear()
        _compat.runtime.set_autograd_threads(self.threads)
        self.native.set_fake_cuda_device(0)
        self.native.serve_fake_cuda(0)

