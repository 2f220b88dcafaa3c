"""torch.compile: what dynamo compiled, and dropping it."""

from __future__ import annotations

import sys
from typing import Any

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



# -- torch.compile on fake tensors --------------------------------------------------------
# NOTE [compat: torch.compile on fake tensors]
# torch.compile(backend="inductor"), the default, calls an instance of
# ``torch._TorchCompileInductorWrapper`` (2.11-2.15.0) with each graph dynamo
# captured. Inductor's kernels read and write memory, which a fake tensor has
# not (on CPU they stop at "found at least two devices, cpu and meta"), so in
# a world with tensors="fake" the wrapper's ``__call__`` compiles with
# dynamo's ``aot_eager_decomp_partition`` backend instead: inductor's
# decompositions and its activation partitioner (what a compiled step saves
# for backward), its kernels replaced by the ATen ops they fuse. Graph
# breaks and fullgraph errors are dynamo's, as with inductor. A backend
# named otherwise ("eager", "aot_eager", a callable) is left as given.
# ``torch._dynamo.optimize("inductor")`` reaches inductor by another path
# and is left alone.

FAKE_TENSOR_BACKEND = "aot_eager_decomp_partition"


@door("compile torch.compile's graphs for fake tensors")
def inductor_on_fake_tensors(on_compile: Any) -> tuple[Any, dict[str, Any]]:
    """(owner, {name: replacement}) that makes torch.compile's inductor
    backend compile for fake tensors (NOTE [compat: torch.compile on fake
    tensors]); ``on_compile()`` runs before each graph is compiled."""
    import torch

    wrapper = torch._TorchCompileInductorWrapper
    wrapper.__call__  # noqa: B018 - the door's check that it is still there

    def compile_for_fake_tensors(self: Any, model_: Any, inputs_: Any, **_kwargs: Any) -> Any:
        from torch._dynamo.backends.registry import lookup_backend

        on_compile()
        return lookup_backend(FAKE_TENSOR_BACKEND)(model_, inputs_)

    return wrapper, {"__call__": compile_for_fake_tensors}
