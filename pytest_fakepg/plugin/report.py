"""The collectives report (``--fake-world-report``, ``--fake-world-report-json``).

Each test's entry is made where its world goes down (``entry``), as plain
data: it rides to the controlling process on the test's report under
pytest-xdist, so the text and JSON reports are the same with and without
``-n``. ``render`` and ``write_json`` turn the entries into the report.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..records import ranks_text

if TYPE_CHECKING:
    import pytest

    from ..world import FakeWorld


def entry(world: FakeWorld) -> dict[str, Any] | None:
    """What ``world`` ran, by group and op (cleared records included), and
    its rank's memory peak where it was measured; None if it ran no
    collective and measured nothing."""
    ran = world.collectives.ran()
    memory = world.measured_memory()
    if not ran and memory is None:
        return None
    labels = world.group_labels()
    # Groups by what they are (label and global ranks), not by name: names
    # depend on what ran before in the process.
    groups: dict[str, dict[str, Any]] = {}
    ops: dict[str, dict[str, int]] = {}
    for name, ranks, op, calls, nbytes, failed in ran:
        label = labels.get(name, "")
        group = groups.setdefault(
            f"{label} {ranks}",
            {"label": label, "ranks": ranks_text(ranks), "size": len(ranks), "ops": {},
             "total": {"count": 0, "bytes": 0, "failed": 0}},
        )
        # In an exact world each rank has its own copy of every group.
        for row in (group["ops"].setdefault(op, {"count": 0, "bytes": 0, "failed": 0}), group["total"],
                    ops.setdefault(op, {"count": 0, "bytes": 0, "failed": 0})):
            row["count"] += calls
            row["bytes"] += nbytes
            row["failed"] += failed
    return {
        "world_size": world.world_size,
        "rank": None if world.exact else world.rank,
        "mesh": world.spec.mesh_id,
        "tensors": world.tensors,
        "assumptions": world.assumptions,
        "memory": None if memory is None else {"peak": memory.peak, "at_peak": memory.at_peak},
        **_running_ranks(world),
        "groups": list(groups.values()),
        "collectives": ops,
        "total": {
            "count": sum(o["count"] for o in ops.values()),
            "bytes": sum(o["bytes"] for o in ops.values()),
            "failed": sum(o["failed"] for o in ops.values()),
        },
    }


def _running_ranks(world: FakeWorld) -> dict[str, Any]:
    """In a hybrid world or an exact world on fake tensors: which ranks ran
    (``running``, None for every rank) and, per running rank, its memory
    peak and the bytes it sent per group label (``ranks``)."""
    spec = world.spec
    if not world.exact or (spec.running is None and spec.tensors != "fake"):
        return {}
    memories = world.rank_memory()  # type: ignore[attr-defined]
    labels = world.group_labels()
    sent: dict[int, dict[str, int]] = {}
    for record in world.collectives:
        by_label = sent.setdefault(record.rank, {})
        label = labels.get(record.group_name) or record.group_name
        by_label[label] = by_label.get(label, 0) + record.bytes
    ranks = {}
    for rank in world.running:  # type: ignore[attr-defined]
        memory = memories.get(rank)
        ranks[str(rank)] = {
            "memory": None if memory is None else {"peak": memory.peak, "at_peak": memory.at_peak},
            "sent": sent.get(rank, {}),
        }
    return {"running": None if spec.running is None else list(spec.running), "exact_dims": spec.exact_dims,
            "ranks": ranks}


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _calls(stats: dict[str, int]) -> str:
    text = _plural(stats["count"], "call")
    return f"{text} ({stats['failed']} failed)" if stats.get("failed") else text


def _line(indent: int, name: str, stats: dict[str, int]) -> str:
    return f"{' ' * indent}{name:<{40 - indent}}{_calls(stats):>22} {_human(stats['bytes']):>11}"


def _run_totals(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for e in entries.values():
        for op, stats in e["collectives"].items():
            row = totals.setdefault(op, {"count": 0, "bytes": 0, "failed": 0})
            for key in row:
                row[key] += stats.get(key, 0)
    return totals


def _label_totals(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Every test's traffic by group label (a mesh dimension's name, or the
    group's description), for the whole run."""
    totals: dict[str, dict[str, int]] = {}
    for e in entries.values():
        for group in e["groups"]:
            row = totals.setdefault(group["label"] or "(unlabelled groups)", {"count": 0, "bytes": 0, "failed": 0})
            for key in row:
                row[key] += group["total"].get(key, 0)
    return totals


