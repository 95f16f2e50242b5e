"""The expert adapters being served: one peft model holding several named LoRA adapters over one base model.

What this adds to peft (vLLM's LoRA manager is the model):

* **Validation by loading.** ``register`` reads the files (:func:`engine.adapter_store.read_adapter_files`
  checks rank, targets, base model and values), loads the adapter into the live model (shapes) and runs a
  one-token forward with it. Any failure is an ``AdapterError`` with the reason; the half-loaded adapter is
  removed and the adapters already serving are untouched.
* **An LRU of adapters on the compute device** (``capacity_on_device``, :mod:`engine.adapter_residency`);
  the rest wait on the offload device (CPU). ``use`` brings the requested ones in, evicting the least
  recently used idle ones.
* **Hot swap.** A new version loads under a fresh internal name and the expert is re-pointed at once; requests
  that entered ``use`` with the old one keep it until they leave, then it is deleted.
* **Thread safety.** Model structure changes (load, delete, device moves) and forward passes are serialized by
  one re-entrant lock, taken per forward call (not per request), so a swap lands between two decoding steps
  of a running generation.
* **Per-thread adapter routing** (:mod:`engine.peft_routing`): concurrent requests (serving, a swap's trial
  forward, an evaluation thread) each get their own ``adapter_names``, and a failed call leaks nothing.

Every call selects adapters with peft's ``adapter_names`` (one per batch row, ``"__base__"`` for none). The
LoRA layers are kept with no active adapter, so a call without ``adapter_names`` computes the base model.
The first adapter wraps the base model in peft (:mod:`engine.peft_host`): ``model`` changes identity and
``model_generation`` goes up.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from engine.adapter_residency import AdapterSlot, Residency
from engine.adapter_store import AdapterStore, AdapterVersion, read_adapter_files, to_expert
from engine.api import Expert
from engine.errors import AdapterError
from engine.peft_host import PeftHost, Rejected
from engine.peft_routing import BASE_ADAPTER

if TYPE_CHECKING:
    from peft import PeftModelForCausalLM
    from torch import nn

    from engine.model_loader import LoadedModel

__all__ = ["BASE_ADAPTER", "AdapterRegistry"]

log = logging.getLogger(__name__)


class AdapterRegistry:
    """Expert name -> loaded LoRA adapter, with validation, a device LRU and hot swap.

    ``loaded_model``'s ``model`` is wrapped in place: run ``registry.model`` (it changes once, when the first
    adapter is registered; ``model_generation`` counts such changes). One registry per model; ``close()``
    gives the model back. ``capacity_on_device`` counts adapters kept on the compute device.
    """

    def __init__(
        self,
        loaded_model: LoadedModel,
        store: AdapterStore,
        capacity_on_device: int,
        max_rank: int = 64,
        offload_device: torch.device | str = "cpu",
    ) -> None:
        if capacity_on_device < 1:
            raise ValueError("capacity_on_device must be at least 1")
        self.loaded = loaded_model
        self.store = store
        self.max_rank = max_rank
        self._host = PeftHost(loaded_model.model, loaded_model.device)
        self._residency = Residency(self._host, capacity_on_device, torch.device(offload_device))
        self._serving: dict[Expert, AdapterSlot] = {}
        self._seq = 0
        self._module_names = [name for name, _ in self.base_model.named_modules() if name]
        self._admin = threading.Lock()  # one register/swap at a time (file checks run outside ``lock``)

    # --- the model ----------------------------------------------------------------------------------------

    @property
    def base_model(self) -> nn.Module:
        """The plain transformers model (wrapped in place once an adapter is registered)."""
        return self._host.base_model

    @property
    def model(self) -> nn.Module:
        """What to run: the peft model once an adapter is registered, else the plain base model."""
        return self._host.model

    @property
    def model_generation(self) -> int:
        """Goes up by one each time ``model`` changes identity: the first adapter registered wraps the base
        model in peft; a failed first adapter or ``close()`` unwraps it. Compare it (or ``model`` by identity)
        with the value seen when the model was taken."""
        return self._host.model_generation

    @property
    def peft_model(self) -> PeftModelForCausalLM | None:
        """The ``PeftModelForCausalLM`` holding the adapters (None before the first ``register``)."""
        return self._host.peft

    @property
    def lock(self) -> threading.RLock:
        """Held for every forward pass and every change of the model's adapters; re-entrant."""
        return self._host.lock

    @property
    def capacity_on_device(self) -> int:
        return self._residency.capacity

    @property
    def offload_device(self) -> torch.device:
        return self._residency.offload_device

    # --- serving ------------------------------------------------------------------------------------------

    def register(self, expert: Expert | str, version: str | None = None) -> AdapterVersion:
        """Load and serve ``version`` (default: the store's serving version) for ``expert``.

        Re-registering the version already served is a no-op; another version is a hot swap.
        Raises ``AdapterError`` (and changes nothing) when the adapter fails validation.
        """
        expert = to_expert(expert)
        if version is None:
            target = self.store.serving(expert)
            if target is None:
                raise AdapterError(expert.value, "no serving version in the adapter store")
        else:
            target = self.store.get(expert, version)
        with self._admin:
            current = self._serving.get(expert)
            if current is not None and current.version.version == target.version:
                return current.version
            slot = self._load(expert, target)
            with self.lock:
                old = self._serving.get(expert)
                self._serving[expert] = slot
                if old is not None:
                    self._residency.counters["swaps"] += 1
                    old.retired = True
                    self._collect_retired()
                self._residency.enforce_capacity(pinned={slot.name})
        log.info("expert %s serves adapter %s (%s)", expert.value, target.version, slot.name)
        return target

    def register_serving(self, experts: Sequence[Expert] = tuple(Expert)) -> dict[Expert, AdapterError]:
        """Register every expert's serving version; returns the failures (the others still serve)."""
        failures: dict[Expert, AdapterError] = {}
        for expert in experts:
            try:
                self.register(expert)
            except AdapterError as exc:
                log.warning("%s", exc)
                failures[expert] = exc
        return failures

    @contextlib.contextmanager
    def use(self, experts: Sequence[Expert | str | None]) -> Iterator[list[str]]:
        """Hold the experts' current adapters (on the device) for one request; yields their internal names
        (``"__base__"`` for None), to pass as ``adapter_names``.

        A swap during the request does not affect it: the old adapter is deleted when the last holder leaves.
        Raises ``AdapterError`` for an expert with no registered adapter.
        """
        with self.lock:
            slots = [None if e is None else self._slot_for(e) for e in experts]
            held = list({s.name: s for s in slots if s is not None}.values())
            for slot in held:
                slot.refs += 1
            try:
                for slot in held:
                    self._residency.make_resident(slot, pinned={s.name for s in held})
            except BaseException:
                for slot in held:
                    slot.refs -= 1
                raise
        try:
            yield [BASE_ADAPTER if s is None else s.name for s in slots]
        finally:
            with self.lock:
                for slot in held:
                    slot.refs -= 1
                self._collect_retired()

    def serving_versions(self) -> dict[str, str]:
        """Expert name -> version served (for /status)."""
        with self.lock:
            return {e.value: s.version.version for e, s in self._serving.items()}

    def stats(self) -> dict[str, Any]:
        """Residency, counters and every loaded adapter by internal name (for /status and tests)."""
        with self.lock:
            slots = self._residency.slots
            resident = self._residency.resident
            return {
                "capacity_on_device": self.capacity_on_device,
                "device": str(self.loaded.device),
                "offload_device": str(self.offload_device),
                "resident": resident,
                "offloaded": [n for n, s in slots.items() if not s.on_device],
                "bytes_on_device": sum(slots[n].nbytes for n in resident),
                **self._residency.counters,
                "adapters": {
                    name: {
                        "expert": s.version.expert.value,
                        "version": s.version.version,
                        "refs": s.refs,
                        "on_device": s.on_device,
                        "retired": s.retired,
                        "bytes": s.nbytes,
                    }
                    for name, s in slots.items()
                },
            }

    def close(self) -> None:
        """Take every adapter out and give the base model back unchanged (tests, shutdown)."""
        with self.lock:
            self._host.close()
            self._serving.clear()
            self._residency.clear()

    # --- loading, retiring --------------------------------------------------------------------------------

    def _load(self, expert: Expert, target: AdapterVersion) -> AdapterSlot:
        counters = self._residency.counters
        try:
            files = read_adapter_files(
                target, max_rank=self.max_rank, module_names=self._module_names, base_model=self.loaded.name
            )
        except AdapterError:
            counters["load_failures"] += 1
            raise
        self._seq += 1
        name = f"{expert.value}-{target.version}-{self._seq}"
        created = False
        try:
            with self.lock:  # generation pauses only for the structural change, not for the trial forward
                created = self._host.install(name, files.config, files.weights)
            # nobody else can select the new adapter yet, so the trial forward needs no exclusive hold
            self._host.smoke_test(name)
        except Exception as exc:  # anything peft or torch raise: the adapter is bad, the server is fine
            with self.lock:
                self._host.purge(name, created)
            counters["load_failures"] += 1
            reason = str(exc) if isinstance(exc, Rejected) else f"failed to load: {exc}"
            raise AdapterError(expert.value, f"{target.version}: {reason}") from exc
        with self.lock:
            nbytes = sum(t.numel() * t.element_size() for t in self._host.adapter_tensors(name))
            slot = AdapterSlot(name, target, nbytes)
            self._residency.add(slot)
            counters["loads"] += 1
        return slot

    def _collect_retired(self) -> None:
        for slot in [s for s in self._residency.slots.values() if s.retired and s.refs == 0]:
            self._host.delete(slot.name)
            self._residency.remove(slot.name)
            log.info("deleted retired adapter %s", slot.name)

    def _slot_for(self, expert: Expert | str) -> AdapterSlot:
        expert = to_expert(expert)
        slot = self._serving.get(expert)
        if slot is None:
            raise AdapterError(expert.value, "no adapter is registered for this expert")
        return slot
