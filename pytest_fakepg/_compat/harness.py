"""torch's distributed test harness (``torch.testing._internal``), as far as
running its test classes in exact worlds needs it."""

from __future__ import annotations

import sys


def test_skips() -> dict[int, str]:
    """The exit codes by which torch's harness skips a rank's test, and their
    messages: ``common_distributed.TEST_SKIPS`` (a dict of ``TestSkip(exit_code,
    message)``, 2.11-2.15.0). Empty when that module is not loaded (no torch
    harness class is in use) or lacks the name."""
    module = sys.modules.get("torch.testing._internal.common_distributed")
    skips = getattr(module, "TEST_SKIPS", None)
    if not isinstance(skips, dict):
        return {}
    found = {}
    for skip in skips.values():
        code, message = getattr(skip, "exit_code", None), getattr(skip, "message", None)
        if isinstance(code, int) and isinstance(message, str):
            found.setdefault(code, message)
    return found
