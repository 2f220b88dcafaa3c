"""``--fake-world-real``: the same fake-world tests on real ranks (NOTE [Real
ranks], real/world.py).

- ``gloo`` or ``nccl`` (the launcher): once a fake-world test has passed,
  torchrun (``torch.distributed.run``, torch's own launcher) starts one
  process per rank on this machine, each running this one test with
  ``--fake-world-real=env`` (real/launch.py). The test fails if any rank
  fails, hangs past the timeout, or records a ledger that differs from the
  fake world's.
- ``env`` (a rank): under torchrun, each process is the rank torchrun's
  environment names. A test whose world has ``WORLD_SIZE`` ranks runs twice
  here: in the fake world at this rank (every rank, in an exact world),
  keeping this rank's ledger, then on the real world, which must pass and
  record the same ledger. Other tests are skipped with the reason.

One real run serves every case of a test that differs only in its rank (a
sweep's cases): the first case runs it, the others say so.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from .. import _compat
from ..real import OUT_ENV
from .state import CASE, SETTINGS, Case

if TYPE_CHECKING:
    from .. import spec as _spec
    from ..world import FakeWorld

MODES = ("gloo", "nccl", "env")
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_DEVICE_OF = {"gloo": "cpu", "nccl": "cuda"}


class Plan(NamedTuple):
    """An item's part in the real run: it runs the world real (``runs``),
    or why not (``reason``)."""

    runs: bool
    reason: str | None = None


PLAN = pytest.StashKey[Plan]()
PHASE = pytest.StashKey[str]()  # env mode: "fake" or "real", while an item runs twice
LEDGER = pytest.StashKey[dict[str, Any]]()  # env mode: the phase's ledger, taken as its world went down
RESULT = pytest.StashKey[dict[str, Any]]()  # launcher: the real run's outcome, for the report
STORE = pytest.StashKey[list[Any]]()  # env mode: [the rendezvous store, worlds made so far]


def check_mode(mode: str | None) -> None:
    """Refuse a bad ``--fake-world-real`` at configure, naming what is allowed."""
    if mode is None:
        return
    if mode not in MODES:
        raise pytest.UsageError(f"--fake-world-real must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "env":
        missing = [name for name in TORCHRUN_ENV if name not in os.environ]
        if missing:
            raise pytest.UsageError(
                f"--fake-world-real=env runs as one rank of a torchrun world, and {', '.join(missing)} "
                "is not set: run pytest under torchrun (torchrun --nproc-per-node 2 -m pytest "
                "--fake-world-real=env ...), or use --fake-world-real=gloo to start real ranks on this machine"
            )


def launched() -> bool:
    """Whether this process is a rank the launcher started (it reads the result)."""
    return OUT_ENV in os.environ


def this_rank() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) from torchrun's environment."""
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def why_not(spec: _spec.WorldSpec, mode: str) -> str | None:
    """Why a world cannot run on real ranks in ``mode``, or None."""
    if spec.tensors == "fake":
        return "a tensors='fake' world plans on tensors that hold no data: nothing to check on real ranks"
    if spec.backend != "fakepg":
        return "a backend='fake' world runs on torch's stock fake backend, which records nothing to compare"
    if spec.exact_dims is not None:
        return f"a hybrid world (exact_dims={list(spec.exact_dims)}) runs only some ranks' programs"
    device = spec.device
    if mode == "env":
        _, size = this_rank()
        if spec.world_size != size:
            return f"its world has {spec.world_size} ranks and this torchrun world WORLD_SIZE={size}"
        return _devices_missing(device, int(os.environ.get("LOCAL_WORLD_SIZE", size)))
    if device != _DEVICE_OF[mode]:
        other = "gloo" if device == "cpu" else "nccl"
        return f"a device={device!r} world runs real on {other} (--fake-world-real={other}), not {mode}"
    return _devices_missing(device, spec.world_size)


def _devices_missing(device: str, ranks_here: int) -> str | None:
    if device != "cuda":
        return None
    import torch

    have = torch.cuda.device_count()
    if have < ranks_here:
        return f"NCCL takes one GPU a rank: {ranks_here} ranks on this machine, and it has {have} GPU(s)"
    return None


