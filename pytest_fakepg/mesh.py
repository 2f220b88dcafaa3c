"""The world's DeviceMesh, made with only this rank's groups (NOTE [Only
this rank's groups]), and what its groups are called."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _compat

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


def init_device_mesh(device: str, shape: tuple[int, ...], names: tuple[str, ...] | None) -> DeviceMesh:
    """``init_device_mesh``, making only the groups this rank is in.

    NOTE [Only this rank's groups]
    torch's DeviceMesh creates every sub-group of every dimension, one
    new_group call each, so that all ranks agree on them: 196,736 calls for a
    (16, 8192, 8) mesh, seconds of work. A fake world has one rank, and only
    its own groups can ever be used, so while the mesh is built its per-dimension
    group factory is swapped for one that finds this rank's row and creates that
    group alone. Everything else (the mesh tensor, coordinates, slicing, the
    group registry) is torch's own. Where torch's internals differ from what this
    expects, the stock path runs instead (NOTE [compat: mesh groups]).
    """
    from torch.distributed import device_mesh as dm

    found = _compat.device_mesh.mesh_group_factory()
    if found is None:
        return dm.init_device_mesh(device, shape, mesh_dim_names=names)
    mesh_cls, layout_cls, original = found

    def this_ranks_group(sub_layout: Any, rank_map: Any, dim_name: str, backend_override: Any, *more: Any) -> Any:
        import torch.distributed as dist

        if backend_override != (None, None) or any(more):  # torch 2.15's preserve_rank_order
            return original(sub_layout, rank_map, dim_name, backend_override, *more)
        ranks = _ranks_of_this_rank(layout_cls, sub_layout, rank_map, dist.get_rank(), dist.get_world_size())
        if ranks is None:
            return None
        if len(ranks) == dist.get_world_size():
            # as torch does for a default group that is not gloo
            return _compat.c10d.default_group().group_name
        return dist.new_group(ranks=ranks, group_desc=f"mesh_{dim_name}").group_name

    patch = _compat.patching.install([(mesh_cls, {_compat.device_mesh.GROUP_FACTORY: staticmethod(this_ranks_group)})])
    try:
        return dm.init_device_mesh(device, shape, mesh_dim_names=names)
    finally:
        _compat.patching.remove(patch)


def _ranks_of_this_rank(
    layout_cls: Any, sub_layout: Any, rank_map: Any, rank: int, world_size: int
) -> list[int] | None:
    """The ranks of the group of mesh dimension `sub_layout` that holds `rank`,
    or None. init_device_mesh's rank map is 0..n-1 and a plain dimension is
    one (size, stride) pair: then the group is arithmetic. Anything else goes
    through torch's own layout algebra."""
    import torch

    size, stride = getattr(sub_layout, "shape", None), getattr(sub_layout, "stride", None)
    if isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride) == 1:
        size, stride = size[0], stride[0]  # a flat layout of one mode
    if (
        isinstance(size, int)
        and isinstance(stride, int)
        and rank_map.numel() == world_size
        and torch.equal(rank_map, torch.arange(world_size, dtype=rank_map.dtype))
    ):
        first = rank - (rank // stride) % size * stride
        return [first + k * stride for k in range(size)]
    groups = layout_cls([sub_layout]).remap_to_tensor(rank_map)
    row = (groups == rank).any(dim=-1).nonzero()
    return None if row.numel() == 0 else groups[int(row[0, 0])].tolist()


def labels_now(mesh: DeviceMesh | None = None) -> dict[str, str]:
    """The labels of the groups this thread has now, and the names of
    ``mesh``'s dimensions on the groups they use."""
    labels = {name: desc[len("mesh_"):] if desc.startswith("mesh_") else desc
              for name, desc in _compat.c10d.group_descriptions().items()}
    for dim in getattr(mesh, "mesh_dim_names", None) or ():
        try:
            name = mesh.get_group(dim).group_name  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - a dimension without a group of this rank's
            continue
        label = labels.get(name)
        if not label:
            labels[name] = dim
        elif dim not in label.split("/"):
            labels[name] = f"{label}/{dim}"
    return labels
