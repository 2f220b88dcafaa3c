"""The tensor mode of a tensors="fake" world: torch's FakeTensorMode, with
collectives routed to the world's backend and DeviceMesh kept real.

NOTE [What runs real in a fake-tensor world]
A world with tensors="fake" runs everything on fake tensors (shapes, dtypes
and devices, no storage, no compute), with four exceptions:
 - collectives go to the world's backend (NOTE [Collectives on fake
   tensors]), so the ledger is the one real tensors would give;
 - a DeviceMesh is made of real tensors: its rank map is a few integers that
   slicing, flattening and concatenating read. A tensor made by DeviceMesh's
   own code (init_device_mesh's ``arange``, ``DeviceMesh([...])``) is made
   real;
 - an op whose tensor inputs are all real runs real (a real tensor in, a real
   tensor out): the mesh's tensors stay real through slicing, and so does
   what torch makes outside any mode, such as the RNG state DTensor's random
   ops read. An op that mixes real and fake inputs runs fake;
 - meta tensors are real (they have no storage either): a model built under
   ``torch.device("meta")`` and parallelized there, as torchtitan does, is
   chunked and sharded by ATen's meta kernels at C++ speed, and becomes fake
   when it is made a tensor of a device (``to_empty``, ``empty_like(...,
   device=...)``, ``.to(device)``).
A value the test asks of a fake tensor (``.item()``, ``.tolist()``,
``nonzero``) cannot be known: torch's error then carries a note naming the
world's tensors="fake", the line that asked and where to read what to do.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any

from .. import _compat
from .._compat import fake_tensor as _ft
from .._frames import not_user_code, user_frame
from ..errors import FakeWorldWarning
from . import cuda as _fake_cuda
from .collectives import Router
from .values import Shared, Values

# Frames between an op's caller and this mode are torch's (dynamo's disable
# around every mode's __torch_dispatch__, torch.device's function mode, a
# user dispatch mode such as the memory tracker) or this package's.
_BETWEEN = ("torch.", "pytest_fakepg.")
_COLLECTIVE_NAMESPACES = frozenset({"c10d", "_c10d_functional"})
_ALWAYS_FAKE = frozenset({"lift_fresh", "lift_fresh_copy", "lift"})
RECIPE = "README.md, 'Will it fit?'"


def _runs_real(func: Any, args: Any, kwargs: Any, fake_type: type) -> bool:
    """NOTE [What runs real in a fake-tensor world], for one op."""
    import torch

    real = meta = False
    for value in (*args, *kwargs.values()):
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, torch.Tensor):
                if isinstance(item, fake_type):
                    return False
                real = True
                meta = meta or item.is_meta
    device = kwargs.get("device")
    to_meta = device is not None and torch.device(device).type == "meta"
    if not real:  # a factory: meta tensors are real already; DeviceMesh's are made real
        return to_meta or _called_from_mesh()
    if meta and device is not None and not to_meta:
        return False  # meta made into a tensor of a device (to_empty): fake
    if device is not None and _fake_cuda.serving() and torch.device(device).type == "cuda":
        return False  # a real tensor onto the fake CUDA device (torch.tensor(..., device="cuda")): fake
    return func.overloadpacket.__name__ not in _ALWAYS_FAKE


def _called_from_mesh() -> bool:
    """Whether the op being dispatched was called by DeviceMesh's code: the
    first frame up that is not torch's dispatch machinery (or this package)
    is DeviceMesh's."""
    frame = _compat.stdlib.getframe(3)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module in _ft.MESH_MODULES:
            return True
        if not module.startswith(_BETWEEN):
            return False
        frame = frame.f_back
    return False


def user_line() -> str | None:
    """``file.py:LINE: source`` of the innermost frame outside torch and
    this package (where call sites come from too), or None."""
    import linecache

    skip = not_user_code()
    frame = _compat.stdlib.getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame = frame.f_back
    if frame is None:
        return None
    path, line = frame.f_code.co_filename, frame.f_lineno
    source = linecache.getline(path, line).strip()
    where = f"{os.path.basename(path)}:{line}"
    return f"{where}: {source}" if source else where


def _explain(exc: BaseException, func: Any) -> None:
    if any("tensors='fake'" in n for n in getattr(exc, "__notes__", ())):
        return
    line = user_line()
    at = f" at {line}" if line else ""
    note = (
        f"pytest-fakepg: {func} needs the values of a fake tensor{at}, and this world has "
        "tensors='fake' (shapes and dtypes only, no values). Use tensors='real' for a test that "
        f"reads values, or keep value-dependent code out of a fake-tensor test: see {RECIPE}."
    )
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # Python 3.10
        exc.args = (f"{exc.args[0] if exc.args else ''}\n{note}",)


