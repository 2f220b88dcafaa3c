"""Consistency across ranks: do the ranks of a sweep issue the same
collectives?

NOTE [Traces and the check]
A swept case leaves a *trace*: its collectives in order, each with its group
(identified by the group's global ranks and its place among groups with the
same ranks, since each rank creates only its own groups and names differ),
op, shapes, dtype, reduce op, peer and call site (``records.trace_data``
reads them from the log). Traces are plain data: they ride on the case's
report, so the check runs where reports meet (the only process, or
pytest-xdist's controller) once the last case of a sweep is in
(plugin/sweeps.py). This module is the check alone: pure functions over
traces, which an exact world's deadlock report uses too.

The check follows what a real backend needs to match calls (c10d's
ProcessGroupWrapper fingerprint, Flight Recorder's matching rules): group by
group, call by call, every member must issue the same op, with the same root
or peer, reduce op and dtype, and the same input shapes where the op needs
them; calls whose sizes may differ per rank (all_gather and reduce_scatter
lists, all_to_all, gather and scatter) are matched without shapes. Point to
point, each send from a to b pairs in order with a recv on b from a (or from
any source), of the same numel and dtype. A call some member never makes is a
divergence: on a cluster it waits forever. Only ranks that ran are compared.
"""

from __future__ import annotations

from collections import Counter

from typing import Any, NamedTuple

from ..ops import FROM_ROOT, POINT_TO_POINT, SAME_SHAPES, TO_ROOT
from ..records import ranks_text


class Call(NamedTuple):
    group: int  # index into the trace's groups
    op: str
    shapes: list[list[int]]
    dtype: str | None
    reduce_op: str | None
    peer: int | None
    any_source: bool
    site: str | None
    object_call: bool  # sizes follow each rank's objects: not compared
    batch: int | None = None  # the batch_isend_irecv it was issued in (for Flight Recorder dumps)


# -- describing calls ------------------------------------------------------------


def describe(call: Call) -> str:
    parts = [call.op]
    if call.shapes:
        if len(call.shapes) > 4:
            parts.append(f"{len(call.shapes)} tensors of {call.dtype}")
        else:
            parts.append(", ".join(f"{call.dtype}{s}" for s in call.shapes))
    if call.reduce_op is not None:
        parts.append(call.reduce_op)
    if call.op in FROM_ROOT or (call.op == "recv" and not call.any_source):
        parts.append(f"from rank {call.peer}")
    elif call.op == "recv":
        parts.append("from any rank")
    elif call.op in TO_ROOT or call.op == "send":
        parts.append(f"to rank {call.peer}")
    text = " ".join(parts)
    return f"{text} at {call.site}" if call.site else text


def _mismatch(a: Call, b: Call, rank_a: int, rank_b: int) -> str | None:
    """What a cluster does when rank_a's call ``a`` meets rank_b's ``b``, or
    None if they match."""
    if a.op != b.op:
        return f"on a cluster rank {rank_a} waits forever in {a.op}, rank {rank_b} in {b.op}"
    if (a.op in FROM_ROOT or a.op in TO_ROOT) and a.peer != b.peer:
        return "on a cluster the ranks wait for different roots: a hang"
    if a.reduce_op != b.reduce_op:
        return "on a cluster the ranks reduce with different ops: the result is undefined"
    if a.dtype != b.dtype:
        return "on a cluster this is a dtype mismatch: gloo raises, NCCL reads the bytes as the wrong type"
    if a.op in SAME_SHAPES and a.shapes != b.shapes and not (a.object_call or b.object_call):
        return "on a cluster this is a size mismatch: gloo raises, NCCL hangs or corrupts data"
    return None


def _numel(call: Call) -> int:
    n = 0
    for shape in call.shapes:
        size = 1
        for d in shape:
            size *= d
        n += size
    return n


# -- the check ---------------------------------------------------------------------


