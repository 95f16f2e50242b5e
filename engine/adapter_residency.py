"""Which loaded adapters sit on the compute device: an LRU of at most ``capacity`` idle adapters.

The rest wait on the offload device (CPU). Adapters in use (``refs > 0``) or pinned are never moved; when
they alone exceed the capacity, the capacity is exceeded for that request (with a warning).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from engine.peft_routing import lora_layers

if TYPE_CHECKING:
    from engine.adapter_store import AdapterVersion
    from engine.peft_host import PeftHost

log = logging.getLogger(__name__)

COUNTERS = ("hits", "misses", "evictions", "loads", "load_failures", "swaps")


@dataclass(slots=True)
class AdapterSlot:
    """One adapter loaded into the peft model under an internal name."""

    name: str
    version: AdapterVersion
    nbytes: int
    refs: int = 0
    on_device: bool = True
    retired: bool = False


class Residency:
    """The loaded adapters by internal name, the device LRU over them, and the registry's counters.

    Not locked itself: callers hold the host's ``lock``.
    """

    def __init__(self, host: PeftHost, capacity: int, offload_device: torch.device) -> None:
        self.host = host
        self.capacity = capacity
        self.offload_device = offload_device
        self.slots: dict[str, AdapterSlot] = {}
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._lru: OrderedDict[str, None] = OrderedDict()  # resident adapters, least recently used first

    @property
    def resident(self) -> list[str]:
        """Internal names on the compute device, least recently used first."""
        return list(self._lru)

    def add(self, slot: AdapterSlot) -> None:
        """A freshly loaded adapter (on the compute device, most recently used)."""
        self.slots[slot.name] = slot
        self._lru[slot.name] = None

    def remove(self, name: str) -> None:
        self.slots.pop(name, None)
        self._lru.pop(name, None)

    def clear(self) -> None:
        self.slots.clear()
        self._lru.clear()

    def make_resident(self, slot: AdapterSlot, pinned: Iterable[str]) -> None:
        """Bring ``slot`` onto the compute device as the most recently used, then enforce the capacity."""
        if slot.on_device:
            self.counters["hits"] += 1
        else:
            self.counters["misses"] += 1
            self._move(slot, to_device=True)
        self._lru[slot.name] = None
        self._lru.move_to_end(slot.name)
        self.enforce_capacity({*pinned, slot.name})

    def enforce_capacity(self, pinned: set[str]) -> None:
        """Offload least recently used idle adapters until within capacity (in-use ones are never moved)."""
        for name in list(self._lru):
            if len(self._lru) <= self.capacity:
                break
            slot = self.slots[name]
            if name in pinned or slot.refs > 0:
                continue
            self._move(slot, to_device=False)
            self.counters["evictions"] += 1
        if len(self._lru) > self.capacity:
            log.warning("%d adapters in use exceed capacity_on_device=%d", len(self._lru), self.capacity)

    def _move(self, slot: AdapterSlot, to_device: bool) -> None:
        assert self.host.peft is not None
        for layer in lora_layers(self.host.peft):
            target = _module_device(layer.get_base_layer()) if to_device else self.offload_device
            for attr in layer.adapter_layer_names:
                container = getattr(layer, attr, None)
                if container is None or slot.name not in container:
                    continue
                item = container[slot.name]
                if isinstance(item, nn.Module):
                    item.to(target)
                else:
                    container[slot.name] = nn.Parameter(item.detach().to(target), requires_grad=False)
        slot.on_device = to_device
        if to_device:
            self._lru[slot.name] = None
        else:
            self._lru.pop(slot.name, None)


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")
