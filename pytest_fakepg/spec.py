"""WorldSpec: the validated description of one fake world.

Pure Python, no torch: the pytest plugin builds specs at collection time, so a
bad marker argument is reported before any test runs and before torch loads.
Every error names the argument, the value given and what is allowed.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ._backend import DEVICES
from .ops import ALL_OPS, check_op

VALUES = ("uniform", "copy", "exact")
FAIL_AT = ("issue", "wait")
BACKENDS = ("fakepg", "fake")
TENSORS = ("real", "fake")


@dataclass(frozen=True)
class FaultSpec:
    """One armed fault: ``op`` (an op name or ``"*"``), ``nth`` (None for
    every call, else the call number that raises, once), ``at``."""

    op: str
    nth: int | None
    at: str


@dataclass(frozen=True)
class WorldSpec:
    world_size: int
    rank: int
    mesh_shape: tuple[int, ...] | None
    mesh_dim_names: tuple[str, ...] | None
    device: str
    values: str
    faults: tuple[FaultSpec, ...]
    backend: str
    record: bool
    tensors: str = "real"
    local_world_size: int | None = None  # None: decided when the world starts (NOTE [torchrun's environment])
    env: bool = True
    exact_dims: tuple[str, ...] | None = None  # NOTE [Hybrid worlds] (csrc/world_state.hpp)
    per_rank_modules: tuple[str, ...] = ()  # NOTE [Client state] (_compat/state.py)

    @classmethod
    def build(
        cls,
        world_size: int | None = None,
        *,
        rank: int = 0,
        mesh: Any = None,
        device: str = "cpu",
        values: str | None = None,
        fail: Any = None,
        fail_at: str = "issue",
        backend: str | None = None,
        record: bool | None = None,
        tensors: str = "real",
        local_world_size: int | None = None,
        env: bool | None = None,
        exact_dims: Any = None,
        per_rank_modules: Any = (),
    ) -> WorldSpec:
        """Validate every argument (in signature order) and resolve defaults.

        The one definition of a world's arguments: ``FakeWorld(...)`` and
        ``@pytest.mark.fake_world(...)`` bind to this signature. None means
        "the default": ``values`` "uniform" (on torch's stock backend "copy"),
        ``backend`` "fakepg" (for the marker: ``--fake-world-backend``),
        ``record`` on for fakepg, off for the stock backend. ``tensors``:
        "real", or "fake" for shapes without storage (NOTE [What runs real
        in a fake-tensor world]). ``local_world_size``: ranks per node, for
        torchrun's ``LOCAL_RANK``/``LOCAL_WORLD_SIZE`` (default: NOTE
        [torchrun's environment]); ``env``: set torchrun's variables while the world is
        up (default on; for the marker, the ini option ``fake_world_env``).
        ``exact_dims``: with ``values="exact"``, the mesh dimensions along
        which ranks run exactly; only the ranks that share ``rank``'s
        coordinates on the other dimensions run (NOTE [Hybrid worlds]).
        ``per_rank_modules``: modules (with their submodules) whose globals
        each rank of an exact world keeps to itself, and which any world puts
        back when it goes down, beside the known libraries' (NOTE [Client state]).
        """
        if world_size is not None:
            world_size = check_world_size(world_size)
        shape, names = parse_mesh(mesh)
        world_size = resolve_world_size(world_size, shape, names)
        shape = resolve_mesh_shape(shape, world_size)
        rank = check_rank(rank, world_size)
        device = check_device(device)
        backend = "fakepg" if backend is None else check_choice("backend", backend, BACKENDS)
        fail_at = check_choice("fail_at", fail_at, FAIL_AT)
        if values is not None:
            values = check_choice("values", values, VALUES)
        faults = parse_fail(fail, fail_at)
        if record is not None and not isinstance(record, bool):
            raise TypeError(f"record must be True or False, got {record!r}")
        tensors = check_choice("tensors", tensors, TENSORS)
        local_world_size = check_local_world_size(local_world_size, world_size)
        if env is not None and not isinstance(env, bool):
            raise TypeError(f"env must be True or False, got {env!r}")
        exact_dims = check_exact_dims(exact_dims, values, names)
        per_rank_modules = check_module_names(per_rank_modules)
        if values == "exact":
            _fit_exact(rank, backend, exact_dims)
        if tensors == "fake":
            _fit_fake_tensors(backend)
        if backend == "fake":
            values, record = _fit_stock_backend(values, record, faults)
        else:
            values = values or "uniform"
            record = True if record is None else record
        return cls(
            world_size=world_size,
            rank=rank,
            mesh_shape=shape,
            mesh_dim_names=names,
            device=device,
            values=values,
            faults=faults,
            backend=backend,
            record=record,
            tensors=tensors,
            local_world_size=local_world_size,
            env=True if env is None else env,
            exact_dims=exact_dims,
            per_rank_modules=per_rank_modules,
        )

    @functools.cached_property
    def running(self) -> tuple[int, ...] | None:
        """The global ranks that run, in order, where only some do (a world
        with ``exact_dims`` that leaves some dimension out); else None. They
        share ``rank``'s coordinates on every dimension not in
        ``exact_dims``."""
        if self.exact_dims is None or self.mesh_shape is None or self.mesh_dim_names is None:
            return None
        exact = [name in self.exact_dims for name in self.mesh_dim_names]
        if all(exact):
            return None
        mine = _coordinates(self.rank, self.mesh_shape)
        return tuple(
            r for r in range(self.world_size)
            if all(e or c == m for e, c, m in zip(exact, _coordinates(r, self.mesh_shape), mine))
        )

    @property
    def mesh_id(self) -> str | None:
        """The mesh as it appears in test ids: ``dp2xtp4`` or ``2x4``."""
        if self.mesh_shape is None:
            return None
        if self.mesh_dim_names:
            return "x".join(
                f"{n}{s}" for n, s in zip(self.mesh_dim_names, self.mesh_shape)
            )
        return "x".join(str(s) for s in self.mesh_shape)


def _coordinates(rank: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    coords = []
    for size in reversed(shape):
        rank, c = divmod(rank, size)
        coords.append(c)
    return tuple(reversed(coords))


def check_exact_dims(exact_dims: Any, values: str | None, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``exact_dims`` as a tuple of mesh dimension names, or None."""
    if exact_dims is None:
        return None
    dims = (exact_dims,) if isinstance(exact_dims, str) else exact_dims
    if not isinstance(dims, (tuple, list)) or not dims or not all(isinstance(d, str) for d in dims):
        raise TypeError(
            f"exact_dims must be a mesh dimension name or a tuple of them, like exact_dims='pp'; got {exact_dims!r}"
        )
    if values != "exact":
        raise ValueError(
            f"exact_dims={exact_dims!r} picks the ranks an exact world runs; give values='exact' with it "
            f"(got values={values!r})"
        )
    if not names:
        raise ValueError(
            f"exact_dims={exact_dims!r} names mesh dimensions, and this world has no named mesh; "
            "give one, like mesh={'pp': 4, 'dp': 2}"
        )
    for dim in dims:
        if dim not in names:
            close = difflib.get_close_matches(dim, list(names), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"exact_dims names {dim!r}{hint}, which is not a dimension of the mesh ({', '.join(names)})")
    if len(set(dims)) != len(dims):
        raise ValueError(f"exact_dims names a dimension more than once: {exact_dims!r}")
    return tuple(dims)


_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def check_module_names(modules: Any) -> tuple[str, ...]:
    """``per_rank_modules`` as a tuple of dotted module names."""
    names = (modules,) if isinstance(modules, str) else modules
    if not isinstance(names, (tuple, list)) or not all(isinstance(n, str) and _MODULE_NAME.fullmatch(n) for n in names):
        raise TypeError(
            "per_rank_modules must be a module name or a list of them, like "
            f"per_rank_modules=['mylib.state']; got {modules!r}"
        )
    return tuple(dict.fromkeys(names))


def _fit_exact(rank: int, backend: str, exact_dims: tuple[str, ...] | None) -> None:
    """An exact world runs every rank (NOTE [Exact worlds] in csrc/exact.cpp),
    or with ``exact_dims`` the ranks that share ``rank``'s other coordinates;
    only fakepg can compute across ranks."""
    if backend != "fakepg":
        raise ValueError(
            "values='exact' needs the fakepg backend; torch's stock backend "
            "(backend='fake') only has values='copy'"
        )
    if rank != 0 and exact_dims is None:
        raise ValueError(
            f"rank={rank} was given with values='exact', which runs every rank "
            "of the world in one test; leave rank out (the rank fixture and "
            "dist.get_rank() give each rank its own)"
        )


def _fit_fake_tensors(backend: str) -> None:
    """Only fakepg records what fake tensors send."""
    if backend != "fakepg":
        raise ValueError(
            "tensors='fake' needs the fakepg backend, which records what fake "
            "tensors send; torch's stock backend (backend='fake') records nothing"
        )


def _fit_stock_backend(
    values: str | None, record: bool | None, faults: tuple[FaultSpec, ...]
) -> tuple[str, bool]:
    """torch's stock fake backend copies values, records nothing and can only
    fail every collective at issue. Defaults fall back to that; explicit asks
    it cannot honour are refused."""
    if values == "uniform":
        raise ValueError(
            "values='uniform' needs the fakepg backend; torch's stock backend "
            "(backend='fake') only has values='copy'"
        )
    if record:
        raise ValueError(
            "record=True needs the fakepg backend; torch's stock backend "
            "(backend='fake') records nothing"
        )
    for f in faults:
        if f.op != ALL_OPS or f.nth is not None or f.at != "issue":
            raise ValueError(
                f"fail={_describe_fault(f)} needs the fakepg backend; torch's "
                "stock backend (backend='fake') can only fail every collective "
                "when issued (fail=True, fail_at='issue')"
            )
    return "copy", False


def _describe_fault(f: FaultSpec) -> str:
    text = repr(f.op) if f.nth is None else f"{{{f.op!r}: {f.nth}}}"
    return text if f.at == "issue" else f"{text} with fail_at={f.at!r}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_world_size(world_size: Any) -> int:
    if not _is_int(world_size):
        raise TypeError(
            f"world_size must be an int >= 1, got {world_size!r} "
            f"({type(world_size).__name__})"
        )
    if world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size}")
    return world_size


def check_rank(rank: Any, world_size: int) -> int:
    if not _is_int(rank):
        raise TypeError(
            f"rank must be an int in [-{world_size}, {world_size - 1}] for "
            f"world_size={world_size}, got {rank!r} ({type(rank).__name__})"
        )
    if not -world_size <= rank < world_size:
        raise ValueError(
            f"rank must be in [0, {world_size - 1}] (or a negative index from "
            f"-{world_size}) for world_size={world_size}, got {rank}"
        )
    return rank % world_size


def check_local_world_size(local: Any, world_size: int) -> int | None:
    """Ranks per node, or None (the default, decided when the world
    starts: NOTE [torchrun's environment])."""
    if local is None:
        return None
    if not _is_int(local) or local < 1 or world_size % local:
        raise ValueError(
            f"local_world_size must be an int >= 1 that divides world_size={world_size} "
            f"(ranks per node), got {local!r}"
        )
    return local


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
        )
    return str(value)


