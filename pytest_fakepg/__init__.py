"""pytest-fakepg: a fake distributed world for every test."""

from .errors import (
    FakeWorldDeadlock,
    FakeWorldFaultWarning,
    FakeWorldLeakWarning,
    FakeWorldWarning,
    RankStopped,
    UnsupportedTorchError,
)
from .records import CollectiveLog, CollectiveRecord
from .spec import WorldSpec
from .faults import Fault
from .world import FakeWorld
from .exact.world import ExactWorld
from .exact.testcase import ExactTestCase, create_exact_test_class

__version__ = "0.1.0"

__all__ = [
    "CollectiveLog",
    "CollectiveRecord",
    "ExactTestCase",
    "ExactWorld",
    "FakeWorld",
    "FakeWorldDeadlock",
    "FakeWorldFaultWarning",
    "FakeWorldLeakWarning",
    "FakeWorldWarning",
    "Fault",
    "RankStopped",
    "UnsupportedTorchError",
    "WorldSpec",
    "__version__",
    "create_exact_test_class",
]
