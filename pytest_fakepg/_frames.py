"""Which frames are the user's: those outside torch and this package. Call
sites in records and messages, and the lines warnings point at, are the
first frame that is."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from types import FrameType

from ._compat import stdlib


@functools.cache
def not_user_code() -> tuple[str, ...]:
    """Where torch's and this package's frames come from (path prefixes)."""
    import torch

    return (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(__file__) + os.sep)


def user_frame(depth: int = 1) -> FrameType | None:
    """The innermost frame of the user's code calling into torch or this
    package now, looking from the caller of the function that asks
    (``depth`` frames above it), or None."""
    skip = not_user_code()
    frame: FrameType | None = stdlib.getframe(depth + 1)
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame = frame.f_back
    return frame


def user_line() -> str | None:
    """The user's line calling into torch or this package now
    (``file.py:LINE``), or None."""
    frame = user_frame()
    return None if frame is None else f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


def site_source(sites: list[str]) -> Callable[[], int]:
    """The callable the backend calls per collective while call sites are
    recorded: the first frame outside torch and this package, as an index
    into ``sites`` ("file.py:LINE")."""
    index: dict[tuple[str, int], int] = {}

    def site() -> int:
        frame = user_frame()
        if frame is None:
            return -1
        key = (frame.f_code.co_filename, frame.f_lineno)
        found = index.get(key)
        if found is None:
            found = index[key] = len(sites)
            sites.append(f"{os.path.basename(key[0])}:{key[1]}")
        return found

    return site
