"""CollectiveLog and CollectiveRecord: what a fake world's collectives did.

The backend appends fixed-size records to a flat C++ buffer while the test
runs; this module reads them back on demand, and is the only one that
unpacks them: the log and its records for users, traces (plain data) for the
check across ranks and Flight Recorder dumps. Counting and summing run in
C++; a ``CollectiveRecord`` object exists only for the records you index or
iterate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, overload

from . import _backend
from .ops import OP_NAMES, op_code

if TYPE_CHECKING:
    import torch
    import torch.distributed as dist



def ranks_text(ranks: Sequence[int]) -> str:
    """``0-7`` for a run of consecutive ranks, else ``0, 4`` (shortened
    past eight ranks)."""
    ranks = tuple(ranks)
    if len(ranks) > 2 and ranks == tuple(range(ranks[0], ranks[0] + len(ranks))):
        return f"{ranks[0]}-{ranks[-1]}"
    if len(ranks) > 8:
        return f"{', '.join(map(str, ranks[:8]))}, ... ({len(ranks)} ranks)"
    return ", ".join(map(str, ranks))


class CollectiveRecord(NamedTuple):
    """One collective as this rank issued it.

    ``ranks`` are the global ranks of the group (a tuple); ``group_rank`` is
    this rank's rank within it. ``shapes`` are the input shapes, ``bytes``
    their total size. ``reduce_op`` is a ``torch.distributed.ReduceOp`` member
    or None; ``peer`` the global rank of the root/peer or None. ``failed`` is
    True when an injected fault fired for this call. ``rank`` is the global
    rank that issued it (in an exact world, each rank issues its own).
    ``group`` is what the check across ranks and the report call the group:
    its mesh dimension's name or description ("tp", "default_pg", both as
    "default_pg/tp" where a group is both), else its name.
    """

    op: str
    group_name: str
    group_size: int
    group_rank: int
    ranks: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtype: torch.dtype | None
    bytes: int
    reduce_op: dist.ReduceOp.RedOpType | None
    peer: int | None
    failed: bool = False
    rank: int = 0
    group: str = ""


class CollectiveLog(Sequence[CollectiveRecord]):
    """The collectives a fake world ran, oldest first.

    A read-only sequence of :class:`CollectiveRecord` with shortcuts:
    ``ops`` (the op names in order), ``count(op=None)``,
    ``total_bytes(op=None)`` and ``clear()``. Set ``recording`` to False to
    stop recording for a while (e.g. around setup you do not want counted).
    In an exact world, each rank's log holds what that rank issued; the
    world's (``FakeWorld.collectives`` outside the ranks) holds every rank's.
    """

    __slots__ = ("_native", "_groups", "_reason", "_cleared", "_rank", "_labels")

    def __init__(
        self, native: Any, reason: str | None = None, rank: int = -1, labels: Callable[[], dict[str, str]] | None = None
    ) -> None:
        self._native = native
        # group name -> what to call it (a mesh dimension's name), while the
        # world is up
        self._labels = labels
        self._rank = rank  # the issuing rank whose records this is; -1: all
        self._groups: dict[int, tuple[str, int, int, tuple[int, ...]]] = {}
        # Why this log is empty for good (a world on torch's stock backend).
        self._reason = reason
        # What clear() forgot, per (group, op): [calls, bytes, failed], so the
        # report still says what ran.
        self._cleared: dict[tuple[int, int], list[int]] = {}

    @classmethod
    def disabled(cls, reason: str) -> CollectiveLog:
        return cls(None, reason)

    def _state(self) -> Any:
        if self._native is None:
            raise RuntimeError(f"this fake world records no collectives: {self._reason}")
        return self._native

    @property
    def recording(self) -> bool:
        return self._native is not None and self._native.recording

    @recording.setter
    def recording(self, on: bool) -> None:
        self._state().recording = bool(on)

    def __len__(self) -> int:
        if self._rank < 0:
            return len(self._state())
        return self._state().size_of(self._rank)

    @overload
    def __getitem__(self, index: int) -> CollectiveRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[CollectiveRecord]: ...
    def __getitem__(self, index: int | slice) -> Any:
        n = len(self)
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step == 1:
                return self._decode(start, stop)
            return [self._decode(i, i + 1)[0] for i in range(start, stop, step)]
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"record {index} out of range for a log of {n}")
        return self._decode(index, index + 1)[0]

    def __iter__(self) -> Iterator[CollectiveRecord]:
        # In chunks: one C++ call per 4,096 records, and no list of a million.
        n, chunk = len(self), 4096
        for start in range(0, n, chunk):
            yield from self._decode(start, min(start + chunk, n))

    def _group(self, index: int) -> tuple[str, int, int, tuple[int, ...], int]:
        # One tuple per group, shared by its records.
        group = self._groups.get(index)
        if group is None:
            name, rank, size, ranks, issuer = self._native.group(index)
            group = (name, rank, size, tuple(range(size)) if ranks is None else tuple(ranks), issuer)
            self._groups[index] = group
        return group

    def _decode(self, start: int, stop: int) -> list[CollectiveRecord]:
        make = tuple.__new__
        group = self._group
        reduce_ops = _reduce_ops()
        failed = _backend.load().RECORD_FAILED
        labels = self._labels() if self._labels is not None and stop > start else {}
        out = []
        for op, g, red, dtype, peer, shapes, nbytes, flags, _site in self._native.records(start, stop, self._rank):
            name, grank, gsize, ranks, issuer = group(g)
            label = labels.get(name, "")
            out.append(make(CollectiveRecord, (
                OP_NAMES[op], name, gsize, grank, ranks, shapes, dtype, nbytes,
                reduce_ops[red], None if peer < 0 else peer, bool(flags & failed), issuer,
                label or name,
            )))
        return out

    @property
    def ops(self) -> list[str]:
        """The op names in the order they ran."""
        return [OP_NAMES[c] for c in self._state().op_codes(self._rank)]

    def count(self, op: str | None = None) -> int:  # type: ignore[override]
        """How many collectives ran, or how many of ``op``."""
        return self._state().count(op_code(op, "count"), self._rank)

    def total_bytes(self, op: str | None = None) -> int:
        """Input bytes of every collective, or of ``op`` only."""
        return self._state().total_bytes(op_code(op, "total_bytes"), self._rank)

    def summary(self) -> dict[str, dict[str, int]]:
        """Per op: ``{"count": n, "bytes": b}``, ops in first-seen order."""
        state = self._state()
        out: dict[str, dict[str, int]] = {}
        for code in dict.fromkeys(state.op_codes(self._rank)):
            out[OP_NAMES[code]] = {
                "count": state.count(code, self._rank),
                "bytes": state.total_bytes(code, self._rank),
            }
        return out

    def clear(self) -> None:
        """Forget every record so far (call counts for faults go on; the
        collectives report still counts them)."""
        state = self._state()
        _add_stats(self._cleared, state.stats(self._rank))
        state.clear_log(self._rank)

    def ran(self) -> list[tuple[str, tuple[int, ...], str, int, int, int]]:
        """Everything that ran, cleared or not, per group and op in
        first-seen order: (group name, the group's global ranks, op, calls,
        bytes, failed calls). What the collectives report shows."""
        totals = {key: list(row) for key, row in self._cleared.items()}
        _add_stats(totals, self._state().stats(self._rank))
        out = []
        for (group, op), (calls, nbytes, failed) in totals.items():
            name, _, _, ranks, _ = self._group(group)
            out.append((name, ranks, OP_NAMES[op], calls, nbytes, failed))
        return out

    def ledger(self, flat: bool = False) -> dict[str, Any]:
        """What the collectives sent, as plain data made to be stored and
        diffed by snapshot tests (syrupy's ``snapshot``, pytest-regressions'
        ``data_regression``): per group, per op, ``{"calls": n, "bytes": b,
        "dtypes": [...]}``, in the order each first ran. A group is named by
        its label - the mesh dimension's name, ``"default_pg"``, both where
        a dimension spans the world (``"default_pg/dp"``) - with its global
        ranks added where two groups share one, and by its ranks where it
        has none. Bytes are input bytes, as in each record.

        ``flat=True`` gives one line per number, keyed ``"group: op:
        field"`` (dtypes joined by commas), so a snapshot's diff names the
        group and op of every number that changed."""
        labels = self._labels() if self._labels is not None else {}
        rows: dict[tuple[str, tuple[int, ...]], dict[str, dict[str, Any]]] = {}
        for r in self:
            label = labels.get(r.group_name, "")
            ops = rows.setdefault((label, r.ranks), {})
            row = ops.setdefault(r.op, {"calls": 0, "bytes": 0, "dtypes": []})
            row["calls"] += 1
            row["bytes"] += r.bytes
            dtype = "none" if r.dtype is None else str(r.dtype).removeprefix("torch.")
            if dtype not in row["dtypes"]:
                row["dtypes"].append(dtype)
        shared = [label for label, _ in rows]
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for (label, ranks), ops in rows.items():
            if not label:
                key = f"ranks {ranks_text(ranks)}"
            elif shared.count(label) > 1:
                key = f"{label} (ranks {ranks_text(ranks)})"
            else:
                key = label
            out[key] = ops
        if flat:
            return {f"{group}: {op}: {field}": ", ".join(value) if field == "dtypes" else value
                    for group, ops in out.items() for op, row in ops.items() for field, value in row.items()}
        return out

    def __repr__(self) -> str:
        if self._native is None:
            return f"<CollectiveLog disabled: {self._reason}>"
        return f"<CollectiveLog of {len(self)} collectives>"


def _add_stats(totals: dict[tuple[int, int], list[int]], stats: list[tuple[int, ...]]) -> None:
    """Add the backend's per-(group, op) rows of [calls, bytes, failed] into ``totals``."""
    for group, op, *values in stats:
        row = totals.setdefault((group, op), [0, 0, 0])
        for i, value in enumerate(values):
            row[i] += value


