"""Memory: one rank's tensor memory while its world is up, by category.

Built on torch's own tracker (``MemTracker``, through _compat/tools.py), which attributes
every tensor storage it sees made, or finds in a module it runs, to what
holds it. It works on real and fake tensors alike, so a world with
tensors="fake" measures a model no machine could hold.

NOTE [Memory categories]
  parameters   module parameters and buffers (FSDP's sharded ones; the
               unsharded ones it gathers for a layer count as activations
               while they live, as torch's tracker made them during forward
               or backward), from the moment they exist: registered, made by
               ``to_empty`` or a cast, or assigned from a state dict
  gradients    parameter gradients
  optimizer    optimizer state (made during ``optimizer.step()``)
  activations  tensors made in forward and backward passes
  other        everything else (made outside a module, e.g. inputs)
Bytes are storage sizes, rounded up to the CUDA caching allocator's
512-byte blocks on CUDA, as torch's tracker counts them. What the estimate
leaves out: the CUDA context, NCCL's buffers, allocator fragmentation and
tensors made before tracking began that no module or optimizer holds.
"""

from __future__ import annotations

from typing import Any

from ._compat import tools as _tools

class Memory:
    """This rank's tensor memory since tracking began (or ``reset()``).

    ``peak`` (bytes), ``at_peak`` (bytes by category at the moment of the
    peak; they sum to ``peak``) and ``current`` (live bytes by category now).
    Categories, always all five: ``"parameters"``, ``"gradients"``,
    ``"optimizer"``, ``"activations"``, ``"other"`` (NOTE [Memory
    categories]).
    """

    __slots__ = ("_tracker", "_device_type", "_tracking", "_hooks", "_unwatch")

    def __init__(self, device_type: str, on_wait: Any = None) -> None:
        from torch.nn.modules import module

        self._device_type = device_type
        tracker = self._tracker = _tools.tracker_class()()
        tracker.on_wait = on_wait
        # A parameter counts as one from when a module gets it, not only
        # once the module runs (torch's tracker alone): so the memory of
        # building a model is the parameters'.
        # In this thread only: NOTE [A tracker per thread] (_compat/tools.py).
        self._hooks = (
            module.register_module_parameter_registration_hook(
                lambda _module, _name, param: _tools.counting() is tracker
                and _tools.track_as_parameter(tracker, param)),
            module.register_module_buffer_registration_hook(
                lambda _module, _name, buf: _tools.counting() is tracker
                and _tools.track_as_parameter(tracker, buf, buffer=True)),
        )
        tracker.__enter__()
        self._unwatch = _tools.watch(tracker)
        self._tracking = True

    @property
    def tracking(self) -> bool:
        return self._tracking

    def stop(self) -> None:
        """Stop tracking (the world does, when it goes down); the figures
        stay readable."""
        if self._tracking:
            self._tracking = False
            for hook in self._hooks:
                hook.remove()
            self._unwatch()
            self._tracker.on_wait = None
            self._tracker.__exit__(None, None, None)
            _tools.release(self._tracker)

    @property
    def peak(self) -> int:
        return sum(self.at_peak.values())

    @property
    def at_peak(self) -> dict[str, int]:
        return _tools.at_peak(self._tracker, self._device_type)

    @property
    def current(self) -> dict[str, int]:
        return _tools.current(self._tracker, self._device_type)

    def reset(self) -> None:
        """Forget the peak so far: from now, the peak is at least what is live."""
        _tools.reset_peak(self._tracker)

    def __repr__(self) -> str:
        parts = ", ".join(f"{k} {v:,}" for k, v in self.at_peak.items() if v)
        return f"<Memory peak {self.peak:,} bytes ({parts or 'nothing'})>"