@functools.cache
def mode_class() -> type:
    base = _ft.fake_tensor_mode_class()
    fake_type = _ft.fake_tensor_class()
    value_errors = _ft.value_errors()
    import torch

    local_scalar = _ft.local_scalar_op()
    meta_views = _ft.meta_views()
    inherited = getattr(base, "avoid_device_init", None)
    avoid_device_init = inherited.fget if isinstance(inherited, property) else (lambda mode: False)
    device_query = torch.ops.prim.device.default

    class WorldTensorMode(base):  # type: ignore[misc, valid-type]
        """FakeTensorMode for one world: see NOTE [What runs real in a
        fake-tensor world]."""

        def __init__(self, router: Router, assumed: set[str], semantics: str, shared: Shared | None) -> None:
            super().__init__(allow_non_fake_inputs=True)
            self.router = router
            self.values = Values(fake_type, assumed, semantics, shared)

        @property
        def avoid_device_init(self) -> bool:
            # NOTE [A fake CUDA device]: torch.cuda says it is available, and
            # nothing may touch a real CUDA device (torch.tensor(..., device=
            # "cuda") is made on the CPU and lifted, as without a GPU)
            given = self.__dict__.get("_avoid_device_init")
            return _fake_cuda.serving() or (given if given is not None else avoid_device_init(self))

        @avoid_device_init.setter
        def avoid_device_init(self, value: bool) -> None:  # torch versions that set it in __init__
            self.__dict__["_avoid_device_init"] = value

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func is device_query and type(args[0]) is fake_type and not self.in_kernel_invocation:
                # as FakeTensor answers it, without the layers between; C++
                # asks this (Python reads .fake_device): NOTE [A fake CUDA device]
                device = args[0].fake_device
                return _fake_cuda.as_cpu(device) if device.type == "cuda" else device
            kwargs = kwargs or {}
            if "device" in kwargs and _fake_cuda.serving():
                # "cuda" is this thread's current device, before FakeTensorMode's
                # cache (shared by the ranks' modes) keys on it
                kwargs["device"] = _fake_cuda.indexed(kwargs["device"])
            if func is local_scalar and isinstance(args[0], fake_type):
                value = self.values.scalar(args[0])
                if value is not None:
                    return value
            route = self.router.route(func)
            if route is not None:
                out = route(self.router, self, func, args, kwargs)
                self.values.after(func, args, kwargs, out)
                return out
            if func.namespace in _COLLECTIVE_NAMESPACES:
                raise NotImplementedError(
                    f"pytest-fakepg: {func} has no route to the backend in a world with "
                    "tensors='fake', so it would be left out of the ledger; please report it"
                )
            if _runs_real(func, args, kwargs, fake_type):
                return func(*args, **kwargs)
            if func in meta_views and type(args[0]) is fake_type and args[0].fake_mode is self:
                # this mode has no shape environment: its tensors' sizes are never symbolic
                out = _ft.view_on_meta(self, func, args, kwargs)
            else:
                out = self.fake_dispatch(func, args, kwargs, types)
            self.values.after(func, args, kwargs, out)
            return out

        def fake_dispatch(self, func: Any, args: Any, kwargs: Any, types: Any = ()) -> Any:
            try:
                return super().__torch_dispatch__(func, types, args, kwargs)
            except value_errors as exc:
                answered = self.values.answer(func, args, kwargs, self)
                if answered is not None:
                    return answered
                _explain(exc, func)
                raise

    return WorldTensorMode


def make_mode(assumed: set[str] | None = None, semantics: str = "exact", shared: Shared | None = None) -> Any:
    """A fake-tensor mode of a world whose values are ``semantics``; what its
    plan assumes is added to ``assumed``; ``shared`` is what the world's
    modes share (its routing, an exact world's exchanged counts)."""
    return mode_class()(Router(), set() if assumed is None else assumed, semantics, shared)


# -- weight initialisation ---------------------------------------------------------
# NOTE [Initialisation on fake tensors]
# torch.nn.init's functions set values, which a fake tensor does not have,
# and some read values to do it: trunc_normal_ resamples until no value is
# out of bounds (``.item()``, ``mask.any()``), orthogonal_ reads signs. In a
# world with tensors="fake" each of them returns its tensor untouched when
# that tensor is fake (a DTensor's local shard included), as torchtitan's
# init_weights expects; on a real tensor it runs as always. Code holds these
# functions by reference as often as by name (torchtitan's
# ``partial(nn.init.trunc_normal_, std=0.02)``, made when it is imported), so
# the functions themselves change while the world is up: each one's code
# becomes a call to its stand-in, a name set in torch.nn.init's namespace
# beside it, and its defaults move to the copy of the original the stand-in
# calls for real tensors. The world puts code, defaults and namespace back.

_STAND_IN = "_pytest_fakepg_{}"


def _holds_fake(tensor: Any, fake_type: type) -> bool:
    if isinstance(tensor, fake_type):
        return True
    to_local = getattr(tensor, "to_local", None)  # a DTensor
    return to_local is not None and isinstance(to_local(), fake_type)