_REDUCE_OPS: dict[int, Any] = {}


def _reduce_ops() -> dict[int, Any]:
    """Record code -> dist.ReduceOp member (None for ops without one)."""
    if not _REDUCE_OPS:
        import torch.distributed as dist

        _REDUCE_OPS[_backend.load().NO_REDUCE_OP] = None
        for member in dist.ReduceOp.RedOpType.__members__.values():
            _REDUCE_OPS[int(member)] = member
    return _REDUCE_OPS


def trace_data(
    log: CollectiveLog, rank: int, world_size: int, labels: dict[str, str], sites: list[str], since: int = 0,
    batches: list[tuple[int, int, int]] = (),  # type: ignore[assignment]
) -> tuple[list[Any], list[Any]]:
    """The groups and calls in ``log`` of ``rank`` (-1: of a world of one rank) from its
    record ``since`` on, as plain data: what a trace holds (NOTE [Traces and
    the check], checks/consistency.py). A group is [global ranks or None
    for every rank, its place among groups of the same ranks, label, name];
    a call is a ``checks.consistency.Call``'s fields, its group an index
    into the groups, with the index into ``batches`` of the batch it was
    issued in (``FakeWorld.batches``), if any."""
    native = log._state()
    reduce_ops = _reduce_ops()
    module = _backend.load()
    any_source, object_call = module.RECORD_ANY_SOURCE, module.RECORD_OBJECT  # NOTE [Object collectives]
    groups = []
    index_of: dict[int, int] = {}
    seen: dict[tuple[int, ...] | None, int] = {}
    for index in range(native.num_groups()):
        name, _, _, ranks, issuer = native.group(index)  # ranks None: every rank, 0..n-1
        if rank >= 0 and issuer != rank:
            continue
        members = None if ranks is None or len(ranks) == world_size else tuple(ranks)
        ordinal = seen.get(members, 0)
        seen[members] = ordinal + 1
        index_of[index] = len(groups)
        groups.append([None if members is None else ranks, ordinal, labels.get(name, ""), name])
    # The batch (batch_isend_irecv) each of this rank's records is in, by its place.
    batch_of = {k: b for b, (r, first, end) in enumerate(batches) if r == rank for k in range(first, end)}
    calls = []
    for k, (op, g, red, dtype, peer, shapes, _, flags, site) in enumerate(native.records(since, len(native), rank),
                                                                          start=since):
        calls.append(_call(index_of[g], op, shapes, dtype, reduce_ops[red], peer, bool(flags & any_source),
                           sites[site] if 0 <= site < len(sites) else None, bool(flags & object_call))
                     + [batch_of.get(k)])
    return groups, calls


