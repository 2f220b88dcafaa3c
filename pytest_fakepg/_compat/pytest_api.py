"""What the plugin uses of pytest beyond its public API, in one place:
running an item's protocol without logging it (``_pytest.runner``), an
item's fixture closure (``Item._fixtureinfo``), and the cache plugin's
record of failures. Checked on pytest 8.x and 9.x."""

from __future__ import annotations

from typing import Any

import pytest


def run_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> list[pytest.TestReport]:
    """The reports of running ``item``'s setup, call and teardown, not yet
    logged (``_pytest.runner.runtestprotocol(..., log=False)``)."""
    from _pytest.runner import runtestprotocol

    return runtestprotocol(item, nextitem=nextitem, log=False)


def argnames(item: pytest.Item) -> tuple[str, ...]:
    """The names a test function takes (``item._fixtureinfo.argnames``)."""
    return tuple(item._fixtureinfo.argnames)  # type: ignore[attr-defined]


def fixture_definitions(item: pytest.Item) -> dict[str, Any]:
    """Each fixture of the item's closure -> its definitions, the one in
    use last (``item._fixtureinfo.name2fixturedefs``)."""
    return dict(item._fixtureinfo.name2fixturedefs)  # type: ignore[attr-defined]


def mark_failed(config: pytest.Config, nodeids: list[str]) -> None:
    """Put ``nodeids`` into the cache plugin's record of failures, which it
    writes at the end of the session (``lfplugin.lastfailed``): ``--lf``
    and ``--ff`` rerun them. Nothing where the cache plugin is off."""
    lastfailed = getattr(config.pluginmanager.get_plugin("lfplugin"), "lastfailed", None)
    if isinstance(lastfailed, dict):
        for nodeid in nodeids:
            lastfailed[nodeid] = True