def render(tr: pytest.TerminalReporter, entries: dict[str, dict[str, Any]], totals_only: bool = False) -> None:
    """The report: each test's collectives by group and op, then the run's
    totals; with ``totals_only``, the run's totals by op and by group label."""
    tr.write_sep("=", "fake world collectives")
    for nodeid, e in sorted(entries.items()) if not totals_only else ():
        who = 'every rank, exact' if e['rank'] is None else f"rank {e['rank']}"
        if e.get("running"):
            who = f"ranks {ranks_text(e['running'])}, exact along {', '.join(e['exact_dims'])}"
        fake = ", fake tensors" if e.get("tensors") == "fake" else ""
        tr.write_line(f"{nodeid} (world {e['world_size']}, {who}{fake})")
        for rank, per in (e.get("ranks") or {}).items():
            parts = [f"memory peak {_human(per['memory']['peak'])}"] if per["memory"] else []
            parts += [f"{label} {_human(nbytes)}" for label, nbytes in per["sent"].items()]
            tr.write_line(f"    rank {rank}: " + ", ".join(parts))
        for assumption in e.get("assumptions") or ():
            tr.write_line(f"    assumed: {assumption}")
        if e.get("memory"):
            parts = ", ".join(f"{k} {_human(v)}" for k, v in e["memory"]["at_peak"].items() if v)
            tr.write_line(f"    memory peak {_human(e['memory']['peak'])}" + (f" ({parts})" if parts else ""))
        for group in e["groups"]:
            label = f"{group['label']} " if group["label"] else ""
            tr.write_line(_line(4, f"group {label}(ranks {group['ranks']})", group["total"]))
            for op, stats in group["ops"].items():
                tr.write_line(_line(8, op, stats))
        tr.write_line(_line(4, "total", e["total"]))
    totals = _run_totals(entries)
    if totals:
        tr.write_line("all tests")
        for op, stats in sorted(totals.items()):
            tr.write_line(_line(4, op, stats))
        if totals_only:
            tr.write_line("all tests, by group")
            for label, stats in sorted(_label_totals(entries).items()):
                tr.write_line(_line(4, label, stats))
    count = sum(s["count"] for s in totals.values())
    nbytes = sum(s["bytes"] for s in totals.values())
    failed = sum(s["failed"] for s in totals.values())
    failures = f", {failed} failed by injected faults" if failed else ""
    tr.write_line(
        f"{_plural(len(entries), 'test')} ran {_plural(count, 'collective')}{failures}, "
        f"{_human(nbytes)} in all"
    )


def render_real(tr: pytest.TerminalReporter, entries: dict[str, dict[str, Any]], backend: str) -> None:
    """What each fake-world test did on real ranks (--fake-world-real)."""
    tr.write_sep("=", f"fake world tests on real {backend} ranks")
    counts: dict[str, int] = {}
    for nodeid, e in sorted(entries.items()):
        counts[e["real"]] = counts.get(e["real"], 0) + 1
        if e["real"] == "skipped":
            tr.write_line(f"{nodeid}: fake {e['fake']}, real skipped ({e.get('reason')})")
            continue
        tr.write_line(f"{nodeid}: fake {e['fake']}, real {e['real']} on {e['ranks']} ranks in {e['seconds']:g} s, "
                      f"ledgers {'agree' if e['ledgers'] == 'agree' else e['ledgers']}")
    tr.write_line(", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) + " on real ranks"
                  if counts else "no fake-world test ran")


def write_json(path: str, entries: dict[str, dict[str, Any]], real: dict[str, dict[str, Any]] | None = None) -> None:
    totals = _run_totals(entries)
    document = {
        "tests": dict(sorted(entries.items())),
        "collectives": dict(sorted(totals.items())),
        "total": {
            "tests": len(entries),
            "count": sum(s["count"] for s in totals.values()),
            "bytes": sum(s["bytes"] for s in totals.values()),
            "failed": sum(s["failed"] for s in totals.values()),
        },
    }
    if real:
        document["real"] = dict(sorted(real.items()))
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(document, fh, indent=2)
        fh.write("\n")
