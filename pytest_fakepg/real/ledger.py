"""A rank's ledger on real ranks against the fake world's: the first record
where they differ. Ledgers are traces (NOTE [Traces and the check],
checks/consistency.py): plain data, groups named by their members, so a
group's name, which depends on what ran before in each process, is not
compared."""

from __future__ import annotations

from typing import Any

from ..checks.consistency import Call, describe, group_text


def _calls(trace: dict[str, Any]) -> list[tuple[tuple[Any, ...], Call, str]]:
    """Each call with its group's identity (members, place among groups of
    the same members) and how to name the group."""
    groups = trace["groups"]
    out = []
    for fields in trace["calls"]:
        call = Call(*fields)
        members, ordinal, label, name = groups[call.group]
        identity = (None if members is None else tuple(members), ordinal)
        shown = group_text(tuple(members) if members is not None else tuple(range(trace["world_size"])), label, name)
        out.append((identity, call, shown))
    return out


def _same(a: tuple[tuple[Any, ...], Call, str], b: tuple[tuple[Any, ...], Call, str]) -> bool:
    (ga, ca, _), (gb, cb, _) = a, b
    if ga != gb or ca.op != cb.op or ca.dtype != cb.dtype or ca.reduce_op != cb.reduce_op:
        return False
    if ca.peer != cb.peer or ca.any_source != cb.any_source:
        return False
    # The sizes of an object collective follow each rank's pickled objects.
    return ca.object_call or cb.object_call or ca.shapes == cb.shapes


def _text(entry: tuple[tuple[Any, ...], Call, str]) -> str:
    _, call, group = entry
    return f"{describe(Call(*call[:7], None, *call[8:]))} on {group}"


def first_difference(fake: dict[str, Any], real: dict[str, Any]) -> str | None:
    """Where rank's real ledger ``real`` first differs from the fake world's
    ``fake`` (an op, a group, a shape, a dtype, a reduce op, a peer, or the
    number of calls), both sides named; None where they agree."""
    a, b = _calls(fake), _calls(real)
    for k, (x, y) in enumerate(zip(a, b)):
        if not _same(x, y):
            return f"call {k + 1} differs: the fake world issued {_text(x)}; the real ranks issued {_text(y)}"
    if len(a) != len(b):
        longer, side = (a, "fake world") if len(a) > len(b) else (b, "real ranks")
        return (f"the fake world issued {len(a)} calls and the real ranks {len(b)}; call {min(len(a), len(b)) + 1}, "
                f"only the {side} issued: {_text(longer[min(len(a), len(b))])}")
    return None
