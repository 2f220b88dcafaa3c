"""What torchtitan's examples need to import it on a CPU-only machine: a
stand-in for the expert-parallel kernels module, which imports triton (a
CPU torch has none; the examples never call its kernels), and a skip, saying
so, where torchtitan is not installed (``pip install --no-deps -r
.ci/clients.txt``). Import it before torchtitan."""

import sys
import types
import warnings

import pytest

_KERNELS = "torchtitan.distributed.minimal_async_ep.kernels"
if _KERNELS not in sys.modules:
    stub = types.ModuleType(_KERNELS)
    stub.__getattr__ = lambda name: None
    sys.modules[_KERNELS] = stub

with warnings.catch_warnings():  # torch.jit's deprecation, met on torchtitan's imports
    warnings.simplefilter("ignore", DeprecationWarning)
    pytest.importorskip("torchtitan", reason="torchtitan is not installed (pip install --no-deps -r .ci/clients.txt)")
