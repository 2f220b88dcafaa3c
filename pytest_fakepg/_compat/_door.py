"""What the shims share: the torch versions they were checked on, and the
error a shim raises where a newer torch has moved what it needs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ..errors import UnsupportedTorchError

# The torch releases every note below was checked on.
TESTED_TORCH = ("2.11", "2.13.0", "2.14.1", "2.15.0")


def tested_text() -> str:
    return f"pytest-fakepg was tested with torch {', '.join(TESTED_TORCH[:-1])} and {TESTED_TORCH[-1]}"


def door(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn a missing or changed torch name met by the shim into an
    UnsupportedTorchError saying what could not be done, instead of an
    AttributeError or TypeError from somewhere inside torch."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (AttributeError, ImportError, TypeError) as exc:
                import torch

                raise UnsupportedTorchError(
                    f"pytest-fakepg cannot {what} on torch {torch.__version__} "
                    f"({type(exc).__name__}: {exc}); {tested_text()}. A newer torch may have "
                    "moved this internal: please report it with your torch version."
                ) from exc

        return checked

    return wrap


