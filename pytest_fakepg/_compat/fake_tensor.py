"""Fake tensors: torch's FakeTensorMode, what it raises for values it cannot
know, and what a collective op's arguments are.

Checked on 2.13.0, 2.14.1 and 2.15.0 (``torch._subclasses.fake_tensor``,
``OpOverload._schema``, ``_resolve_process_group``); a missing name raises
UnsupportedTorchError through the door.
"""

from __future__ import annotations

import functools
from typing import Any

from ._door import door


@functools.cache
@door("run a world on fake tensors")
def fake_tensor_mode_class() -> type:
    """``FakeTensorMode``: the infra mode a tensors="fake" world subclasses."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode


@functools.cache
@door("run a world on fake tensors")
def fake_tensor_class() -> type:
    from torch._subclasses.fake_tensor import FakeTensor

    return FakeTensor


@functools.cache
@door("run a world on fake tensors")
def meta_views() -> frozenset[Any]:
    """View ops whose meta kernel a fake tensor runs directly
    (``view_on_meta``): torch's FakeTensorMode runs ``slice`` through its
    Python decomposition and ``as_strided`` again through every mode, about
    0.7 ms a call, where DeepSpeed slices each flat buffer world-size times."""
    import torch

    aten = torch.ops.aten
    return frozenset({aten.slice.Tensor, aten.as_strided.default, aten.view.default, aten.select.int,
                      aten.unsqueeze.default, aten.squeeze.dim, aten.t.default, aten.transpose.int,
                      aten.permute.default, aten.expand.default, aten.alias.default})


@door("run a world on fake tensors")
def view_on_meta(mode: Any, func: Any, args: Any, kwargs: Any) -> Any:
    """``func`` (one of ``meta_views()``, each a view of its first argument)
    on fake tensors of ``mode``, as FakeTensorMode runs an op with a meta
    kernel: the kernel on the tensors' meta selves, the output a fake tensor
    on the input's device (a view has its input's device)."""
    from torch._subclasses.fake_tensor import FakeTensor, in_kernel_invocation_manager

    with in_kernel_invocation_manager(mode):
        out = func(*args, **kwargs)
    return FakeTensor(mode, out, args[0].fake_device)


@functools.cache
@door("run a world on fake tensors")
def op_facts(op: Any) -> tuple[str, tuple[tuple[int, str, bool], ...], bool]:
    """What NOTE [Values fake tensors carry] reads of an op overload's
    schema: its name without namespace; the arguments it writes to (place,
    name, keyword-only); whether it returns a tensor."""
    schema = op._schema
    written = tuple((i, arg.name, arg.kwarg_only) for i, arg in enumerate(schema.arguments)
                    if arg.alias_info is not None and arg.alias_info.is_write)
    returns = any(r.type.kind() in ("TensorType", "ListType") for r in schema.returns)
    return schema.name.partition("::")[2], written, returns


@door("run a world on fake tensors")
def reduce_op_name(op: Any) -> str:
    """A collective's reduce op, boxed (c10d's ops) or named (functional
    collectives), as its RedOpType name: "SUM", "MAX", ..."""
    import torch.distributed as dist

    if isinstance(op, str):
        return op.upper()
    return dist.ReduceOp.RedOpType(op.op()).name


@door("run a world on fake tensors")
def group_size(group: Any) -> int:
    """The size of a c10d op's boxed group, or a functional collective's group name."""
    import torch.distributed as dist

    if isinstance(group, str):
        return resolve_group(group).size()
    return dist.ProcessGroup.unbox(group).size()


@door("run a world on fake tensors")
def group_members(group: Any) -> tuple[int, ...]:
    """The global ranks of a c10d op's boxed group, or a functional collective's group name."""
    import torch.distributed as dist

    pg = resolve_group(group) if isinstance(group, str) else dist.ProcessGroup.unbox(group)
    return tuple(dist.get_process_group_ranks(pg))


def group_rank(group: Any) -> int:
    """This rank's rank in a c10d op's boxed group, or a functional collective's group name."""
    import torch.distributed as dist

    if isinstance(group, str):
        return resolve_group(group).rank()
    return dist.ProcessGroup.unbox(group).rank()


@door("run a world on fake tensors")
def local_scalar_op() -> Any:
    """``aten._local_scalar_dense``: what ``.item()`` and ``bool()`` dispatch."""
    import torch

    return torch.ops.aten._local_scalar_dense.default


@door("run a world on fake tensors")
def storage_key(tensor: Any) -> int:
    """One number for a tensor's storage, the same for all its views."""
    return tensor.untyped_storage()._cdata


@door("run a world on fake tensors")
def tree_leaves(tree: Any) -> list[Any]:
    from torch.utils._pytree import tree_leaves as leaves

    return leaves(tree)


