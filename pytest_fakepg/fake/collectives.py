"""Collectives issued on fake tensors reach the world's backend.

NOTE [Collectives on fake tensors]
Under FakeTensorMode, c10d's ops (``c10d::allreduce_``, ...) and the
functional collectives (``_c10d_functional::all_reduce``, ...) stop at the
meta kernels torch registers for them: they never reach a backend, so
nothing would be counted, recorded or failed. A tensors="fake" world's mode
(mode.py) hands each to its route here. A route calls the group's fakepg
backend with meta tensors of the caller's shapes, strides and dtypes - the
backend method c10d's own CPU kernel calls for real tensors, with the same
options - so the call is checked, counted, recorded and failed by the same
C++ code as with real tensors (NOTE [Meta tensors have no values] in
csrc/values.cpp). It returns what torch's meta kernel returns, but with the
backend's Work, so that ``wait()`` raises a fault armed with ``at="wait"``.
A functional collective's fake output is torch's own; its work is kept until
``wait_tensor`` (or 2.15's ``wait_tensors``) waits on it, as c10d's work
registry does. The ops were checked on 2.11, 2.13.0, 2.14.1 and 2.15.0 (which
adds ``c10d::gather_into_tensor_`` and ``_c10d_functional::wait_tensors``);
an op of a later torch that no route serves is refused by name (mode.py).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any

from .._compat import fake_tensor as _ft

Route = Callable[..., Any]


def _meta(t: Any) -> Any:
    import torch

    return torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device="meta")


def _metas(ts: Any) -> list[Any]:
    return [_meta(t) for t in ts]


def _reduce_op(boxed: Any) -> Any:
    """A c10d op's boxed ReduceOp as ``dist.ReduceOp`` (its kind: a fake
    world computes nothing, so PREMUL_SUM's factor does not matter)."""
    import torch.distributed as dist

    kind = dist.ReduceOp.RedOpType(boxed.op())
    if kind == dist.ReduceOp.PREMUL_SUM:
        return _ft.premul_sum()  # NOTE [compat: PREMUL_SUM on fake tensors]
    return dist.ReduceOp(kind)


def _named_reduce_op(name: str) -> Any:
    import torch.distributed as dist

    return dist.ReduceOp(getattr(dist.ReduceOp.RedOpType, name.upper()))


def _options(kind: str, **fields: Any) -> Any:
    opts = _ft.options(kind)
    for name, value in fields.items():
        setattr(opts, name, value)
    return opts


