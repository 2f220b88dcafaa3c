"""Values a fake tensor has although it has no storage: those the program
fixes, and the finiteness checks training code makes.

NOTE [Values fake tensors carry]
A fake tensor has shapes and dtypes, not values, and reading one
(``.item()``, ``bool(t)``, ``if t:``) stops a plan. Some values are fixed by
the program, not by the data, and training code reads exactly those:

- *known values*: a small tensor made from constants (``torch.full((), 0.)``,
  ``arange``, ``torch.tensor([...])``) and every op over known values
  (GradScaler's scale, growth tracker and ``found_inf``, their updates by
  ``_amp_update_scale_``). Each is computed for real on a CPU copy of at
  most ``LIMIT`` elements kept beside the fake tensor;
- *non-negative*: norms, ``abs``, ``sqrt``, ``exp`` and what sums,
  products, maxima, stacks, casts, views and collectives make of them, so
  ``norm < 0`` is known false (DeepSpeed's overflow check);
- *finite, assumed*: ``isfinite`` is true and ``isnan``/``isinf`` false on
  every fake tensor (and what they decompose to: ``x == x``, ``abs(x) != inf``), and ``_amp_foreach_non_finite_check_and_unscale_``
  finds nothing, so GradScaler's ``found_inf``, ``clip_grad_norm_(...,
  error_if_nonfinite=True)`` and DeepSpeed's overflow check read "finite":
  a plan is of a step that does not overflow. The report states it
  (``ASSUMPTION``).

- *routed, assumed*: ``topk`` over values that are not known returns
  indices a plan assumes (NOTE [Routing on fake tensors]).

Every other value stays unknown and reading it keeps torch's error with the
world's note. A write to a tensor by an op that cannot be computed forgets
what was known of it and of every view of its storage.
"""

from __future__ import annotations

import math
from typing import Any

from .._compat import fake_tensor as _ft

ASSUMPTION = ("fake values are finite: isfinite() is true, isnan() and isinf() false, and gradient-overflow "
              "checks (GradScaler, clip_grad_norm_'s error_if_nonfinite, DeepSpeed) find no overflow")

# NOTE [Routing on fake tensors]
# An MoE router picks each token's experts with topk over scores that only
# real data decides, and everything after it (the tokens each expert gets,
# the dispatch's all_to_all splits, the grouped GEMM's shapes) follows from
# those indices. It is the one place a plan must assume: by default routing
# is balanced, torchtitan's own rule (debug.moe_force_load_balance): row t's
# j-th index is (t * k + j) mod n, so every expert gets tokens * k / n. A
# test gives its own with ``world.route(fn)``: ``fn(rows, n, k)`` returns the
# (rows, k) indices, in [0, n) (one expert at twice its share, for the
# worst case). What was assumed is stated in ``world.assumptions`` and the
# report. topk over known values is computed, as any op over them.
BALANCED = ("topk over fake values routes evenly: row t's j-th index is (t * k + j) mod n "
            "(torchtitan's balanced routing; world.route() gives another)")
ROUTED = "topk over fake values returns the indices the test's routing function gives (world.route())"

# The largest tensor whose values are kept (a count per token of a long
# sequence): computing it for real costs what the op costs on a CPU. Integer
# and bool tensors (routing maps, indices, counts: a token-by-expert map of
# 4,096 tokens and 256 experts is a million) may be larger.
LIMIT = 1 << 16
INDEX_LIMIT = 1 << 22


def _keeps(tensor: Any) -> bool:
    """Whether ``tensor``'s values are small enough to keep."""
    limit = LIMIT if tensor.dtype.is_floating_point or tensor.dtype.is_complex else INDEX_LIMIT
    return tensor.numel() <= limit

NONNEG = "non-negative"  # what is known of a tensor whose values are not

# Collectives whose result over known values the world's rule fixes
# (``_collective``): c10d's and the functional ones.
_UNIFORM_RULES = frozenset({"allreduce_", "all_reduce", "broadcast_", "broadcast", "alltoall_base_",
                            "all_to_all_single"})

# Collectives whose known values an exact world exchanges between its ranks'
# modes (NOTE [Counts exchanged between exact ranks]).
_EXCHANGED = frozenset({"alltoall_base_", "all_to_all_single"})

# In-place ops that overwrite the whole tensor they write, whatever it held.
_OVERWRITES = frozenset({"zero_", "fill_", "copy_"})