@door("run a world on fake tensors")
def tree_map(fn: Any, tree: Any) -> Any:
    from torch.utils._pytree import tree_map as map_tree

    return map_tree(fn, tree)


@door("run a world on fake tensors")
def unset_fake() -> Any:
    """A context manager in which no fake mode is active (torch's own
    ``unset_fake_temporarily``)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    return unset_fake_temporarily()


@functools.cache
@door("run a world on fake tensors")
def value_errors() -> tuple[type[BaseException], ...]:
    """What FakeTensorMode raises for an op whose result depends on values
    (``.item()``, ``nonzero``, ``unique``, ``masked_select``)."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

    return (DataDependentOutputException, DynamicOutputShapeException)


@functools.cache
def schema_arguments(op: Any) -> tuple[str, ...]:
    """An op overload's argument names, in order (``OpOverload._schema``)."""
    return tuple(arg.name for arg in op._schema.arguments)


@functools.cache
def schema_defaults(op: Any) -> dict[str, Any]:
    return {arg.name: arg.default_value for arg in op._schema.arguments}


@door("resolve a functional collective's group")
def resolve_group(group: Any) -> Any:
    """The ProcessGroup a functional collective names (by group name)."""
    import torch.distributed as dist
    from torch._C._distributed_c10d import _resolve_process_group

    return group if isinstance(group, dist.ProcessGroup) else _resolve_process_group(group)


def group_backend(group: Any, device: Any) -> Any:
    """The backend ``group`` (a ProcessGroup) runs on ``device``
    (``ProcessGroup._get_backend``)."""
    return group._get_backend(device)


@door("issue a collective on fake tensors")
def options(kind: str) -> Any:
    """A new c10d options object (``AllreduceOptions``, ...): they live in
    ``torch._C._distributed_c10d``; torch.distributed re-exports all but
    ``AllgatherOptions``."""
    import torch._C._distributed_c10d as c10d

    return getattr(c10d, kind)()


# The modules DeviceMesh's code lives in (2.13.0-2.15.0): a tensor their code
# makes in a fake-tensor world is made real.
MESH_MODULES = frozenset({"torch.distributed.device_mesh", "torch.distributed._mesh_layout"})


def allgather_base(backend: Any, output: Any, input: Any, opts: Any) -> Any:
    """``Backend._allgather_base``: what c10d's ``_allgather_base_`` kernel
    calls (all_gather_into_tensor)."""
    return backend._allgather_base(output, input, opts)


def reduce_scatter_base(backend: Any, output: Any, input: Any, opts: Any) -> Any:
    """``Backend._reduce_scatter_base`` (reduce_scatter_tensor)."""
    return backend._reduce_scatter_base(output, input, opts)


@door("issue a PREMUL_SUM collective on fake tensors")
def premul_sum() -> Any:
    """NOTE [compat: PREMUL_SUM on fake tensors] A c10d op's boxed ReduceOp
    cannot be handed back to Python with its factor, and ``dist.ReduceOp``
    refuses to be built as PREMUL_SUM without one (an internal assert). A
    PREMUL_SUM with factor 1 (``dist._make_nccl_premul_sum``, 2.11-2.15.0)
    stands in: meta tensors have no values to scale, and the record keeps the
    op's kind."""
    import torch.distributed as dist

    return dist._make_nccl_premul_sum(1.0)


@functools.cache
def cast_patch() -> tuple[Any, dict[str, Any]]:
    """NOTE [Casts of fake parameters]
    ``module.half()``, ``.to(dtype)``, ``.to(device)`` and the rest go
    through ``nn.Module._apply``, which swaps each fake parameter in place
    (``torch.utils.swap_tensors``) and fails, "Couldn't swap Linear.weight":
    a fake tensor has a weak reference from its mode (2.11-2.15.0, with or
    without this package). Where a module holds fake parameters, its
    parameters are replaced instead, as torch does for a conversion that
    changes the tensor's type: a new Parameter (with its gradient converted)
    and converted buffers. An optimizer made before the cast keeps the old
    parameters, as it would there. (owner, {name: replacement})."""
    import torch
    from torch.nn import Module, Parameter

    fake_type = fake_tensor_class()
    original = Module._apply

    @functools.wraps(original)
    def _apply(self: Any, fn: Any, recurse: bool = True) -> Any:
        if not any(isinstance(p, fake_type) for p in self._parameters.values()):
            return original(self, fn, recurse)
        if recurse:
            for module in self.children():
                module._apply(fn)
        for key, param in self._parameters.items():
            if param is None:
                continue
            with torch.no_grad():
                new = Parameter(fn(param), param.requires_grad)
                if param.grad is not None:
                    new.grad = fn(param.grad)
            self._parameters[key] = new
        for key, buf in self._buffers.items():
            if buf is not None:
                self._buffers[key] = fn(buf)
        return self

    return Module, {"_apply": _apply}