def trace(log: CollectiveLog, rank: int, world_size: int, labels: dict[str, str], sites: list[str],
          since: int = 0, batches: list[tuple[int, int, int]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """One rank's trace (NOTE [Traces and the check], checks/consistency.py):
    ``trace_data``'s groups and calls, with the rank and world size (the
    caller sets the rank of a world of one rank, read as -1)."""
    groups, calls = trace_data(log, rank, world_size, labels, sites, since, batches)
    return {"rank": rank, "world_size": world_size, "groups": groups, "calls": calls}


def _call(group: int, op: int, shapes: Any, dtype: Any, reduce_op: Any, peer: int, any_source: bool,
          site: str | None, object_call: bool) -> list[Any]:
    """A ``checks.consistency.Call``'s fields, in its order, from a record's."""
    return [group, OP_NAMES[op], [list(s) for s in shapes], None if dtype is None else str(dtype).replace("torch.", ""),
            None if reduce_op is None else reduce_op.name, None if peer < 0 else peer, any_source, site, object_call]


def mismatch_data(raw: tuple[Any, ...], label: str, world_size: int) -> dict[str, Any]:
    """A mismatch an exact world's exchange found (NOTE [Mismatches are
    worded in Python], csrc/exact.hpp), as plain data: its kind ("calls",
    "point_to_point" or "splits"), the group ``[global ranks, label,
    name]``, the group's call number (0 point to point) and both
    members' parts, each ``[global rank, group rank, call, input splits,
    output splits]`` with the call as a ``checks.consistency.Call``'s fields."""
    module = _backend.load()
    reduce_ops = _reduce_ops()
    kind, name, ranks, seq, *parts = raw
    sides = []
    for rank, group_rank, op, shapes, dtype, red, peer, any_source, in_splits, out_splits in parts:
        call = _call(0, op, shapes, dtype, reduce_ops[red], peer, any_source, None, False)
        sides.append([rank, group_rank, call, list(in_splits), list(out_splits)])
    members = list(range(world_size)) if ranks is None else list(ranks)
    return {
        "kind": module.MISMATCH_KINDS[kind], "group": [members, label, name], "seq": seq, "a": sides[0], "b": sides[1],
    }