# Ops whose result is non-negative whatever their input.
_MAKES_NONNEG = frozenset({
    "abs", "sqrt", "exp", "exp2", "norm", "linalg_vector_norm", "_foreach_norm", "relu", "sigmoid", "softmax",
    "_softmax", "square", "rsqrt",
})
# Ops whose result is non-negative when every tensor input is (and every
# number input is >= 0).
_KEEP_NONNEG = frozenset({
    "clone", "detach", "alias", "view", "_unsafe_view", "reshape", "expand", "squeeze", "unsqueeze", "select",
    "slice", "t", "transpose", "permute", "_to_copy", "to", "contiguous", "sum", "mean", "amax", "amin", "max",
    "min", "nansum", "cumsum", "prod", "pow", "index", "index_select", "gather", "wait_tensor", "all_reduce",
    "repeat", "unbind", "split", "split_with_sizes", "chunk", "add", "mul", "div", "stack", "cat", "minimum",
    "reciprocal", "copy", "_foreach_pow", "mm", "matmul", "dot", "lift_fresh", "lift_fresh_copy", "allreduce_",
    "all_gather_into_tensor", "reduce_scatter_tensor", "_reduce_scatter_base_", "_allgather_base_", "broadcast_",
})
_COMPARISONS = {"lt": lambda c: (c <= 0, False), "le": lambda c: (c < 0, False),
                "gt": lambda c: (c < 0, True), "ge": lambda c: (c <= 0, True)}
_FINITE = {"isfinite": True, "isnan": False, "isinf": False, "isposinf": False, "isneginf": False}
_UNSCALE = "_amp_foreach_non_finite_check_and_unscale_"
# Ops whose values follow from their output's shape alone: name -> where
# the fill value is among the arguments (None: the name says it).
_LIKE = {"zeros_like": None, "ones_like": None, "full_like": 1, "new_zeros": None, "new_ones": None,
         "new_full": 2}
# Ops that fix a value with no known input (sources aside).
_PRODUCERS = frozenset({*_MAKES_NONNEG, *_FINITE, _UNSCALE, *_OVERWRITES, *_LIKE, "eq", "ne", "topk"})


class Shared:
    """What the fake-tensor modes of one world's ranks share: the test's
    routing function (None: balanced; NOTE [Routing on fake tensors]) and,
    in an exact world, each rank's known part of an all_to_all_single
    (NOTE [Counts exchanged between exact ranks])."""

    def __init__(self) -> None:
        self.routing: Any = None
        # (group members, call number) -> group rank -> (known input or None, input splits)
        self.parts: dict[tuple[tuple[int, ...], int], dict[int, tuple[Any, list[int]]]] = {}
        self.calls: dict[tuple[tuple[int, ...], int], int] = {}  # (members, group rank) -> calls so far


