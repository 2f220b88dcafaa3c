"""The one place a world's kind is chosen from its spec: one rank
(``FakeWorld``, values "uniform" or "copy") or every rank (``ExactWorld``)."""

from __future__ import annotations

from .exact.world import ExactWorld
from .spec import WorldSpec
from .world import FakeWorld


def world_for(spec: WorldSpec) -> FakeWorld:
    """A world (not yet up) of the kind ``spec.values`` asks for."""
    return ExactWorld(spec) if spec.values == "exact" else FakeWorld(spec)