def note(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each fake-world item's plan; in env mode, those that do not run real
    are skipped with the reason."""
    mode = config.stash[SETTINGS].real
    first: dict[str, str] = {}  # the test and its world but for the rank -> the case that runs it real
    for item in items:
        case: Case | None = item.stash.get(CASE, None)
        if case is None or case.spec is None:
            continue
        spec = case.spec
        reason = why_not(spec, mode)
        if reason is None:
            world = dataclasses.replace(spec, rank=0)
            key = f"{item.nodeid.replace(case.id, '', 1) if case.id else item.nodeid} {world}"
            if key in first:
                reason = f"its real run is the one of {first[key]}, which covers every rank"
            else:
                first[key] = item.nodeid
        item.stash[PLAN] = Plan(reason is None, reason)
        if reason is not None and mode == "env":
            item.add_marker(pytest.mark.skip(reason=f"not run on real ranks: {reason}"))


def world_for(item: pytest.Item, spec: _spec.WorldSpec) -> FakeWorld | None:
    """The world of an item that runs twice in env mode, for its phase: the
    fake world at this rank, or the real world. None outside env mode."""
    phase = item.stash.get(PHASE, None)
    if phase is None:
        return None
    rank, _ = this_rank()
    if spec.values != "exact":
        spec = dataclasses.replace(spec, rank=rank)
    if phase == "fake":
        from ..factory import world_for

        return world_for(spec)
    from ..real.world import RealWorld

    held = item.config.stash.setdefault(STORE, [])
    if not held:
        from torch.distributed.rendezvous import rendezvous

        held += [next(rendezvous("env://"))[0], 0]
    import torch.distributed as dist

    held[1] += 1
    store = dist.PrefixStore(f"pytest-fakepg/world-{held[1]}/", held[0])
    return RealWorld(dataclasses.replace(spec, rank=rank), store, item.config.stash[SETTINGS].real_timeout)


def keep_ledger(item: pytest.Item, world: FakeWorld) -> None:
    """Before an env-mode phase's world goes down: this rank's ledger."""
    if PHASE not in item.stash:
        return
    from .. import records

    rank = this_rank()[0] if world.exact else -1
    item.stash[LEDGER] = records.trace(world.collectives, rank, world.world_size, world.group_labels(), [])


def _take(stash: pytest.Stash, key: pytest.StashKey[Any]) -> Any:
    value = stash.get(key, None)
    if key in stash:
        del stash[key]
    return value


class Rank:
    """env mode: each planned item runs in the fake world at this rank, then
    on the real world; the real run's reports are the item's, failed where
    the ledgers differ."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.rank = this_rank()[0]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        plan = item.stash.get(PLAN, None)
        if plan is None or not plan.runs:
            return None
        from ..real import launch

        item.stash[PHASE] = "fake"
        fake = _compat.pytest_api.run_protocol(item, nextitem)  # as pytest-rerunfailures runs an item again
        fake_ledger = _take(item.stash, LEDGER)
        item.stash[PHASE] = "real"
        real = _compat.pytest_api.run_protocol(item, nextitem)
        real_ledger = _take(item.stash, LEDGER)
        del item.stash[PHASE]
        result = launch.rank_result(self.rank, fake, real, fake_ledger, real_ledger)
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for report in real:
            item.ihook.pytest_runtest_logreport(report=report)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        out = os.environ.get(OUT_ENV)
        if out:
            launch.write_result(out, self.rank, result)
        return True


class Launcher:
    """gloo/nccl: a planned test that passed in its fake world runs on real
    ranks (real/launch.py) before its call phase ends; every fake-world
    test's report carries what happened on real ranks."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(wrapper=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> Generator[None, Any, Any]:
        result = yield
        plan = pyfuncitem.stash.get(PLAN, None)
        if plan is not None and plan.runs:
            from ..real import launch

            settings = self.config.stash[SETTINGS]
            outcome = launch.run(pyfuncitem, pyfuncitem.stash[CASE].spec, settings.real, settings.real_timeout)
            pyfuncitem.stash[RESULT] = outcome.summary
            if outcome.failure is not None:
                pytest.fail(outcome.failure, pytrace=False)
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
        report = yield
        plan = item.stash.get(PLAN, None)
        if plan is not None and call.when == "call":
            summary = item.stash.get(RESULT, None)
            if summary is None:
                summary = {"fake": report.outcome, "real": "skipped",
                           "reason": plan.reason or f"the fake run {report.outcome}"}
            report.fake_world_real = {"backend": self.config.stash[SETTINGS].real, **summary}
        return report