def check_device(device: Any) -> str:
    if not isinstance(device, str) or device not in DEVICES:
        raise ValueError(
            f"device must be one of {', '.join(map(repr, DEVICES))} (the device "
            f"types the fakepg backend serves); got {device!r}"
        )
    return device


_DIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_mesh(mesh: Any) -> tuple[tuple[int, ...] | None, tuple[str, ...] | None]:
    """Split a mesh argument into (sizes, names). Sizes may hold one -1.

    Accepted: None; a dict of dimension name to size; a tuple of sizes; a
    tuple of ``(name, size)`` pairs (which keeps duplicate names visible).
    """
    if mesh is None:
        return None, None
    allowed = (
        "a dict of dimension name to size like {'dp': 2, 'tp': 4}, a tuple "
        "of sizes like (2, 4), or a tuple of (name, size) pairs"
    )
    if isinstance(mesh, Mapping):
        pairs = list(mesh.items())
    elif isinstance(mesh, tuple) and mesh and all(
        isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in mesh
    ):
        pairs = list(mesh)
    elif isinstance(mesh, tuple) and mesh and all(_is_int(s) for s in mesh):
        return _check_sizes(mesh, mesh), None
    else:
        raise TypeError(f"mesh must be {allowed}; got {mesh!r}")
    if not pairs:
        raise ValueError(f"mesh must have at least one dimension; got {mesh!r}")
    names = [n for n, _ in pairs]
    for n in names:
        if not isinstance(n, str) or not _DIM_NAME.match(n):
            raise ValueError(
                f"mesh dimension names must be identifiers like 'dp', got {n!r} "
                f"in mesh={mesh!r}"
            )
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ValueError(
            f"mesh dimension names must be unique; {', '.join(map(repr, dups))} "
            f"appears more than once in mesh={mesh!r}"
        )
    return _check_sizes(tuple(s for _, s in pairs), mesh), tuple(names)


