"""Hooks pytest-fakepg calls; implement them in a conftest.py or a plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ..spec import WorldSpec
    from ..world import FakeWorld


@pytest.hookspec
def pytest_fake_world_setup(world: FakeWorld, item: pytest.Item) -> None:
    """Called after ``item``'s fake world is up, before the test body runs.

    The world's process group, store and mesh exist; a hook may issue
    collectives, arm faults (``world.fail(...)``) or clear the log.
    """


@pytest.hookspec
def pytest_fake_world_teardown(world: FakeWorld, item: pytest.Item) -> None:
    """Called after ``item``'s test body, before its fake world goes down
    (also when the test failed). The log is still complete here."""


@pytest.hookspec(firstresult=True)
def pytest_fake_world_make_id(spec: WorldSpec, definition: pytest.Function) -> str | None:
    """Return the id of one generated case (the text between the brackets of
    ``test_x[...]``), or None to leave it to the next implementation.

    ``spec`` is the case's WorldSpec (``world_size``, ``rank``,
    ``mesh_shape``, ``mesh_dim_names``, ``mesh_id``, ``values``,
    ``tensors``...), ``definition`` the test function's definition. The
    default is made of the parts of ``spec`` that vary: ``w<size>``, the
    mesh (``dp2xtp4``) when there is one, and ``r<rank>``. A marker's
    ``id=`` (NOTE [Pinned case ids]) is used instead of this hook.
    """
