"""CollectiveLog and CollectiveRecord: what a fake world's collectives did.

The backend appends fixed-size records to a flat C++ buffer while the test
runs; this module reads them back on demand. Counting and summing run in C++;
a ``CollectiveRecord`` object exists only for the records you index or iterate.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, overload

if TYPE_CHECKING:
    import torch

# Same order as fakepg::Op in csrc/fake_backend.hpp: the codes index this.
OP_NAMES: tuple[str, ...] = (
    "all_reduce",
    "all_reduce_coalesced",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_coalesced",
    "all_gather_into_tensor_coalesced",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "reduce_scatter_tensor_coalesced",
    "all_to_all",
    "all_to_all_single",
    "broadcast",
    "reduce",
    "gather",
    "scatter",
    "send",
    "recv",
    "barrier",
)
_OP_CODES = {name: i for i, name in enumerate(OP_NAMES)}
_NO_REDUCE_OP = 255


class CollectiveRecord(NamedTuple):
    """One collective as this rank issued it.

    ``ranks`` are the global ranks of the group; ``group_rank`` is this rank's
    rank within it. ``shapes`` are the input shapes, ``bytes`` their total
    size. ``reduce_op`` is a ``torch.distributed.ReduceOp`` member or None;
    ``peer`` the global rank of the root/peer or None. ``failed`` is True when
    an injected fault fired for this call.
    """

    op: str
    group_name: str
    group_size: int
    group_rank: int
    ranks: Sequence[int]
    shapes: tuple[tuple[int, ...], ...]
    dtype: torch.dtype | None
    bytes: int
    reduce_op: Any
    peer: int | None
    failed: bool = False


def _op_code(op: str | None) -> int:
    if op is None:
        return -1
    try:
        return _OP_CODES[op]
    except KeyError:
        from .spec import check_op

        check_op(op)  # raises with the list of names and a suggestion
        raise


class CollectiveLog(Sequence[CollectiveRecord]):
    """The collectives a fake world ran, oldest first.

    A read-only sequence of :class:`CollectiveRecord` with shortcuts:
    ``ops`` (the op names in order), ``count(op=None)``,
    ``total_bytes(op=None)`` and ``clear()``. Set ``recording`` to False to
    stop recording for a while (e.g. around setup you do not want counted).
    """

    __slots__ = ("_native", "_groups", "_reason")

    def __init__(self, native: Any, reason: str | None = None) -> None:
        self._native = native
        self._groups: dict[int, tuple[str, int, int, Sequence[int]]] = {}
        # Why this log is empty for good (a world on torch's stock backend).
        self._reason = reason

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
        return len(self._state())

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

    def _group(self, index: int) -> tuple[str, int, int, Sequence[int]]:
        group = self._groups.get(index)
        if group is None:
            name, rank, size, ranks = self._native.group(index)
            # The default group's ranks are 0..size-1: a range, not a list of
            # a million ints per record.
            group = (name, rank, size, range(size) if ranks is None else tuple(ranks))
            self._groups[index] = group
        return group

    def _decode(self, start: int, stop: int) -> list[CollectiveRecord]:
        make = tuple.__new__
        group = self._group
        reduce_ops = _reduce_ops()
        out = []
        for op, g, red, dtype, peer, shapes, nbytes, failed in self._native.records(start, stop):
            name, grank, gsize, ranks = group(g)
            out.append(make(CollectiveRecord, (
                OP_NAMES[op], name, gsize, grank, ranks, shapes, dtype, nbytes,
                reduce_ops[red], None if peer < 0 else peer, failed,
            )))
        return out

    @property
    def ops(self) -> list[str]:
        """The op names in the order they ran."""
        return [OP_NAMES[c] for c in self._state().op_codes()]

    def count(self, op: str | None = None) -> int:  # type: ignore[override]
        """How many collectives ran, or how many of ``op``."""
        return self._state().count(_op_code(op))

    def total_bytes(self, op: str | None = None) -> int:
        """Input bytes of every collective, or of ``op`` only."""
        return self._state().total_bytes(_op_code(op))

    def summary(self) -> dict[str, dict[str, int]]:
        """Per op: ``{"count": n, "bytes": b}``, ops in first-seen order."""
        state = self._state()
        out: dict[str, dict[str, int]] = {}
        for code in dict.fromkeys(state.op_codes()):
            out[OP_NAMES[code]] = {
                "count": state.count(code),
                "bytes": state.total_bytes(code),
            }
        return out

    def clear(self) -> None:
        """Forget every record so far (call counts for faults go on)."""
        self._state().clear_log()

    def __repr__(self) -> str:
        if self._native is None:
            return f"<CollectiveLog disabled: {self._reason}>"
        return f"<CollectiveLog of {len(self)} collectives>"


_REDUCE_OPS: dict[int, Any] = {}


def _reduce_ops() -> dict[int, Any]:
    """Record code -> dist.ReduceOp member (None for ops without one)."""
    if not _REDUCE_OPS:
        import torch.distributed as dist

        _REDUCE_OPS[_NO_REDUCE_OP] = None
        for member in dist.ReduceOp.RedOpType.__members__.values():
            _REDUCE_OPS[int(member)] = member
    return _REDUCE_OPS