def _check_sizes(sizes: tuple[Any, ...], mesh: Any) -> tuple[int, ...]:
    for s in sizes:
        if not _is_int(s) or (s < 1 and s != -1):
            raise ValueError(
                f"mesh sizes must be ints >= 1 (one may be -1, inferred from "
                f"world_size); got {s!r} in mesh={mesh!r}"
            )
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh may have at most one -1 size, got mesh={mesh!r}")
    return tuple(sizes)


def _mesh_text(shape: tuple[int, ...], names: tuple[str, ...] | None) -> str:
    if names:
        return "{" + ", ".join(f"{n!r}: {s}" for n, s in zip(names, shape)) + "}"
    return repr(shape)


def resolve_world_size(
    world_size: int | None,
    shape: tuple[int, ...] | None,
    names: tuple[str, ...] | None,
) -> int:
    if world_size is not None:
        return world_size
    if shape is None:
        raise ValueError("world_size is required unless a mesh is given")
    if -1 in shape:
        raise ValueError(
            f"mesh={_mesh_text(shape, names)} has a -1 size, which is inferred "
            "from world_size; give world_size too"
        )
    return math.prod(shape)


def resolve_mesh_shape(
    shape: tuple[int, ...] | None, world_size: int
) -> tuple[int, ...] | None:
    if shape is None:
        return None
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if world_size % known:
            raise ValueError(
                f"mesh {shape} cannot cover world_size={world_size}: "
                f"{world_size} is not divisible by {known}"
            )
        shape = tuple(world_size // known if s == -1 else s for s in shape)
    elif known != world_size:
        raise ValueError(
            f"mesh {shape} has {known} ranks but world_size is {world_size}; "
            "the product of the mesh sizes must equal world_size"
        )
    return shape


def check_nth(op: str, nth: Any) -> int:
    if not _is_int(nth) or nth < 1:
        raise ValueError(
            f"the call number for {op!r} must be an int >= 1 (calls count "
            f"from 1), got {nth!r}"
        )
    return nth


def parse_fail(fail: Any, at: str) -> tuple[FaultSpec, ...]:
    """``None``/``False``: no faults. ``True``/``"*"``: every collective. An
    op name, a list of op names, or a dict of op name to call number."""
    if fail is None or fail is False:
        return ()
    if fail is True:
        return (FaultSpec(ALL_OPS, None, at),)
    if isinstance(fail, str):
        return (FaultSpec(check_op(fail), None, at),)
    if isinstance(fail, Mapping):
        return tuple(
            FaultSpec(check_op(op), check_nth(op, n), at) for op, n in fail.items()
        )
    if isinstance(fail, (list, tuple, set, frozenset)):
        return tuple(FaultSpec(check_op(op), None, at) for op in fail)
    raise TypeError(
        "fail must be None, True, '*', an op name, a list of op names or a "
        f"dict of op name to call number; got {fail!r}"
    )


# -- sweeps: what a fake_world marker expands to ---------------------------

RANK_SWEEP = "all"


# The marker's signature: WorldSpec.build's, without cls. Binding marker
# arguments to it makes wrong or unknown keywords fail with Python's own
# message; world_size, rank and mesh may also be lists there (sweeps).
SIGNATURE = inspect.signature(WorldSpec.build)


def bind(
    args: tuple[Any, ...], kwargs: dict[str, Any], signature: inspect.Signature = SIGNATURE
) -> dict[str, Any]:
    """Arguments bound to ``signature`` (a world's, or the marker's which
    extends it) as a dict of every parameter."""
    allowed = f"(allowed: {', '.join(signature.parameters)})"
    for name in kwargs:
        if name not in signature.parameters:
            close = difflib.get_close_matches(name, list(signature.parameters), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"got an unexpected keyword argument {name!r}{hint} {allowed}")
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{exc} {allowed}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def expand(
    args: dict[str, Any],
    *,
    default_world_size: int,
    default_backend: str,
    all_ranks: bool = False,
    default_env: bool = True,
) -> list[WorldSpec]:
    """Every world a marker asks for, in a stable order: world sizes, then
    meshes, then ranks. ``args`` are the bound marker arguments. Raises
    ValueError/TypeError on the first invalid argument."""
    sizes = args["world_size"]
    meshes = args["mesh"]
    exact = args.get("values") == "exact"
    if exact and (isinstance(args["rank"], (list, str))):
        raise ValueError(
            f"rank={args['rank']!r} was given with values='exact', which runs every "
            "rank of the world in one test; leave rank out"
        )
    ranks = RANK_SWEEP if all_ranks and not exact else args["rank"]
    mesh_list = meshes if isinstance(meshes, list) else [meshes]
    if not mesh_list:
        raise ValueError("mesh must not be an empty list")
    if isinstance(sizes, list):
        if not sizes:
            raise ValueError("world_size must not be an empty list")
        size_list: list[Any] = [check_world_size(s) for s in sizes]
    elif sizes is None and meshes is None:
        size_list = [default_world_size]
    else:
        size_list = [sizes]
    if isinstance(ranks, str) and ranks != RANK_SWEEP:
        raise ValueError(f"rank must be an int, a list of ints or 'all', got {ranks!r}")
    if isinstance(ranks, list) and not ranks:
        raise ValueError("rank must not be an empty list")
    rest = {k: v for k, v in args.items() if k not in ("world_size", "rank", "mesh")}
    rest["backend"] = rest["backend"] or default_backend
    if rest.get("env") is None:
        rest["env"] = default_env
    specs: list[WorldSpec] = []
    for size in size_list:
        for mesh in mesh_list:
            # Validate the world once at rank 0, then sweep its ranks (an
            # exact world has none to sweep: its one rank is validated).
            base = WorldSpec.build(size, rank=ranks if exact else 0, mesh=mesh, **rest)
            if ranks == RANK_SWEEP:
                rank_list: list[Any] = list(range(base.world_size))
            elif isinstance(ranks, list):
                rank_list = ranks
            else:
                rank_list = [ranks]
            for r in rank_list:
                specs.append(replace(base, rank=check_rank(r, base.world_size)))
    return specs


def case_id(spec: WorldSpec) -> str:
    """``w8-r3``, ``w8-dp2xtp4-r0``: world size, mesh (if any), rank; for an
    exact world, which runs every rank, ``w8-exact``; one that runs the
    ranks along some dimensions, ``w8-pp4xdp2-exact-pp`` (and ``-r1`` where
    ``rank`` picks other coordinates than rank 0's)."""
    mesh = spec.mesh_id
    who = "exact" if spec.values == "exact" else f"r{spec.rank}"
    if spec.exact_dims is not None:
        who += "-" + "-".join(spec.exact_dims) + (f"-r{spec.rank}" if spec.rank else "")
    return f"w{spec.world_size}-{mesh}-{who}" if mesh else f"w{spec.world_size}-{who}"
