"""Context parallelism: torch's ring attention for the CPU attention kernel,
and the CP dispatcher a world's program turned on, turned off again.

NOTE [Context parallel on CPU]
torch's context parallelism (``_context_parallel/_attention.py``) shards
SDPA's query, key and value along the sequence and runs ring attention: the
DTensor dispatcher hands the attention ops to ``_sdpa_handler``, which calls
``_templated_ring_attention`` (forward) or ``_templated_ring_attention_backward``
with the kernel itself as the op. Its table, ``custom_ops``, names the CUDA
kernels only (flash, efficient, cuDNN; 2.13.0, 2.14.1 and 2.15.0 alike), so
on CPU, where SDPA picks ``aten._scaled_dot_product_flash_attention_for_cpu``,
DTensor finds no sharding strategy and CP fails in every world.

The CPU flash kernel has the shape the ring needs: it returns (out,
logsumexp) with logsumexp (batch, heads, sequence), as CUDA's flash does,
and its backward takes (grad_out, query, key, value, out, logsumexp, ...) by
name. So while a world is up, ``custom_ops`` also maps the CPU kernel and
its backward to ``ring_attention`` below, which runs torch's own templated
ring with the CPU kernel: the same rotation (all_gather or all_to_all of
key and value), the same load balance and the same merge of partial results
as on CUDA. ``_enable_cp_dtensor_dispatcher`` reads ``custom_ops`` when a
program turns CP on, so the patch is in the module's table, not in the
dispatcher's. A torch whose table has the CPU kernel already keeps its own.

The ring needs no sharding propagation: query, key and value are Shard(2)
on a 1-D CP mesh (the CP layer puts them there), and so are the outputs,
whose global shapes follow from the local ones. Anything else (an attention
mask, another placement) is refused, naming what was given, as torch's own
handler refuses an attention bias.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

ATTENTION = "torch.distributed.tensor.experimental._context_parallel._attention"
FORWARD = "_scaled_dot_product_flash_attention_for_cpu"
BACKWARD = "_scaled_dot_product_flash_attention_for_cpu_backward"
SEQ_DIM = 2


def cpu_ring_attention() -> tuple[str, Any]:
    """(module name, module -> {name: replacement}) for the patch: the CP
    table with the CPU kernel added (NOTE [Context parallel on CPU]), made
    when the module is imported (patching.py's deferred owners). Nothing when
    the table or the ring is missing (the program then meets torch's own
    error) or already has the CPU kernel."""
    return ATTENTION, _with_cpu_kernel


def _with_cpu_kernel(module: Any) -> dict[str, Any]:
    import torch

    aten = torch.ops.aten
    table = getattr(module, "custom_ops", None)
    ops = [getattr(getattr(aten, name, None), "default", None) for name in (FORWARD, BACKWARD)]
    ring = [getattr(module, name, None) for name in ("_templated_ring_attention", "_templated_ring_attention_backward")]
    if not isinstance(table, dict) or None in ops or None in ring or ops[0] in table:
        return {}
    return {"custom_ops": {**table, ops[0]: ring_attention, ops[1]: ring_attention}}


def ring_attention(op: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The CP handler of the CPU flash kernel and its backward: torch's
    templated ring over the local shards, the results Shard(2) again."""
    import torch
    from torch.distributed.tensor import DTensor, Shard
    from torch.distributed.tensor._dtensor_spec import DTensorSpec, TensorMeta
    from torch.distributed.tensor._utils import compute_global_tensor_info

    module = sys.modules[ATTENTION]
    named = {argument.name: value for argument, value in zip(op._schema.arguments, args)}
    named.update(kwargs)
    given = {name: value for name, value in named.items() if isinstance(value, DTensor)}
    meshes = {value.device_mesh for value in given.values()}
    placements = {name: tuple(value.placements) for name, value in given.items()}
    if len(meshes) != 1 or any(p != (Shard(SEQ_DIM),) for p in placements.values()):
        raise NotImplementedError(
            f"context parallel attention on CPU takes query, key and value sharded along the sequence "
            f"(Shard({SEQ_DIM}) on one 1-D mesh); got {placements} on {len(meshes)} mesh(es)"
        )
    if named.get("attn_mask") is not None:
        raise NotImplementedError("context parallel attention on CPU takes no attn_mask (use is_causal), as on CUDA")
    mesh = meshes.pop()
    local = {name: value._local_tensor if isinstance(value, DTensor) else value
             for name, value in named.items() if name != "attn_mask"}
    group = mesh.get_group()
    if op.__name__.startswith(BACKWARD):
        results = module._templated_ring_attention_backward(group, SEQ_DIM, op, grad_out_name="grad_out", **local)
    else:
        results = module._templated_ring_attention(group, SEQ_DIM, op, **local)

    def sharded(tensor: Any) -> Any:
        shape, stride = compute_global_tensor_info(tensor, mesh, [Shard(SEQ_DIM)])
        spec = DTensorSpec(mesh, (Shard(SEQ_DIM),), TensorMeta(torch.Size(shape), tuple(stride), tensor.dtype))
        return DTensor(tensor, spec, requires_grad=False)

    return tuple(sharded(tensor) for tensor in results)


def dispatcher_on() -> bool | None:
    """Whether torch's CP dispatcher is on (DTensor's custom op handlers are
    the CP table's); None while the CP module is not loaded, which means
    off (2.13.0-2.15.0: ``existing_custom_ops`` is the dispatcher's own
    table, captured at import)."""
    module = sys.modules.get(ATTENTION)
    existing = getattr(module, "existing_custom_ops", None)
    if existing is None:
        return None
    return module.DTensor._op_dispatcher._custom_op_handlers is not existing


def dispatcher_as_found() -> Callable[[], None]:
    """Called as a world comes up; returns what puts the CP dispatcher back
    as it goes down: if its program turned CP on (torchtitan's
    ``apply_cp_to_forward`` never turns it off), torch's own
    ``_disable_context_parallel_dispatcher`` (DTensor's handlers back, the CP
    sharding rules gone), so that no CP handler outlives the world."""
    was_on = dispatcher_on()

    def put_back() -> None:
        if dispatcher_on() and not was_on:
            sys.modules[ATTENTION]._disable_context_parallel_dispatcher()

    return put_back
