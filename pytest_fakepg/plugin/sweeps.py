"""Rank sweeps across processes: each swept case's trace rides on its call
report (pytest-xdist carries report attributes to its controller, as it
does the collectives report's entries), and where reports meet the sweep is
checked once its last case is in; a divergence fails a case. The check
itself is checks/consistency.py's."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from .. import _compat, records
from .state import REAL_REPORT, REPORT, REPORT_ENTRY, SETTINGS, SWEEP, WORLD

if TYPE_CHECKING:
    from ..world import FakeWorld


def trace(world: FakeWorld, key: str, cases: int, check: bool, nodeid: str) -> dict[str, Any]:
    """``world``'s collectives so far, as plain data (NOTE [Traces and the
    check], checks/consistency.py), with the sweep it belongs to."""
    data = records.trace(world.collectives, -1, world.world_size, world.group_labels(), world.call_sites(),
                         0, world.batches)
    return {**data, "key": key, "cases": cases, "check": check, "nodeid": nodeid, "rank": world.rank}


class SweepChecker:
    """Collects the traces of swept cases as their reports come in; when a
    sweep is complete, checks it and fails the case that completed it."""

    def __init__(self, trace_dir: str | None, on_divergence: Any = None, one_line: bool = False) -> None:
        self.trace_dir = trace_dir
        self.one_line = one_line  # --tb=line
        self.pending: dict[str, dict[int, dict[str, Any]]] = {}
        # Told every case of a sweep that diverges (each took part).
        self.on_divergence = on_divergence

    def add(self, report: pytest.TestReport, data: dict[str, Any]) -> None:
        traces = self.pending.setdefault(data["key"], {})
        traces[data["rank"]] = data
        if len(traces) < data["cases"]:
            return
        del self.pending[data["key"]]
        if self.trace_dir is not None:
            from ..checks import flight_recorder

            flight_recorder.write(self.trace_dir, traces)
        if not data["check"]:
            return
        from ..checks import consistency

        message = consistency.check(traces)
        if message is None:
            return
        if self.on_divergence is not None:
            self.on_divergence([t["nodeid"] for t in traces.values()])
        message += _where(consistency.deviant(traces), data["rank"], traces)
        if report.passed:
            report.outcome = "failed"
            path, line, _ = report.location
            report.longrepr = Divergence(message, f"{path}:{line + 1}", self.one_line)
        else:
            report.sections.append(("fake world ranks diverge", message))


def _where(deviant: int | None, here: int, traces: dict[int, dict[str, Any]]) -> str:
    """Which case carries a divergence, and why (#23: the same case in every order)."""
    if deviant is None:
        return " [reported on the case that completed the sweep: no one rank differs from all the others]"
    if deviant == here:
        return f" [reported on rank {deviant}'s case: its collectives differ from every other rank's]"
    return (f" [rank {deviant}'s case ({traces[deviant]['nodeid']}) differs from every other rank's; reported "
            "here, on the case that completed the sweep, as under pytest-xdist]")


class Holder:
    """Without pytest-xdist, a checked sweep's cases are run as usual but
    their reports held back until the sweep is complete, then reported with
    the case of the deviating rank (``consistency.deviant``) last: the check,
    which fails the case that completes a sweep, fails that case in every
    order. Under pytest-xdist a sweep's cases run in several processes and the
    reports cannot wait: the failure stays on the completing case, whose
    message names the deviating one."""

    def __init__(self) -> None:
        self.held: dict[str, list[tuple[pytest.Item, list[pytest.TestReport]]]] = {}

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        sweep = item.stash.get(SWEEP, None)
        if sweep is None or not sweep[2]:
            return None
        key, cases, _ = sweep
        held = self.held.setdefault(key, [])
        held.append((item, _compat.pytest_api.run_protocol(item, nextitem)))
        if len(held) == cases:
            del self.held[key]
            self._report(held, reorder=True)
        return True

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        """A run stopped early (-x, a failure limit): what is held is reported as it ran."""
        for held in self.held.values():
            self._report(held, reorder=False)
        self.held.clear()

    @staticmethod
    def _report(held: list[tuple[pytest.Item, list[pytest.TestReport]]], reorder: bool) -> None:
        if reorder:
            from ..checks import consistency

            traces = {}
            for _, reports in held:
                for rep in reports:
                    trace = getattr(rep, "fake_world_trace", None)
                    if trace is not None:
                        traces[trace["rank"]] = trace
            odd = consistency.deviant(traces) if len(traces) == len(held) else None
            if odd is not None:  # its case last: the one the check fails
                nodeid = traces[odd]["nodeid"]
                held = sorted(held, key=lambda h: h[0].nodeid == nodeid)
        for item, reports in held:
            item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
            for rep in reports:
                item.ihook.pytest_runtest_logreport(report=rep)
            item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)


class Divergence:
    """A sweep's failure, as pytest shows a failure: the message, and with
    ``--tb=line`` one line at the test's location (pytest prints a plain
    string's first 50 characters after it, a second, cut copy)."""

    def __init__(self, cause: str, location: str, one_line: bool) -> None:
        self.message = f"fake world ranks diverge: {cause}"
        self.reprcrash = _CrashLine(f"{location}: {cause}")  # the cause first, in the summary too
        self.one_line = one_line

    def toterminal(self, tw: Any) -> None:
        if not self.one_line:  # with --tb=line the crash line says it all
            tw.line(self.message)

    def __str__(self) -> str:
        return self.message


class _CrashLine(str):
    """``reprcrash``: what ``--tb=line`` and the short summary show."""

    @property
    def message(self) -> str:
        return str(self).split(": ", 1)[-1]


class Carrier:
    """Puts data for the process that reports on the test reports, where
    pytest-xdist carries their attributes: the trace of a swept case on its
    call report, the collectives report's entry on the teardown report.
    Registered only in runs that need it, so other runs pay nothing per test."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any, Any]:
        report = yield
        if call.when == "call" and SWEEP in item.stash:
            world = item.stash.get(WORLD, None)
            if world is not None:
                report.fake_world_trace = trace(world, *item.stash[SWEEP], item.nodeid)
        elif call.when == "teardown":
            entry = item.stash.get(REPORT_ENTRY, None)
            if entry is not None:
                report.fake_world_report = entry
        return report


class Gatherer:
    """In the process that reports (the only one, or pytest-xdist's
    controller, never a worker): collects report entries, and compares a
    sweep's ranks once its last case is in. Registered per config, so its
    hooks know their config."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.checker: Any = None

    @pytest.hookimpl(tryfirst=True)  # before the terminal reporter and the failure count
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        trace = getattr(report, "fake_world_trace", None)
        if trace is not None:
            if self.checker is None:
                self.checker = SweepChecker(self.config.stash[SETTINGS].trace_dir, self._rerun_whole_sweep,
                                            self.config.getoption("tbstyle", "auto") == "line")
            self.checker.add(report, trace)
        entry = getattr(report, "fake_world_report", None)
        if entry is not None:
            self.config.stash[REPORT][report.nodeid] = entry
        real = getattr(report, "fake_world_real", None)
        if real is not None:
            self.config.stash[REAL_REPORT][report.nodeid] = real

    def _rerun_whole_sweep(self, nodeids: list[str]) -> None:
        """A divergence is the sweep's, not the one case it fails: every case
        goes into pytest's record of failures, so that ``--lf`` (and ``--ff``)
        rerun the whole sweep the check needs rather than one case, which
        alone would pass. pytest's cache plugin keeps that record as a dict
        it writes at the end of the session."""
        _compat.pytest_api.mark_failed(self.config, nodeids)
