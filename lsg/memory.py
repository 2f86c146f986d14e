"""Deterministic peak activation memory of a block of torch code, on any device (used for design §4's claim).

`PeakMemory` watches every torch op run inside the block through a `TorchDispatchMode`. It counts the
storages of the tensors those ops return, as long as some tensor still refers to them, and keeps the
peak of that sum. That is what the caching-free CPU allocator would hold for the block's own
tensors. It is not process RSS: weights and inputs created before the block are not counted, and
neither are scratch buffers a kernel frees before returning (e.g. inside fused attention).

    with torch.no_grad(), PeakMemory() as memory:
        model(**inputs)
    print(memory.peak_bytes)
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakMemory(TorchDispatchMode):
    """Context manager measuring the peak bytes of live tensor storages allocated inside it.

    Attributes:
        peak_bytes: the largest total seen so far (valid during and after the block).
        live_bytes: storages allocated inside the block that are still alive right now.
    """

    def __init__(self) -> None:
        super().__init__()
        self.peak_bytes = 0
        self.live_bytes = 0
        # storage data_ptr -> [nbytes, live tracked tensors, generation]. The generation guards against a
        # freed address being reused by a new storage before an old tensor's finalizer has run.
        self._storages: dict[int, list[int]] = {}
        self._generation = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        # Outputs sharing a storage with an input (views, in-place results) or with an earlier output of
        # the same op are not new memory. Inputs are read before the op: an `out=` tensor it resizes
        # gets a new storage, which is new memory.
        seen = {_storage_key(t) for t in tree_leaves((args, kwargs)) if _is_counted(t)}
        out = func(*args, **kwargs)
        for tensor in tree_leaves(out):
            if _is_counted(tensor):
                key = _storage_key(tensor)
                self._track(tensor, key, aliases_earlier=key in seen)
                seen.add(key)
        return out

    def _track(self, tensor: torch.Tensor, key: int, *, aliases_earlier: bool) -> None:
        entry = self._storages.get(key)
        if aliases_earlier and entry is None:
            return  # a view of (or write into) memory from before the block, e.g. a weight's transpose
        if entry is None or not aliases_earlier:
            if entry is not None:  # address reused: the old storage is gone, whatever its finalizers say
                self.live_bytes -= entry[0]
            self._generation += 1
            entry = [tensor.untyped_storage().nbytes(), 0, self._generation]
            self._storages[key] = entry
            self.live_bytes += entry[0]
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        entry[1] += 1
        weakref.finalize(tensor, self._release, key, entry[2]).atexit = False  # nothing to count at exit

    def _release(self, key: int, generation: int) -> None:
        entry = self._storages.get(key)
        if entry is None or entry[2] != generation:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._storages[key]
            self.live_bytes -= entry[0]


def _is_counted(value: Any) -> bool:
    """Dense tensors with real memory behind them (meta and sparse tensors have no countable storage)."""
    return (
        isinstance(value, torch.Tensor)
        and value.layout == torch.strided
        and value.device.type != "meta"
        and value.untyped_storage().nbytes() > 0
    )


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()