class Router:
    """The routes of one world: c10d ops and functional collectives on fake
    tensors, to the groups' fakepg backends."""

    def __init__(self) -> None:
        # id of a functional collective's output -> (the output, weakly; the
        # work wait_tensor waits on). Not a WeakKeyDictionary: tensors
        # compare elementwise.
        self._pending: dict[int, tuple[weakref.ref[Any], Any]] = {}

    def route(self, func: Any) -> Route | None:
        return _routes().get(func)

    # -- helpers the routes share -------------------------------------
    @staticmethod
    def bound(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        values = dict(_ft.schema_defaults(func))
        values.update(zip(_ft.schema_arguments(func), args))
        values.update(kwargs)
        return values

    @staticmethod
    def c10d_backend(boxed_group: Any, tensor: Any) -> Any:
        import torch.distributed as dist

        return _ft.group_backend(dist.ProcessGroup.unbox(boxed_group), tensor.device)

    @staticmethod
    def functional_backend(group: Any, tensor: Any) -> Any:
        return _ft.group_backend(_ft.resolve_group(group), tensor.device)

    def keep(self, outputs: Any, work: Any) -> None:
        for out in outputs if isinstance(outputs, (list, tuple)) else (outputs,):
            self._pending[id(out)] = (weakref.ref(out), work)

    def wait(self, tensor: Any) -> None:
        found = self._pending.pop(id(tensor), None)
        if found is not None and found[0]() is tensor:
            found[1].wait()


# -- c10d's ops ------------------------------------------------------------------
# One function per op: (the group's backend, the op's arguments by name) ->
# the backend's work, as c10d's CPU kernel for the op (Ops.cpp) calls it.

Issue = Callable[[Any, dict[str, Any]], Any]
# op name -> (issue, the argument holding its tensors, whether torch's meta
# kernel returns the first argument with the work)
_C10D: dict[str, tuple[Issue, str, bool]] = {}


def _c10d_op(name: str, tensors: str, returns_first: bool) -> Callable[[Issue], Issue]:
    def register(issue: Issue) -> Issue:
        _C10D[name] = (issue, tensors, returns_first)
        return issue

    return register


def _timeout(a: dict[str, Any]) -> dict[str, Any]:
    import datetime

    ms = a.get("timeout", -1)
    return {} if ms is None or ms < 0 else {"timeout": datetime.timedelta(milliseconds=ms)}


@_c10d_op("allreduce_", "tensors", True)
def _allreduce(b: Any, a: dict[str, Any]) -> Any:
    opts = _options("AllreduceOptions", reduceOp=_reduce_op(a["reduce_op"]), **_timeout(a))
    return b.allreduce(_metas(a["tensors"]), opts)


@_c10d_op("allreduce_coalesced_", "tensors", False)
def _allreduce_coalesced(b: Any, a: dict[str, Any]) -> Any:
    opts = _options("AllreduceCoalescedOptions", reduceOp=_reduce_op(a["reduce_op"]), **_timeout(a))
    return b.allreduce_coalesced(_metas(a["tensors"]), opts)


@_c10d_op("allgather_", "input_tensors", True)
def _allgather(b: Any, a: dict[str, Any]) -> Any:
    opts = _options("AllgatherOptions", **_timeout(a))
    return b.allgather(_nested_metas(a["output_tensors"]), _metas(a["input_tensors"]), opts)


@_c10d_op("_allgather_base_", "input_tensor", True)
def _allgather_base(b: Any, a: dict[str, Any]) -> Any:
    opts = _options("AllgatherOptions", **_timeout(a))
    return _ft.allgather_base(b, _meta(a["output_tensor"]), _meta(a["input_tensor"]), opts)


@_c10d_op("allgather_coalesced_", "input_list", False)
def _allgather_coalesced(b: Any, a: dict[str, Any]) -> Any:
    return b.allgather_coalesced(_nested_metas(a["output_lists"]), _metas(a["input_list"]))


@_c10d_op("allgather_into_tensor_coalesced_", "inputs", False)
def _allgather_into_tensor_coalesced(b: Any, a: dict[str, Any]) -> Any:
    return b.allgather_into_tensor_coalesced(_metas(a["outputs"]), _metas(a["inputs"]))


@_c10d_op("reduce_scatter_", "output_tensors", True)
def _reduce_scatter(b: Any, a: dict[str, Any]) -> Any:
    opts = _options("ReduceScatterOptions", reduceOp=_reduce_op(a["reduce_op"]), **_timeout(a))
    return b.reduce_scatter(_metas(a["output_tensors"]), _nested_metas(a["input_tensors"]), opts)


@_c10d_op("_reduce_scatter_base_", "input_tensor", True)
def _reduce_scatter_base(b: Any, a: dict[str, Any]) -> Any:
    opts = _options("ReduceScatterOptions", reduceOp=_reduce_op(a["reduce_op"]), **_timeout(a))
    return _ft.reduce_scatter_base(b, _meta(a["output_tensor"]), _meta(a["input_tensor"]), opts)


@_c10d_op("reduce_scatter_tensor_coalesced_", "inputs", False)
def _reduce_scatter_tensor_coalesced(b: Any, a: dict[str, Any]) -> Any:
    return b.reduce_scatter_tensor_coalesced(_metas(a["outputs"]), _metas(a["inputs"]), _reduce_op(a["reduce_op"]))


@_c10d_op("broadcast_", "tensors", True)
def _broadcast(b: Any, a: dict[str, Any]) -> Any:
    opts = _options("BroadcastOptions", rootRank=a["root_rank"], rootTensor=a["root_tensor"], **_timeout(a))
    return b.broadcast(_metas(a["tensors"]), opts)


@_c10d_op("reduce_", "tensors", False)
def _reduce(b: Any, a: dict[str, Any]) -> Any:
    opts = _options("ReduceOptions", reduceOp=_reduce_op(a["reduce_op"]), rootRank=a["root_rank"],
                    rootTensor=a["root_tensor"], **_timeout(a))
    return b.reduce(_metas(a["tensors"]), opts)


@_c10d_op("gather_", "input_tensors", False)
def _gather(b: Any, a: dict[str, Any]) -> Any:
    opts = _options("GatherOptions", rootRank=a["root_rank"], **_timeout(a))
    return b.gather(_nested_metas(a["output_tensors"]), _metas(a["input_tensors"]), opts)


@_c10d_op("gather_into_tensor_", "input_tensor", True)  # 2.15
def _gather_into_tensor(b: Any, a: dict[str, Any]) -> Any:
    opts = _options("GatherOptions", rootRank=a["root_rank"], **_timeout(a))
    return b.gather_single(_meta(a["output_tensor"]), _meta(a["input_tensor"]), opts)


@_c10d_op("scatter_", "output_tensors", True)
def _scatter(b: Any, a: dict[str, Any]) -> Any:
    opts = _options("ScatterOptions", rootRank=a["root_rank"], **_timeout(a))
    return b.scatter(_metas(a["output_tensors"]), _nested_metas(a["input_tensors"]), opts)


@_c10d_op("alltoall_", "input_tensors", True)
def _alltoall(b: Any, a: dict[str, Any]) -> Any:
    opts = _options("AllToAllOptions", **_timeout(a))
    return b.alltoall(_metas(a["output_tensors"]), _metas(a["input_tensors"]), opts)


@_c10d_op("alltoall_base_", "input", False)
def _alltoall_base(b: Any, a: dict[str, Any]) -> Any:
    opts = _options("AllToAllOptions", **_timeout(a))
    splits = list(a["output_split_sizes"]), list(a["input_split_sizes"])
    return b.alltoall_base(_meta(a["output"]), _meta(a["input"]), *splits, opts)


@_c10d_op("barrier", "tensor", False)
def _barrier(b: Any, a: dict[str, Any]) -> Any:
    return b.barrier(_options("BarrierOptions", device_ids=list(a["device_ids"]), **_timeout(a)))


@_c10d_op("monitored_barrier_", "tensor", False)
def _monitored_barrier(b: Any, a: dict[str, Any]) -> None:
    opts = _options("BarrierOptions", device_ids=list(a["device_ids"]), **_timeout(a))
    b.monitored_barrier(opts, a["wait_all_ranks"])


@_c10d_op("send", "tensors", False)
def _send(b: Any, a: dict[str, Any]) -> Any:
    return b.send(_metas(a["tensors"]), a["dst"], a["tag"])


@_c10d_op("recv_", "tensors", False)
def _recv(b: Any, a: dict[str, Any]) -> Any:
    return b.recv(_metas(a["tensors"]), a["src"], a["tag"])


@_c10d_op("recv_any_source_", "tensors", False)
def _recv_any_source(b: Any, a: dict[str, Any]) -> Any:
    return b.recv_anysource(_metas(a["tensors"]), a["tag"])


def _c10d_route(issue: Issue, tensors: str, returns_first: bool) -> Route:
    def route(router: Router, mode: Any, func: Any, args: Any, kwargs: Any) -> Any:
        a = router.bound(func, args, kwargs)
        some = a[tensors]
        while isinstance(some, (list, tuple)):
            some = some[0]
        work = issue(router.c10d_backend(a["process_group"], some), a)
        if work is None:  # monitored_barrier_ returns nothing
            return None
        boxed = work.boxed()
        return (args[0], boxed) if returns_first else boxed

    return route


def _nested_metas(lists: Any) -> list[list[Any]]:
    return [_metas(ts) for ts in lists]


# -- functional collectives: torch's fake output, and the backend's work ----------
# (the backend, the arguments by name, the fake output) -> the work, as
# c10d's Functional.cpp issues each on its output.

FunctionalIssue = Callable[[Any, dict[str, Any], Any], Any]
# op name -> (issue, the argument holding its input)
_FUNCTIONAL: dict[str, tuple[FunctionalIssue, str]] = {}


def _functional_op(*names: str, input: str = "input") -> Callable[[FunctionalIssue], FunctionalIssue]:
    def register(issue: FunctionalIssue) -> FunctionalIssue:
        for name in names:
            _FUNCTIONAL[name] = (issue, input)
        return issue

    return register


@_functional_op("all_reduce", "all_reduce_")
def _f_all_reduce(b: Any, a: dict[str, Any], out: Any) -> Any:
    return b.allreduce([_meta(out)], _options("AllreduceOptions", reduceOp=_named_reduce_op(a["reduce_op"])))


@_functional_op("all_reduce_coalesced", "all_reduce_coalesced_", input="inputs")
def _f_all_reduce_coalesced(b: Any, a: dict[str, Any], out: Any) -> Any:
    opts = _options("AllreduceCoalescedOptions", reduceOp=_named_reduce_op(a["reduce_op"]))
    return b.allreduce_coalesced(_metas(out), opts)


@_functional_op("all_gather_into_tensor", "all_gather_into_tensor_out")
def _f_all_gather_into_tensor(b: Any, a: dict[str, Any], out: Any) -> Any:
    return _ft.allgather_base(b, _meta(out), _meta(a["input"]), _options("AllgatherOptions"))


@_functional_op("all_gather_into_tensor_coalesced", input="inputs")
def _f_all_gather_into_tensor_coalesced(b: Any, a: dict[str, Any], out: Any) -> Any:
    return b.allgather_into_tensor_coalesced(_metas(out), _metas(a["inputs"]))


@_functional_op("reduce_scatter_tensor", "reduce_scatter_tensor_out")
def _f_reduce_scatter_tensor(b: Any, a: dict[str, Any], out: Any) -> Any:
    opts = _options("ReduceScatterOptions", reduceOp=_named_reduce_op(a["reduce_op"]))
    return _ft.reduce_scatter_base(b, _meta(out), _meta(a["input"]), opts)


@_functional_op("reduce_scatter_tensor_coalesced", input="inputs")
def _f_reduce_scatter_tensor_coalesced(b: Any, a: dict[str, Any], out: Any) -> Any:
    return b.reduce_scatter_tensor_coalesced(_metas(out), _metas(a["inputs"]), _named_reduce_op(a["reduce_op"]))


@_functional_op("all_to_all_single")
def _f_all_to_all_single(b: Any, a: dict[str, Any], out: Any) -> Any:
    splits = [int(s) for s in a["output_split_sizes"]], [int(s) for s in a["input_split_sizes"]]
    return b.alltoall_base(_meta(out), _meta(a["input"]), *splits, _options("AllToAllOptions"))


@_functional_op("broadcast", "broadcast_")
def _f_broadcast(b: Any, a: dict[str, Any], out: Any) -> Any:
    return b.broadcast([_meta(out)], _options("BroadcastOptions", rootRank=a["src"]))


def _functional_route(issue: FunctionalIssue, input: str) -> Route:
    def route(router: Router, mode: Any, func: Any, args: Any, kwargs: Any) -> Any:
        a = router.bound(func, args, kwargs)
        out = mode.fake_dispatch(func, args, kwargs)
        some = a[input]
        if isinstance(some, (list, tuple)):
            some = some[0]
        router.keep(out, issue(router.functional_backend(a["group_name"], some), a, out))
        return out

    return route


def _wait_tensor(router: Router, mode: Any, func: Any, args: Any, kwargs: Any) -> Any:
    router.wait(router.bound(func, args, kwargs)["tensor"])
    return mode.fake_dispatch(func, args, kwargs)


def _wait_tensors(router: Router, mode: Any, func: Any, args: Any, kwargs: Any) -> Any:
    for tensor in router.bound(func, args, kwargs)["tensors"]:
        router.wait(tensor)
    return mode.fake_dispatch(func, args, kwargs)


@functools.cache
def _routes() -> dict[Any, Route]:
    import torch

    c10d, functional = torch.ops.c10d, torch.ops._c10d_functional
    routes = {getattr(c10d, name).default: _c10d_route(*how) for name, how in _C10D.items() if hasattr(c10d, name)}
    routes.update(
        {getattr(functional, name).default: _functional_route(*how)
         for name, how in _FUNCTIONAL.items() if hasattr(functional, name)}
    )
    routes[torch.ops._c10d_functional.wait_tensor.default] = _wait_tensor
    if hasattr(functional, "wait_tensors"):  # 2.15
        routes[functional.wait_tensors.default] = _wait_tensors
    return routes
