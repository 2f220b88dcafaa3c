"""Which frames are the user's: those outside torch and this package. Call
sites in records and messages, and the lines warnings point at, are the
first frame that is."""

from __future__ import annotations

import functools
import os


@functools.cache
def not_user_code() -> tuple[str, ...]:
    """Where torch's and this package's frames come from (path prefixes)."""
    import torch

    return (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(__file__) + os.sep)
