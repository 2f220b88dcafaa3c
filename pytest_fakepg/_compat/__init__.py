"""Every private torch name pytest-fakepg relies on, behind one door: a
module per torch area (c10d, context_parallel, device_mesh, dtensor, dynamo, harness,
pipelining, runtime, state), pytest's and Python's private parts (pytest_api,
stdlib), and the one way to patch (patching).

Each function says what it is for, the torch versions it was checked
against (2.11 on the GPU machine, 2.13.0, 2.14.1 and 2.15.0 here) and what
happens when the name is missing. Nothing else in the package reaches into
torch's private API (tests/test_private_api.py checks), and nothing here
imports torch before a world starts.
"""

from __future__ import annotations

from . import c10d, context_parallel, device_mesh, dtensor, dynamo, harness, patching, pipelining, pytest_api, runtime, state, stdlib
from ._door import TESTED_TORCH, UnsupportedTorchError, tested_text

__all__ = [
    "TESTED_TORCH", "UnsupportedTorchError", "c10d", "context_parallel", "device_mesh", "dtensor", "dynamo", "harness", "patching", "pipelining",
    "pytest_api", "runtime", "state", "stdlib",
    "tested_text",
]
