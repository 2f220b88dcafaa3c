"""The exceptions and warnings pytest-fakepg raises, importable from
``pytest_fakepg`` (a leaf module: no torch, nothing else of the package)."""

from __future__ import annotations


class FakeWorldWarning(UserWarning):
    """Base class of pytest-fakepg's warnings."""


class FakeWorldLeakWarning(FakeWorldWarning):
    """A test left a process group of its own behind; the plugin destroyed it."""


class FakeWorldFaultWarning(FakeWorldWarning):
    """An armed fault never fired: the test did not test what it meant to."""


class FakeWorldDeadlock(RuntimeError):
    """The ranks of an exact world can make no progress: on a cluster, a hang."""


class RankStopped(BaseException):
    """Raised into the thread of an exact world's rank that runs Python while
    its run was stopped from outside it (a timeout, Ctrl-C): NOTE [Signals in
    exact worlds]. A BaseException, so that ``except Exception`` lets it through."""


class UnsupportedTorchError(RuntimeError):
    """A torch internal pytest-fakepg relies on is not where it expects it:
    names the torch version and the versions the plugin was tested with."""


__all__ = [
    "FakeWorldDeadlock", "FakeWorldFaultWarning", "FakeWorldLeakWarning", "FakeWorldWarning", "RankStopped",
    "UnsupportedTorchError",
]