@functools.cache
def _initialisers() -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(torch.nn.init, {name: its function's new code}, {stand-in name: the stand-in})."""
    import types

    import torch.nn.init as init

    fake_type = _ft.fake_tensor_class()
    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_") and isinstance(getattr(init, n), types.FunctionType)]
    codes: dict[str, Any] = {}
    stand_ins: dict[str, Any] = {}
    for name in names:
        function = getattr(init, name)
        original = types.FunctionType(function.__code__, function.__globals__, name, function.__defaults__, function.__closure__)
        original.__kwdefaults__ = function.__kwdefaults__

        def initialise(tensor: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if _holds_fake(tensor, fake_type):
                return tensor
            return _original(tensor, *args, **kwargs)

        stand_in = _STAND_IN.format(name)
        source = f"def {name}(tensor, *args, **kwargs):\n    return {stand_in}(tensor, *args, **kwargs)\n"
        space: dict[str, Any] = {}
        exec(compile(source, function.__code__.co_filename, "exec"), space)
        codes[name] = space[name].__code__
        stand_ins[stand_in] = initialise
    return init, codes, stand_ins


def init_patches() -> list[tuple[Any, dict[str, Any]]]:
    """(owner, {name: replacement}) for every in-place initialiser: NOTE
    [Initialisation on fake tensors]. Stand-ins first, so that a function
    never calls a name not yet set."""
    init, codes, stand_ins = _initialisers()
    patches: list[tuple[Any, dict[str, Any]]] = [(init, stand_ins)]
    for name, code in codes.items():
        patches.append((getattr(init, name), {"__code__": code, "__defaults__": None, "__kwdefaults__": None}))
    return patches


# -- torch.compile -----------------------------------------------------------------
COMPILED = (
    "pytest-fakepg: torch.compile's inductor kernels cannot run on fake tensors (they read and "
    "write memory a fake tensor does not have), so in this world with tensors='fake' each graph "
    "is compiled with {backend!r} instead: dynamo's graphs, graph breaks and fullgraph errors, "
    "inductor's decompositions and activation partitioning, run as ATen ops. The ledger is the "
    "compiled run's; memory is close to it, not equal (see docs/fake-tensors.md, 'torch.compile')."
)


def compile_patch() -> tuple[Any, dict[str, Any]]:
    """(owner, {name: replacement}) under which torch.compile's default
    backend compiles for fake tensors (NOTE [compat: torch.compile on fake
    tensors]), saying so once: at the first graph compiled while installed."""
    said = False

    def say_once() -> None:
        nonlocal said
        if said:
            return
        said = True
        frame = user_frame()
        message = COMPILED.format(backend=_compat.dynamo.FAKE_TENSOR_BACKEND)
        if frame is None:
            warnings.warn(FakeWorldWarning(message), stacklevel=2)
        else:
            warnings.warn_explicit(
                FakeWorldWarning(message), FakeWorldWarning,
                filename=frame.f_code.co_filename, lineno=frame.f_lineno,
            )

    return _compat.dynamo.inductor_on_fake_tensors(say_once)


# -- what is exchanged for real ------------------------------------------------------------


@functools.cache
def exchanged_for_real() -> tuple[tuple[Any, dict[str, Any]], ...]:
    """(owner, {name: replacement}) for what an exact world on fake tensors
    exchanges for real, each running with no fake mode active: torch's
    object collectives, in both modules that export them (the pickled bytes
    are real tensors, so the objects themselves travel: NOTE [Exact worlds on
    fake tensors], exact/world.py), and pipelining's votes (NOTE [compat:
    pipelining's control values])."""
    import torch.distributed as dist

    from .._objects import NAMES

    c10d = dist.distributed_c10d

    replacements = {name: _on_real_tensors(getattr(c10d, name)) for name in NAMES}
    stage, control = _compat.pipelining.control_methods()  # NOTE [compat: pipelining's control values]
    return (dist, replacements), (c10d, replacements), (stage, {n: _on_real_tensors(vars(stage)[n]) for n in control})


def world_patches() -> list[tuple[Any, dict[str, Any]]]:
    """What every world on fake tensors installs, whatever its values:
    initialisers that skip fake tensors (NOTE [Initialisation on fake
    tensors]), torch.compile's backend for them (NOTE [compat: torch.compile
    on fake tensors]) and casts of fake parameters (NOTE [Casts of fake
    parameters])."""
    return [*init_patches(), compile_patch(), _ft.cast_patch()]


def on_real_tensors(patches: Any) -> list[tuple[Any, dict[str, Any]]]:
    """``patches`` with each replacement run with no fake mode active: the
    object collectives a world of one rank serves (NOTE [Objects this rank
    cannot know], _objects.py) pickle objects into real tensors and read
    their sizes back, which fake tensors cannot hold."""
    return [(owner, {name: _on_real_tensors(fn) for name, fn in replacements.items()}) for owner, replacements in patches]


def _on_real_tensors(original: Any) -> Any:
    """``original``, run with no fake mode active."""

    @functools.wraps(original)
    def on_real_tensors(*args: Any, **kwargs: Any) -> Any:
        with _ft.unset_fake():
            return original(*args, **kwargs)

    return on_real_tensors
