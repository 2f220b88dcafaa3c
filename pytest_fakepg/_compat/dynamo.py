"""torch.compile: what dynamo compiled, and dropping it."""

from __future__ import annotations

import sys

from ._door import door

# -- torch.compile -------------------------------------------------------------------


def dynamo_frames() -> int:
    """NOTE [compat: compiled code] How many frames dynamo has compiled
    (``convert_frame.FRAME_COUNTER``, 2.11-2.15.0); 0 before dynamo is
    imported or where the counter is missing (then compiled code is never
    reset, and a function compiled against one world's group recompiles in
    the next until dynamo's recompile limit)."""
    convert_frame = sys.modules.get("torch._dynamo.convert_frame")
    return int(getattr(convert_frame, "FRAME_COUNTER", 0))


@door("drop torch.compile's code compiled in a world that is gone")
def reset_compiled_code() -> None:
    """``torch._dynamo.reset_code_caches()``: drop compiled code (its guards
    hold the process group of a world that is gone)."""
    import torch._dynamo

    torch._dynamo.reset_code_caches()

