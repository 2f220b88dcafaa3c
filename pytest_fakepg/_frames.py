"""Which frames are the user's: those outside torch and this package. Call
sites in records and messages, and the lines warnings point at, are the
first frame that is."""

from __future__ import annotations

import functools
import os
import sys


@functools.cache
def not_user_code() -> tuple[str, ...]:
    """Where torch's and this package's frames come from (path prefixes)."""
    import torch

    return (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(__file__) + os.sep)


def user_line() -> str | None:
    """The user's line that called into torch or this package now
    (``file.py:LINE``), or None."""
    skip = not_user_code()
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame = frame.f_back
    return None if frame is None else f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
