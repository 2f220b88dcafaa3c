"""Exact values: every rank of the world runs, each on its own thread of
this process, and collectives compute from every rank's inputs.

A layer over the one-rank world: ``ExactWorld`` (world.py here) is the
FakeWorld of values="exact" (``factory.world_for`` picks it for a marker's
world), and owns what only exact worlds have (rank threads, per-rank state, ``run()``); ``runner.py``
runs the ranks. NOTE [Exact worlds] (csrc/exact.cpp) says how collectives
meet, NOTE [The baton] (csrc/exact.hpp) how ranks take turns.
"""

from __future__ import annotations

from .world import ExactWorld

__all__ = ["ExactWorld"]