class Trace:
    def __init__(self, data: dict[str, Any]) -> None:
        self.rank: int = data["rank"]
        size = data["world_size"]
        self.groups = [
            (tuple(range(size)) if ranks is None else tuple(ranks), ordinal, label, name)
            for ranks, ordinal, label, name in data["groups"]
        ]
        self.calls = [Call(*c) for c in data["calls"]]

    def group_key(self, call: Call) -> tuple[tuple[int, ...], int]:
        ranks, ordinal, _, _ = self.groups[call.group]
        return ranks, ordinal

    def group_text(self, call: Call) -> str:
        ranks, _, label, name = self.groups[call.group]
        return group_text(ranks, label, name)


def group_text(ranks: tuple[int, ...], label: str, name: str) -> str:
    named = label or f"'{name}'"
    return f"group {named} (ranks {ranks_text(ranks)})"


def deviant(traces: dict[int, dict[str, Any]]) -> int | None:
    """The one rank whose collectives differ from those of every other rank
    while all the others agree (groups compared by size, place and label, so
    that each rank's own sub-group counts alike): where a divergence is
    reported. None when no one rank stands out (two ranks, or several that
    differ)."""
    signatures = {}
    for r, data in traces.items():
        t = Trace(data)
        signatures[r] = tuple(
            (len(t.groups[c.group][0]), t.groups[c.group][1], t.groups[c.group][2], c.op,
             None if c.object_call else tuple(map(tuple, c.shapes)), c.dtype, c.reduce_op)
            for c in t.calls if c.op not in POINT_TO_POINT
        )
    common, agree = Counter(signatures.values()).most_common(1)[0]
    odd = [r for r, sig in signatures.items() if sig != common]
    return odd[0] if len(odd) == 1 and agree >= 2 else None


def check(traces: dict[int, dict[str, Any]]) -> str | None:
    """The first divergence among the ranks' traces, as a message, or None."""
    ranks = {r: Trace(t) for r, t in sorted(traces.items())}
    return _check_groups(ranks) or _check_p2p(ranks)


def _check_groups(ranks: dict[int, Trace]) -> str | None:
    order: list[tuple[tuple[int, ...], int]] = []
    calls: dict[tuple[tuple[int, ...], int], dict[int, list[Call]]] = {}
    for r, t in ranks.items():
        for call in t.calls:
            if call.op in POINT_TO_POINT:
                continue
            key = t.group_key(call)
            if key not in calls:
                calls[key] = {}
                order.append(key)
            calls[key].setdefault(r, []).append(call)
    for key in order:
        members = [m for m in key[0] if m in ranks]
        if len(members) < 2:
            continue
        seqs = {m: calls[key].get(m, []) for m in members}
        for i in range(max(len(s) for s in seqs.values())):
            first = members[0]
            for other in members[1:]:
                a = seqs[first][i] if i < len(seqs[first]) else None
                b = seqs[other][i] if i < len(seqs[other]) else None
                if a is not None and b is not None:
                    outcome = _mismatch(a, b, first, other)
                    if outcome is None:
                        continue
                    return _message(ranks[first].group_text(a), i, (first, a), (other, b), outcome)
                if a is None and b is None:
                    continue
                waiting = other if a is None else first
                outcome = f"on a cluster rank {waiting} waits forever"
                known = (first, a) if a is not None else (other, b)
                return _message(ranks[known[0]].group_text(known[1]), i, (first, a), (other, b), outcome)
    return None


def _message(group: str, i: int, x: tuple[int, Call | None], y: tuple[int, Call | None], outcome: str) -> str:
    def side(rank: int, call: Call | None) -> str:
        if call is not None:
            return f"rank {rank} {describe(call)}"
        return f"rank {rank} issued no call {i + 1} on this group"

    return (
        f"ranks {x[0]} and {y[0]} diverge on {group} at its call {i + 1}: "
        f"{side(*x)}; {side(*y)} - {outcome}"
    )


