"""torch.distributed.pipelining: the steps of a schedule whose tensors are
values the stages agree on, not data.

NOTE [compat: pipelining's control values]
Before a schedule's first step its stages vote, over point-to-point sends of
one-element tensors, on whether their shapes are static, and every stage
reads the result with ``.item()`` (``PipelineStage._warmup_forward_vote``
and ``_warmup_backward_result``, torch 2.13.0 and later; 2.11 warms up with
sends whose values nobody reads). On fake tensors those values would be
unknown, so in an exact world on fake tensors these methods run with no
fake mode active: their tensors are real, and the exact semantics exchange
their values, as object collectives' bytes are (NOTE [Exact worlds on fake
tensors], exact/world.py). A method a torch does not have is left out.
"""

from __future__ import annotations

from typing import Any

from ._door import door

CONTROL_METHODS = ("_warmup_forward_vote", "_warmup_backward_result")


@door("run pipeline schedules on fake tensors")
def control_methods() -> tuple[Any, list[str]]:
    """(PipelineStage, the names of the control methods this torch has)."""
    from torch.distributed.pipelining.stage import PipelineStage

    return PipelineStage, [name for name in CONTROL_METHODS if name in vars(PipelineStage)]
