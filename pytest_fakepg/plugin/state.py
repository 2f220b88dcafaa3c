"""What the plugin's modules share: the run's settings, a case's world, and
the stash keys that carry them between hooks (never attributes of pytest's
own objects). No torch, no pytest hooks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from .. import spec as _spec

if TYPE_CHECKING:
    from ..world import FakeWorld  # noqa: F401 - named in WORLD's type

MARKER = "fake_world"


class Settings(NamedTuple):
    """The run's options and ini values, checked once at configure."""

    backend: str
    all_ranks: bool
    world_size: int
    report: bool
    report_json: str | None
    strict: bool
    check_ranks: bool
    trace_dir: str | None
    env: bool = True
    report_totals: bool = False  # the report without its per-test part
    real: str | None = None  # --fake-world-real: gloo, nccl or env (plugin/real.py)
    real_timeout: float = 300.0


class Case(NamedTuple):
    """One generated test case: the world it gets, or why it cannot have one."""

    spec: _spec.WorldSpec | None
    error: str | None = None
    check_ranks: bool | None = None  # the marker's, None for the ini default
    id: str = ""


SETTINGS = pytest.StashKey[Settings]()
REPORT = pytest.StashKey[dict[str, dict[str, Any]]]()  # nodeid -> collectives report entry
REAL_REPORT = pytest.StashKey[dict[str, dict[str, Any]]]()  # nodeid -> what ran on real ranks (plugin/real.py)
WORLD = pytest.StashKey["FakeWorld"]()  # an item's world while it is up
CASE = pytest.StashKey[Case]()  # an item's case, from collection
# An item's place in a sweep whose traces are gathered: (key, cases, check).
SWEEP = pytest.StashKey[tuple[str, int, bool]]()
REPORT_ENTRY = pytest.StashKey[dict[str, Any]]()  # an item's report entry, until its teardown report
RUNTEST = pytest.StashKey[list[Any]]()  # an exact unittest item's runtest, patched while its world is up
# The parameter a marker's cases ride on (collection.py).
CASE_PARAM = "_fake_world_case"