def _check_p2p(ranks: dict[int, Trace]) -> str | None:
    sends: dict[tuple[int, int], list[Call]] = {}
    for r, t in ranks.items():
        for call in t.calls:
            if call.op == "send" and call.peer in ranks:
                sends.setdefault((r, call.peer), []).append(call)
    for b, t in ranks.items():
        for call in t.calls:
            if call.op != "recv":
                continue
            if call.any_source:
                senders = sorted(a for (a, dst), q in sends.items() if dst == b and q)
                if not senders:
                    continue  # its sender may be a rank that did not run
                a = senders[0]
            else:
                a = call.peer
                if a not in ranks:
                    continue
            queue = sends.get((a, b), [])
            if not queue:
                return (
                    f"ranks {a} and {b} diverge on point-to-point {a} -> {b}: rank {b} {describe(call)}; "
                    f"rank {a} sent nothing more to rank {b} - on a cluster rank {b} waits forever"
                )
            send = queue.pop(0)
            message = _p2p_mismatch((a, send), (b, call))
            if message:
                return message
    for (a, b), queue in sends.items():
        if queue:
            return (
                f"ranks {a} and {b} diverge on point-to-point {a} -> {b}: rank {a} {describe(queue[0])}; "
                f"rank {b} posted no matching recv - on a cluster rank {a} waits forever"
            )
    return None


def _p2p_mismatch(x: tuple[int, Call], y: tuple[int, Call]) -> str | None:
    """What a cluster does when rank a's send meets rank b's recv, or None
    if they match."""
    (a, send), (b, recv) = x, y
    sized = not (send.object_call or recv.object_call)
    if (sized and _numel(send) != _numel(recv)) or send.dtype != recv.dtype:
        kind = "dtype" if send.dtype != recv.dtype else "size"
        return (
            f"ranks {a} and {b} diverge on point-to-point {a} -> {b}: rank {a} {describe(send)}; "
            f"rank {b} {describe(recv)} - on a cluster this is a {kind} mismatch: the receiver "
            "gets the wrong bytes, or both ranks hang"
        )
    return None


def word_mismatch(data: dict[str, Any]) -> str:
    """A mismatch an exact world's exchange found (``records.mismatch_data``;
    NOTE [Mismatches are worded in Python], csrc/exact.hpp), worded as the
    check words a divergence, without call sites."""
    (rank_a, grank_a, fields_a, _, out_splits), (rank_b, grank_b, fields_b, in_splits, _) = data["a"], data["b"]
    a, b = Call(*fields_a), Call(*fields_b)
    if data["kind"] == "point_to_point":
        return _p2p_mismatch((rank_a, a), (rank_b, b)) or (
            # The backend compares shapes too where there are no values to copy (fake tensors).
            f"ranks {rank_a} and {rank_b} diverge on point-to-point {rank_a} -> {rank_b}: rank {rank_a} "
            f"{describe(a)}; rank {rank_b} {describe(b)} - on fake tensors a send and its recv must agree "
            "on shape (dimensions of size 1 aside): on a cluster the receiver would read the sender's elements "
            "in another shape"
        )
    group = group_text(*data["group"])
    if data["kind"] == "splits":
        return (
            f"ranks {rank_a} and {rank_b} diverge on {group} at its call {data['seq']}: rank {rank_a} "
            f"{describe(a)} expects {out_splits[grank_b]} rows from rank {rank_b}, which sends it "
            f"{in_splits[grank_a]} - on a cluster this is a size mismatch: gloo raises, NCCL hangs or corrupts data"
        )
    # The backend also compares how many tensors the ranks pass, which the
    # sweep's check leaves to the shapes of the ops that need them.
    outcome = _mismatch(a, b, rank_a, rank_b) or (
        "on a cluster the ranks pass different numbers of tensors: gloo raises, NCCL hangs or corrupts data"
    )
    return _message(group, data["seq"] - 1, (rank_a, a), (rank_b, b), outcome)
