"""A swept test's traces as Flight Recorder dumps (``--fake-world-trace-dir``).

One folder per swept test, one pickled dump per rank (``rank_<r>``), in the
format torch's analyzer reads, so that

    python -m torch.distributed.flight_recorder.fr_trace DIR/<test>

analyses a fake run with the tool people use on real ones. The fields are
c10d's (torch/csrc/distributed/c10d/FlightRecorder.hpp, dump version 2.10,
the one torch 2.11 to 2.15.0 write); every call is "completed", since a fake
call never waits. Group names in a dump are the same on every rank (a group
is known by its global ranks and creation order; see consistency.py); a
batch of point-to-point calls (``batch_isend_irecv``) is one coalesced
group, as NCCL's recorder writes it; calls of object collectives are written
with one byte a rank, the same on every rank (their byte counts follow each
rank's objects: NOTE [Object collectives]).
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

from ..ops import FLIGHT_RECORDER_NAMES, FLIGHT_RECORDER_SIZES, POINT_TO_POINT
from .consistency import Call, Trace

# What c10d calls a group made without a description, as dumps write it.
NO_DESC = "undefined"
VERSION = "2.10"

def _c10_dtype_names() -> dict[str, str]:
    """torch dtype names -> c10 ScalarType names, as dumps spell them
    ("float32" -> "Float"), from the backend, which knows both."""
    from .. import _backend

    return {str(dtype).removeprefix("torch."): name for dtype, name in _backend.load().scalar_type_names()}


def _sizes(call: Call, rank_in_group: int, size: int) -> tuple[list[list[int]], list[list[int]]]:
    """(input sizes, output sizes) as a real backend would record them, by
    the op's rule in csrc/ops.def. An object collective's bytes follow each
    rank's objects; it is written as one element a rank (the same on every
    rank), gathered or scattered as its op's tensors are."""
    rule = FLIGHT_RECORDER_SIZES[call.op]
    if call.object_call:
        if rule in ("gathered", "gathered_list"):
            return [[1]], [[size]]
        if rule in ("scattered", "own_part", "from_root"):
            return [[size]], [[1]]
        return [[1]], [[1]]
    shapes = [list(s) for s in call.shapes]
    if rule == "gathered":
        return shapes, [[s[0] * size, *s[1:]] if s else [size] for s in shapes]
    if rule == "scattered":
        return shapes, [[s[0] // size, *s[1:]] if s else [] for s in shapes]
    if rule == "gathered_list":
        return shapes, shapes * size
    if rule == "own_part":
        return shapes, shapes[rank_in_group:rank_in_group + 1]
    if rule == "to_root":
        return shapes, []
    if rule == "from_root":
        return [], shapes[rank_in_group:rank_in_group + 1] if len(shapes) == size else shapes
    return shapes, shapes


def write(root: str, traces: dict[int, dict[str, Any]]) -> str:
    """Write one dump per rank of ``traces`` (one sweep) under ``root``;
    return the sweep's folder."""
    parsed = {r: Trace(t) for r, t in sorted(traces.items())}
    c10_names = _c10_dtype_names()
    key = next(iter(traces.values()))["key"]
    folder = os.path.join(root, re.sub(r"[^\w.\-\[\]]+", "_", key))
    os.makedirs(folder, exist_ok=True)
    # One name per group for every rank: in order of first appearance.
    names: dict[tuple[tuple[int, ...], int], str] = {}
    for t in parsed.values():
        for ranks, ordinal, _, _ in t.groups:
            names.setdefault((ranks, ordinal), str(len(names)))
    for rank, t in parsed.items():
        config = {}
        for ranks, ordinal, label, _ in t.groups:
            name = names[(ranks, ordinal)]
            config[name] = {"name": name, "desc": label or NO_DESC, "ranks": str(list(ranks))}
        entries: list[dict[str, Any]] = []
        collective_seq: dict[str, int] = {}
        p2p_seq: dict[str, int] = {}
        calls = t.calls
        for i, call in enumerate(calls):
            ranks, ordinal, label, _ = t.groups[call.group]
            name = names[(ranks, ordinal)]
            me = ranks.index(rank) if rank in ranks else -1
            is_p2p = call.op in POINT_TO_POINT
            # A batch (batch_isend_irecv) is one coalesced group, as NCCL's
            # recorder writes it: its calls share one p2p sequence number and
            # an "nccl:coalesced" entry closes it.
            batched = is_p2p and call.batch is not None
            opens = batched and (i == 0 or calls[i - 1].batch != call.batch)
            closes = batched and (i + 1 == len(calls) or calls[i + 1].batch != call.batch)
            if is_p2p:
                if not batched or opens:
                    p2p_seq[name] = max(p2p_seq.get(name, 0), collective_seq.get(name, 0)) + 1
                peer = ranks.index(call.peer) if call.peer in ranks else -1
                fr_name = f"send {me}->{peer}" if call.op == "send" else f"recv {me}<-{peer}"
            else:
                collective_seq[name] = max(p2p_seq.get(name, 0), collective_seq.get(name, 0)) + 1
                fr_name = FLIGHT_RECORDER_NAMES[call.op]
            inputs, outputs = _sizes(call, me, len(ranks))
            dtype = "Byte" if call.object_call else c10_names.get(call.dtype or "", call.dtype or "")
            entries.append(_entry(entries, call, (name, label or NO_DESC), collective_seq.get(name, 0),
                                  p2p_seq.get(name, 0), f"nccl:{fr_name}", (inputs, outputs, dtype), is_p2p))
            if closes:
                entries.append(_entry(entries, call, (name, label or NO_DESC), collective_seq.get(name, 0),
                                      p2p_seq[name], "nccl:coalesced", ([], [], dtype), True))
        dump = {"version": VERSION, "pg_config": config, "pg_status": {}, "entries": entries}
        with open(os.path.join(folder, f"rank_{rank}"), "wb") as fh:
            pickle.dump(dump, fh)
    return folder


def _entry(entries: list[dict[str, Any]], call: Call, group: tuple[str, str], collective_seq: int, p2p_seq: int,
           name: str, sizes: tuple[list[list[int]], list[list[int]], str], is_p2p: bool) -> dict[str, Any]:
    """One Flight Recorder entry, the next in ``entries``."""
    i = len(entries)
    inputs, outputs, dtype = sizes
    filename, _, line = (call.site or ":0").rpartition(":")
    return {
        "record_id": i,
        "pg_id": call.group,
        "process_group": group,
        "collective_seq_id": collective_seq,
        "p2p_seq_id": p2p_seq,
        "op_id": i + 1,
        "profiling_name": name,
        "time_created_ns": i + 1,
        "input_sizes": inputs,
        "input_dtypes": [dtype] * len(inputs),
        "output_sizes": outputs,
        "output_dtypes": [dtype] * len(outputs),
        "state": "completed",
        "time_discovered_started_ns": i + 1,
        "time_discovered_completed_ns": i + 1,
        "retired": True,
        "timeout_ms": 0,
        "duration_ms": 0.0,
        "is_p2p": is_p2p,
        "frames": [{"name": "", "filename": filename, "line": int(line or 0)}] if call.site else [],
        "thread_id": "0",
        "thread_name": "fake world",
    }
