"""pytest-fakepg: a fake distributed world for every test."""

from .records import CollectiveLog, CollectiveRecord
from .spec import WorldSpec
from .world import FakeWorld, FakeWorldFaultWarning, FakeWorldLeakWarning, FakeWorldWarning, Fault

__version__ = "0.1.0"

__all__ = [
    "CollectiveLog",
    "CollectiveRecord",
    "FakeWorld",
    "FakeWorldFaultWarning",
    "FakeWorldLeakWarning",
    "FakeWorldWarning",
    "Fault",
    "WorldSpec",
    "__version__",
]