class Values:
    """What one fake-tensor mode knows of its tensors' values."""

    def __init__(self, fake_type: type, assumed: set[str], semantics: str = "exact",
                 shared: Shared | None = None) -> None:
        from torch.utils.weak import WeakIdKeyDictionary

        self.fake_type = fake_type
        self.semantics = semantics  # the world's values: "uniform", "copy" or "exact"
        self.assumed = assumed  # the world's: ASSUMPTION once it is made
        self.shared = shared or Shared()
        # an exact world's all_to_all_single outputs -> (their exchange's key, this group rank, group size)
        self._pending: Any = WeakIdKeyDictionary()
        self.known: Any = WeakIdKeyDictionary()  # fake tensor -> a CPU tensor of its values, or NONNEG
        self._sources: dict[Any, bool] = {}
        self._described: dict[Any, tuple[str, bool]] = {}

    # -- reading -------------------------------------------------------------------

    def scalar(self, tensor: Any) -> Any:
        """``tensor.item()`` where it is known, else None."""
        if self._pending:
            self._settle(tensor)
        value = self.known.get(tensor)
        if value is None or value is NONNEG:
            return None
        return value.item()

    # -- after each op -------------------------------------------------------------

    def after(self, func: Any, args: Any, kwargs: Any, out: Any) -> None:
        """Record what ``func(*args, **kwargs)``, which gave ``out``, fixes."""
        import torch

        described = self._described.get(func)
        if described is None:
            described = self._described[func] = self._describe(func)
        name, produces = described
        inputs = _tensors(args, kwargs, torch.Tensor)
        if self._pending:
            for t in inputs:
                self._settle(t)
        if name in _EXCHANGED and self.semantics == "exact":
            self._deposit(name, func, args, kwargs, out)
            return
        if not produces and (not any(t in self.known or not isinstance(t, self.fake_type) for t in inputs)
                             if inputs else not self._source(func)):
            if self.known:  # what it writes is no longer known
                for t in self._written(func, args, kwargs):
                    self._forget(t)
            return
        inputs = [self._of(t) for t in inputs]
        written = self._written(func, args, kwargs)
        if name in _FINITE:
            self.assumed.add(ASSUMPTION)
            self._set(out, lambda t: torch.full(t.shape, _FINITE[name], dtype=torch.bool))
            return
        if name in _LIKE:  # zeros_like(x) is zeros whatever x holds
            where = _LIKE[name]
            fill = (0 if "zeros" in name else 1) if where is None else (args[where] if len(args) > where else None)
            if isinstance(fill, (int, float, bool)):
                self._set(out, lambda t: torch.full(t.shape, fill, dtype=t.dtype))
            return
        if name == "topk" and isinstance(args[0], self.fake_type) and \
                not isinstance(self._of(args[0]), torch.Tensor):
            self._route(args, kwargs, out)
            return
        if name == _UNSCALE:  # finds no overflow: found_inf (args[1]) keeps its value
            self.assumed.add(ASSUMPTION)
            for t in written:
                if t is not args[1]:
                    self._forget(t)
            return
        if (inputs and all(v is not None and v is not NONNEG for v in inputs) or not inputs and self._source(func)) \
                and self._computable(func):
            if self._compute(func, args, kwargs, out, written):
                return
        if name in _UNIFORM_RULES and self.semantics != "exact" and self._collective(name, func, args, kwargs, out):
            return
        for t in written:
            self._forget(t)
        if name in _OVERWRITES and written and isinstance(written[0], self.fake_type):
            self._overwrite(name, written[0], args, inputs)
            return
        nonneg = self._nonneg(name, func, args, kwargs, inputs)
        if nonneg is not None:
            self._set(out, nonneg)
            if written and name in _KEEP_NONNEG and nonneg is NONNEG:
                for t in written:
                    self.known[t] = NONNEG

    def _describe(self, func: Any) -> tuple[str, bool]:
        """``func``'s name, and whether it fixes a value from unknown inputs."""
        name = _ft.op_facts(func)[0]
        return name, name in _PRODUCERS

    @staticmethod
    def _computable(func: Any) -> bool:
        """A collective is the world's, never run again on copies."""
        return func.namespace not in ("c10d", "_c10d_functional", "c10d_functional")

    def _of(self, value: Any) -> Any:
        if isinstance(value, self.fake_type):
            return self.known.get(value)
        return value  # a real tensor: its own values

    def _source(self, func: Any) -> bool:
        """Whether ``func`` with no tensor inputs makes values the program fixes."""
        found = self._sources.get(func)
        if found is None:
            import torch

            name, _, returns = _ft.op_facts(func)
            found = self._sources[func] = (
                torch.Tag.nondeterministic_seeded not in func.tags and not name.startswith(("empty", "new_empty"))
                and returns
            )
        return found

    @staticmethod
    def _written(func: Any, args: Any, kwargs: Any) -> list[Any]:
        """The tensors ``func`` writes to, by its schema."""
        import torch

        found = []
        for i, name, kwarg_only in _ft.op_facts(func)[1]:
            value = args[i] if i < len(args) and not kwarg_only else kwargs.get(name)
            found.extend(_tensors((value,), {}, torch.Tensor))
        return found

    def _compute(self, func: Any, args: Any, kwargs: Any, out: Any, written: list[Any]) -> bool:
        """Run ``func`` for real on the known values; keep what it gives."""
        import torch

        flat_out = [t for t in _ft.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if not all(_keeps(t) for t in flat_out):
            return False
        got = self._run(func, args, kwargs)
        if got is None:
            return False
        flat_got = [t for t in _ft.tree_leaves(got) if isinstance(t, torch.Tensor)]
        if len(flat_got) != len(flat_out):
            return False
        theirs = {_storage(t) for t in _tensors(args, kwargs, torch.Tensor) if not isinstance(t, self.fake_type)}
        for fake, value in zip(flat_out, flat_got):
            if _storage(value) in theirs:  # a view of the caller's real tensor: never written through
                value = value.clone()
            if tuple(value.shape) == tuple(fake.shape) and value.dtype == fake.dtype:
                self.known[fake] = value
            else:
                self._forget(fake)
        return True  # a tensor written in place: its known copy was written

    def _collective(self, name: str, func: Any, args: Any, kwargs: Any, out: Any) -> bool:
        """A collective over known values, by the world's rule: in a uniform
        world every rank holds this rank's data (a sum is ``n`` times it, a
        broadcast leaves it); in a copy world the tensor is left as it is."""
        import torch

        bound = dict(zip(_ft.schema_arguments(func), args))
        bound.update(kwargs)
        tensors = bound.get("tensors", bound.get("tensor", bound.get("input")))
        tensors = list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]
        values = [self._of(t) for t in tensors]
        if not all(isinstance(v, torch.Tensor) for v in values):
            return False
        results = values
        if name in ("alltoall_base_", "all_to_all_single") and self.semantics == "uniform":
            # every rank holds this rank's data: from each, the chunk meant for this rank
            group = bound.get("process_group", bound.get("group_name"))
            size, rank = _ft.group_size(group), _ft.group_rank(group)
            splits = [int(s) for s in bound.get("input_split_sizes") or ()] or values[0].shape[0] // size
            results = [torch.cat([torch.split(values[0], splits)[rank]] * size)]
        elif name in ("allreduce_", "all_reduce") and self.semantics == "uniform":
            kind = _ft.reduce_op_name(bound["reduce_op"])
            size = _ft.group_size(bound.get("process_group", bound.get("group_name")))
            if kind == "SUM":
                results = [v * size for v in values]
            elif kind == "PRODUCT":
                results = [v ** size for v in values]
            elif kind not in ("AVG", "MAX", "MIN", "BAND", "BOR"):
                return False
        if name == "alltoall_base_":
            targets = [bound["output"]]
        else:
            targets = tensors if name.endswith("_") else [t for t in _ft.tree_leaves(out) if isinstance(t, torch.Tensor)]
        for target, value in zip(targets, results):
            if isinstance(target, self.fake_type) and tuple(target.shape) == tuple(value.shape):
                self.known[target] = value.to(target.dtype).clone()
            else:
                self._forget(target)
        return True

    def _route(self, args: Any, kwargs: Any, out: Any) -> None:
        """The indices ``topk`` over unknown values gives: NOTE [Routing on
        fake tensors]. Only along the last dimension (a router's experts)."""
        import torch

        scores, k = args[0], int(args[1] if len(args) > 1 else kwargs["k"])
        dim = args[2] if len(args) > 2 else kwargs.get("dim", -1)
        indices = out[1]
        if dim not in (-1, scores.dim() - 1) or not _keeps(indices) or k == 0:
            return
        n, rows = scores.shape[-1], indices.numel() // k
        given = self.shared.routing
        if given is None:
            ids = torch.arange(rows * k) % n
            self.assumed.add(BALANCED)
        else:
            ids = _checked_routing(given(rows, n, k), rows, n, k)
            self.assumed.add(ROUTED)
        self.known[indices] = ids.reshape(indices.shape).to(indices.dtype)

    def _deposit(self, name: str, func: Any, args: Any, kwargs: Any, out: Any) -> None:
        """NOTE [Counts exchanged between exact ranks]
        In an exact world each rank's mode knows only its own values, and the
        collective itself exchanges meta tensors. An expert-parallel count
        exchange (all_to_all_single of known counts) still carries values:
        each rank leaves its known input, with its splits, in the world's
        Shared under (the group's members, its call number on the group);
        the output is settled once every member's part is there - when the
        output is next used or read, by which time the exact exchange has
        made every member issue. A part not known on some member leaves the
        output unknown."""
        import torch

        bound = dict(zip(_ft.schema_arguments(func), args))
        bound.update(kwargs)
        group = bound.get("process_group", bound.get("group_name"))
        source = bound.get("input")
        target = bound["output"] if name == "alltoall_base_" else out
        self._forget(target)
        members, rank, size = _ft.group_members(group), _ft.group_rank(group), _ft.group_size(group)
        calls = self.shared.calls
        number = calls[(members, rank)] = calls.get((members, rank), 0) + 1
        value = self._of(source) if isinstance(source, torch.Tensor) else None
        splits = [int(s) for s in bound.get("input_split_sizes") or ()]
        if isinstance(value, torch.Tensor):
            splits = splits or [value.shape[0] // size] * size
        self.shared.parts.setdefault((members, number), {})[rank] = (
            value if isinstance(value, torch.Tensor) else None, splits)
        if isinstance(target, self.fake_type):
            self._pending[target] = ((members, number), rank, size)

    def _settle(self, tensor: Any) -> None:
        """An exact world's exchanged output, known once every part is."""
        import torch

        pending = self._pending.get(tensor)
        if pending is None:
            return
        key, rank, size = pending
        parts = self.shared.parts.get(key, {})
        if len(parts) < size:
            return
        del self._pending[tensor]
        if all(value is not None for value, _ in parts.values()):
            value = torch.cat([torch.split(parts[src][0], parts[src][1])[rank] for src in range(size)])
            if tuple(value.shape) == tuple(tensor.shape) and _keeps(tensor):
                self.known[tensor] = value.to(tensor.dtype)

    def _overwrite(self, name: str, tensor: Any, args: Any, inputs: list[Any]) -> None:
        """``tensor`` was overwritten whole, by a number or a known tensor."""
        import torch

        if not _keeps(tensor):
            return
        if name == "zero_":
            self.known[tensor] = torch.zeros(tensor.shape, dtype=tensor.dtype)
        elif name == "fill_" and isinstance(args[1], (int, float, bool)):
            self.known[tensor] = torch.full(tensor.shape, args[1], dtype=tensor.dtype)
        elif name == "copy_" and len(inputs) > 1 and isinstance(inputs[1], torch.Tensor):
            self.known[tensor] = inputs[1].to(tensor.dtype).expand(tensor.shape).clone()

    def answer(self, func: Any, args: Any, kwargs: Any, mode: Any) -> Any:
        """Where fake tensors cannot have ``func``'s output (its shape
        depends on values: ``bincount``, ``nonzero``, ``repeat_interleave``)
        and every input is known: the output computed for real, as fake
        tensors of ``mode`` that carry it. None where it cannot be."""
        import torch

        inputs = [self._of(t) for t in _tensors(args, kwargs, torch.Tensor)]
        if not inputs or not all(v is not None and v is not NONNEG for v in inputs) or not self._computable(func):
            return None
        got = self._run(func, args, kwargs)
        if got is None:
            return None

        def fake(value: Any) -> Any:
            if not isinstance(value, torch.Tensor):
                return value
            made = mode.from_tensor(value)
            if _keeps(value):
                self.known[made] = value
            return made

        return _ft.tree_map(fake, got)

    def _run(self, func: Any, args: Any, kwargs: Any) -> Any:
        """``func`` for real on the known values (on the CPU), or None."""
        import torch

        def real(value: Any) -> Any:
            if isinstance(value, self.fake_type):
                return self.known[value]
            if isinstance(value, torch.device) and value.type != "cpu":
                return torch.device("cpu")
            return value

        real_kwargs = {k: real(v) for k, v in kwargs.items()}
        if real_kwargs.get("device") is not None:
            real_kwargs["device"] = "cpu"
        try:
            return func(*_ft.tree_map(real, args), **real_kwargs)
        except Exception:  # noqa: BLE001 - an op that will not run on CPU copies: its values stay unknown
            return None

    def _nonneg(self, name: str, func: Any, args: Any, kwargs: Any, inputs: list[Any]) -> Any:
        """NONNEG, a function making the known value of the output, or None."""
        import torch

        if name in _MAKES_NONNEG:
            return NONNEG
        if name in ("eq", "ne") and len(args) == 2:  # isfinite's own decomposition: x == x, abs(x) != inf
            other = args[1]
            if other is args[0] or (isinstance(other, float) and math.isinf(other)):
                equal = other is args[0]
                self.assumed.add(ASSUMPTION)
                return lambda t: torch.full(t.shape, equal == (name == "eq"), dtype=torch.bool)
        if name in ("copy_", "copy") and len(inputs) >= 2:
            return NONNEG if _nonneg_value(inputs[1]) else None
        if name in _COMPARISONS and len(args) == 2 and _nonneg_value(self._of(args[0])) and \
                isinstance(args[1], (int, float)):
            decided, value = _COMPARISONS[name](args[1])
            if decided:
                return lambda t: torch.full(t.shape, value, dtype=torch.bool)
            return None
        if name == "where" and len(args) == 3:
            cond = self._of(args[0])
            if cond is not None and cond is not NONNEG and cond.numel():
                picked = args[1] if bool(cond.all()) else args[2] if not bool(cond.any()) else None
                if picked is not None:
                    value = self._of(picked) if isinstance(picked, torch.Tensor) else picked
                    if value is NONNEG or (isinstance(value, (int, float)) and value >= 0):
                        return NONNEG
            return NONNEG if all(_nonneg_value(self._of(a)) for a in args[1:]) else None
        if name in ("masked_fill", "masked_fill_") and len(args) == 3:
            mask = self._of(args[1])
            if mask is not None and mask is not NONNEG and not bool(mask.any()) and _nonneg_value(inputs[0]):
                return NONNEG
            return NONNEG if _nonneg_value(inputs[0]) and _nonneg_value(self._of(args[2])) else None
        if name in ("clamp", "clamp_min", "clamp_", "clamp_min_"):
            low = args[1] if len(args) > 1 else kwargs.get("min")
            if isinstance(low, (int, float)) and low >= 0:
                return NONNEG
        base = name.rstrip("_") if name.endswith("_") and not name.startswith("_") else name
        if base in _KEEP_NONNEG or name in _KEEP_NONNEG:
            numbers = [a for a in _flat(args) if isinstance(a, (int, float)) and not isinstance(a, bool)]
            if inputs and all(_nonneg_value(v) for v in inputs) and (
                    name in ("pow", "pow_", "_foreach_pow", "div", "div_", "to", "_to_copy") or
                    all(n >= 0 for n in numbers)):
                return NONNEG
        return None

    def _set(self, out: Any, fact: Any) -> None:
        import torch

        for t in _ft.tree_leaves(out):
            if isinstance(t, self.fake_type):
                if fact is NONNEG:
                    self.known[t] = NONNEG
                elif isinstance(t, torch.Tensor) and _keeps(t):
                    self.known[t] = fact(t)

    def _forget(self, tensor: Any) -> None:
        """``tensor`` was written by an op whose result is not known: forget it
        and every tensor sharing its storage."""
        if not self.known or not isinstance(tensor, self.fake_type):
            return
        self.known.pop(tensor, None)
        storage = _storage(tensor)
        for other in [t for t in self.known.keys() if _storage(t) == storage]:
            self.known.pop(other, None)


def _checked_routing(ids: Any, rows: int, n: int, k: int) -> Any:
    """A routing function's answer, refused where it cannot be indices."""
    import torch

    ids = torch.as_tensor(ids)
    if tuple(ids.shape) != (rows, k) or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"world.route()'s function gave {tuple(ids.shape)} {ids.dtype} indices for topk over {rows} "
                         f"rows of {n} choices with k={k}; it must give integers of shape ({rows}, {k})")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
        raise ValueError(f"world.route()'s function gave indices from {int(ids.min())} to {int(ids.max())} for topk "
                         f"over {n} choices; each must be in [0, {n - 1}]")
    if k > 1 and ids.numel():
        ordered = ids.sort(dim=-1).values
        repeats = (ordered[:, 1:] == ordered[:, :-1]).any(dim=-1).nonzero()
        if repeats.numel():
            row = int(repeats[0])
            raise ValueError(f"world.route()'s function gave row {row} the indices {ids[row].tolist()}, one of them "
                             f"twice; topk picks {k} different choices of {n} for each row")
    return ids


def _storage(tensor: Any) -> int:
    try:
        return _ft.storage_key(tensor)
    except Exception:  # noqa: BLE001 - a tensor without storage (sparse): itself
        return id(tensor)


def _nonneg_value(value: Any) -> bool:
    if value is NONNEG:
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value >= 0
    import torch

    return isinstance(value, torch.Tensor) and value.numel() > 0 and bool((value >= 0).all())


def _flat(args: Any) -> list[Any]:
    found = []
    for value in args:
        if isinstance(value, (list, tuple)):
            found.extend(value)
        else:
            found.append(value)
    return found


def _tensors(args: Any, kwargs: Any, kind: type) -> list[Any]:
    return [v for v in _flat((*args, *kwargs.values())) if isinstance(v, kind)]
