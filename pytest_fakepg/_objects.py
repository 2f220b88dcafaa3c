"""Object collectives on a rank that cannot know the data.

NOTE [Objects this rank cannot know]
torch's ``broadcast_object_list``, ``scatter_object_list`` and
``recv_object_list`` size their receive buffers from a first collective
(``torch.empty`` on the receiving ranks) whose data comes from another rank.
In a fake world that data never arrives, so torch would unpickle whatever
``torch.empty`` held: an EOFError, or an attempt to allocate petabytes.

While a fake world is up, these three are replaced by versions that, on a
rank that is not the source, give the uniform answer (what a real world gives
when every rank holds the data this rank holds: its own objects, as fresh
copies) and issue the same collectives, with the same shapes, that torch's
would, so records, faults and the consistency check see what a real run
issues. ``scatter_object_list`` on a non-source rank needs the input list to
have a uniform answer; without one it raises, saying why, and so does
``recv_object_list`` given only placeholders (``[None]``, as
torch.distributed.pipelining's shape inference receives its neighbour's
metadata): nothing this rank holds can stand for what another rank sends. On
the source rank torch's own function runs.

All six object collectives (these three, ``all_gather_object``,
``gather_object`` and ``send_object_list``) mark the calls they issue as
object calls (NOTE [Object collectives] in csrc/world_state.hpp): their byte
counts follow each rank's objects, so the check across ranks does not
compare them.

Code that bound the function before the world started (``from
torch.distributed import broadcast_object_list`` at import time) keeps torch's.
"""

from __future__ import annotations

import contextlib
import functools
import pickle
from collections.abc import Callable, Iterator
from typing import Any

from ._frames import user_line

NAMES = (
    "all_gather_object", "gather_object", "broadcast_object_list",
    "scatter_object_list", "send_object_list", "recv_object_list",
)


def _serialize(objects: list[Any]) -> tuple[Any, Any, list[Any]]:
    """(sizes, payload, per-object byte tensors) as torch lays them out."""
    import torch

    tensors = [torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8) for obj in objects]
    sizes = torch.tensor([t.numel() for t in tensors], dtype=torch.long)
    payload = torch.cat(tensors) if tensors else torch.empty(0, dtype=torch.uint8)
    return sizes, payload, tensors


def _copies(objects: list[Any]) -> list[Any]:
    return [pickle.loads(pickle.dumps(obj)) for obj in objects]


def _group_root(group: Any, src: int | None, group_src: int | None) -> tuple[Any, int]:
    import torch.distributed as dist

    group = group or dist.group.WORLD
    if group_src is None:
        if src is None:
            raise ValueError("give src or group_src")
        group_src = dist.get_group_rank(group, src)
    return group, group_src


def make(originals: dict[str, Any], current_native: Callable[[], Any]) -> dict[str, Any]:
    """The replacements of ``originals`` (torch's, by name in NAMES); their
    calls are marked on ``current_native()`` (the running world's
    WorldState, or None on torch's stock backend). Made once per process."""
    import torch.distributed as dist

    @contextlib.contextmanager
    def object_calls() -> Iterator[None]:
        native = current_native()
        if native is None:
            yield
            return
        native.set_in_object_collective(True)
        try:
            yield
        finally:
            native.set_in_object_collective(False)

    def marked(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with object_calls():
                return fn(*args, **kwargs)

        return call

    def broadcast_object_list(
        object_list: list[Any],
        src: int | None = None,
        group: Any = None,
        device: Any = None,
        group_src: int | None = None,
    ) -> None:
        pg, root = _group_root(group, src, group_src)
        if pg.rank() == root:
            return originals["broadcast_object_list"](object_list, src, group, device, group_src)
        sizes, payload, _ = _serialize(object_list)
        dist.broadcast(sizes, group=pg, group_src=root)
        dist.broadcast(payload, group=pg, group_src=root)
        object_list[:] = _copies(object_list)
        return None

    def scatter_object_list(
        scatter_object_output_list: list[Any],
        scatter_object_input_list: list[Any] | None = None,
        src: int | None = None,
        group: Any = None,
        group_src: int | None = None,
    ) -> None:
        import torch

        pg, root = _group_root(group, src, group_src)
        if pg.rank() == root:
            return originals["scatter_object_list"](
                scatter_object_output_list, scatter_object_input_list, src, group, group_src
            )
        if scatter_object_input_list is None or len(scatter_object_input_list) != pg.size():
            raise ValueError(
                f"scatter_object_list on group rank {pg.rank()} of a fake world: the objects "
                f"that group rank {root} scatters exist only on that rank, which does not run "
                "in this process. Pass the same scatter_object_input_list on every rank (each "
                f"rank then takes its own entry, as a real world would give), or test group "
                f"rank {root}."
            )
        _, _, tensors = _serialize(list(scatter_object_input_list))
        mine = tensors[pg.rank()]
        longest = max(t.numel() for t in tensors)
        dist.broadcast(torch.tensor([longest], dtype=torch.long), group=pg, group_src=root)
        buffer = torch.zeros(longest, dtype=torch.uint8)
        buffer[: mine.numel()] = mine
        dist.scatter(buffer, None, group=pg, group_src=root)
        dist.scatter(torch.tensor([mine.numel()], dtype=torch.long), None, group=pg, group_src=root)
        scatter_object_output_list[0] = _copies([scatter_object_input_list[pg.rank()]])[0]
        return None

    def recv_object_list(
        object_list: list[Any],
        src: int | None = None,
        group: Any = None,
        device: Any = None,
        group_src: int | None = None,
        use_batch: bool = False,
    ) -> int:
        pg, root = _group_root(group, src, group_src)
        if all(obj is None for obj in object_list):
            line = user_line()
            raise RuntimeError(
                f"recv_object_list from rank {dist.get_global_rank(pg, root)}"
                f"{f' (reached from {line})' if line else ''} in a fake world where only rank "
                f"{dist.get_rank()} runs, so what the sender sends cannot be known, and this rank's list "
                f"holds only placeholders ({object_list!r}) to stand for it. torch.distributed.pipelining "
                "receives each stage's metadata this way: run pipeline stages with values='exact', where "
                "every rank runs"
            )
        sizes, payload, _ = _serialize(object_list)
        sender = dist.recv(sizes, group=pg, group_src=root)
        dist.recv(payload, group=pg, group_src=root)
        object_list[:] = _copies(object_list)
        return sender

    ours = {
        "broadcast_object_list": broadcast_object_list,
        "scatter_object_list": scatter_object_list,
        "recv_object_list": recv_object_list,
    }
    return {name: marked(ours.get(name, originals[name])) for name in NAMES}
