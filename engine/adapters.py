"""The expert adapters being served: one peft model holding several named LoRA adapters over one base model.

What this adds to peft (vLLM's LoRA manager is the model):

* **Validation by loading.** ``register`` reads the files, checks rank, targets, base model, shapes and values,
  loads the adapter into the live model and runs a one-token forward with it. Any failure is an
  ``AdapterError`` with the reason; the half-loaded adapter is removed and the adapters already serving are
  untouched.
* **An LRU of adapters on the compute device** (``capacity_on_device``); the rest wait on the offload device
  (CPU). ``use`` brings the requested ones in, evicting the least recently used idle ones.
* **Hot swap.** A new version loads under a fresh internal name and the expert is re-pointed at once; requests
  that entered ``use`` with the old one keep it until they leave, then it is deleted.
* **Thread safety.** Model structure changes (load, delete, device moves) and forward passes are serialized by
  one re-entrant lock, taken per forward call (not per request), so a swap lands between two decoding steps
  of a running generation.
* **Per-thread adapter routing.** peft routes ``adapter_names`` by hooks registered on every LoRA layer for the
  duration of a call: two threads generating at once overwrite each other's routing, and an exception leaks
  the hooks into later calls. Here each LoRA layer has one permanent hook that reads the calling thread's
  ``adapter_names`` (set for the duration of the call), so concurrent requests (serving, a swap's trial
  forward, an evaluation thread) each get their own adapters, and nothing leaks.

Every call selects adapters with peft's ``adapter_names`` (one per batch row, ``"__base__"`` for none). The
LoRA layers are kept with no active adapter, so a call without ``adapter_names`` computes the base model.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from engine.adapter_store import (
    AdapterStore,
    AdapterVersion,
    loaded_tensor_bytes,
    read_adapter_files,
    to_expert,
)
from engine.api import Expert
from engine.errors import AdapterError

if TYPE_CHECKING:
    from engine.model_loader import LoadedModel

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"
"""peft's name for 'no adapter' in ``adapter_names``."""


class _Rejected(Exception):
    """An adapter failed a check while loading into the live model (becomes an ``AdapterError``)."""


@dataclass(slots=True)
class _Slot:
    """One adapter loaded into the peft model under an internal name."""

    name: str
    version: AdapterVersion
    nbytes: int
    refs: int = 0
    on_device: bool = True
    retired: bool = False


class AdapterRegistry:
    """Expert name -> loaded LoRA adapter, with validation, a device LRU and hot swap.

    ``loaded_model`` is engine.model_loader.LoadedModel (its ``model`` is wrapped in place; keep using
    ``registry.model`` afterwards; one registry per model, ``close()`` gives the model back).
    ``capacity_on_device`` counts adapters kept on the compute device.
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
        from peft.tuners.tuners_utils import BaseTunerLayer

        if any(isinstance(m, BaseTunerLayer) for m in loaded_model.model.modules()):
            raise ValueError(
                "the model already holds peft adapters: close() the previous AdapterRegistry first"
            )
        self.loaded = loaded_model
        self.store = store
        self.capacity_on_device = capacity_on_device
        self.max_rank = max_rank
        self.offload_device = torch.device(offload_device)
        self.base_model: nn.Module = loaded_model.model
        self.lock = threading.RLock()
        """Held for every forward pass and every change of the model's adapters; re-entrant."""
        self._routing = threading.local()  # .names: the adapter_names of the calling thread's current call
        self._admin = threading.Lock()  # one register/swap at a time (file checks run outside ``lock``)
        self._peft: Any = None
        self._serving: dict[Expert, _Slot] = {}
        self._slots: dict[str, _Slot] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()  # resident adapters, least recently used first
        self._seq = 0
        self._counters = dict.fromkeys(("hits", "misses", "evictions", "loads", "load_failures", "swaps"), 0)
        self.load_seconds: dict[str, float] = {}
        self._module_names = [name for name, _ in self.base_model.named_modules() if name]
        self._own_forward = self.base_model.__dict__.get("forward")
        self._lock_forward(self.base_model)

    # --- public API -------------------------------------------------------------------------------------

    @property
    def model(self) -> nn.Module:
        """What to run: the peft model once an adapter is registered, else the plain base model."""
        return self._peft if self._peft is not None else self.base_model

    @property
    def peft_model(self) -> Any:
        """The ``PeftModelForCausalLM`` holding the adapters (None before the first ``register``)."""
        return self._peft

    def call_kwargs(self, adapter_names: Sequence[str]) -> dict[str, Any]:
        """Extra kwargs for ``model(...)``/``model.generate(...)`` selecting ``adapter_names`` row by row."""
        if self._peft is None:
            if any(name != BASE_ADAPTER for name in adapter_names):
                raise AdapterError(", ".join(adapter_names), "no adapter is registered")
            return {}
        return {"adapter_names": list(adapter_names)}

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
                    self._counters["swaps"] += 1
                    old.retired = True
                    self._collect_retired()
                self._enforce_capacity(pinned={slot.name})
        log.info("expert %s serves adapter %s (%s)", expert.value, target.version, slot.name)
        return target

    def swap(self, expert: Expert | str, new_version: str) -> AdapterVersion:
        """Hot-swap ``expert`` to ``new_version``: load + validate it, re-point, retire the old one."""
        return self.register(expert, new_version)

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

    def adapter_names_for(self, experts: Sequence[Expert | str | None]) -> list[str]:
        """The internal adapter name per expert (``"__base__"`` for None), without taking a reference."""
        with self.lock:
            return [BASE_ADAPTER if e is None else self._slot_for(e).name for e in experts]

    @contextlib.contextmanager
    def use(self, experts: Sequence[Expert | str | None]) -> Iterator[list[str]]:
        """Hold the experts' current adapters (on the device) for one request; yields their names.

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
                    self._make_resident(slot, pinned={s.name for s in held})
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

    def prefetch(self, expert: Expert | str) -> None:
        """Bring the expert's adapter onto the compute device ahead of use."""
        with self.lock:
            slot = self._slot_for(expert)
            self._make_resident(slot, pinned={slot.name})

    def memory_estimate(self, expert: Expert | str) -> int:
        """Bytes the expert's adapter takes (loaded: exact; else from the serving file's tensor shapes)."""
        expert = to_expert(expert)
        with self.lock:
            slot = self._serving.get(expert)
            if slot is not None:
                return slot.nbytes
        target = self.store.serving(expert)
        if target is None:
            raise AdapterError(expert.value, "no serving version in the adapter store")
        return loaded_tensor_bytes(target)

    def serving_versions(self) -> dict[str, str]:
        """Expert name -> version served (for /status)."""
        with self.lock:
            return {e.value: s.version.version for e, s in self._serving.items()}

    def stats(self) -> dict[str, Any]:
        with self.lock:
            resident = list(self._lru)
            return {
                "capacity_on_device": self.capacity_on_device,
                "device": str(self.loaded.device),
                "offload_device": str(self.offload_device),
                "resident": resident,
                "offloaded": [n for n, s in self._slots.items() if not s.on_device],
                "bytes_on_device": sum(self._slots[n].nbytes for n in resident),
                **self._counters,
                "adapters": {
                    name: {
                        "expert": s.version.expert.value,
                        "version": s.version.version,
                        "refs": s.refs,
                        "on_device": s.on_device,
                        "retired": s.retired,
                        "bytes": s.nbytes,
                    }
                    for name, s in self._slots.items()
                },
            }

    def close(self) -> None:
        """Take every adapter out and give the base model back unchanged (tests, shutdown)."""
        with self.lock:
            if self._peft is not None:
                self._peft.unload()
                self._peft = None
            self._serving.clear()
            self._slots.clear()
            self._lru.clear()
            if self._own_forward is not None:
                self.base_model.forward = self._own_forward
            else:
                self.base_model.__dict__.pop("forward", None)

    def adapter_devices(self, name: str) -> set[torch.device]:
        """Devices holding the tensors of the internal adapter ``name`` (for checks and tests)."""
        with self.lock:
            return {p.device for p in self._adapter_tensors(name)}

    # --- loading and validation -------------------------------------------------------------------------

    def _load(self, expert: Expert, target: AdapterVersion) -> _Slot:
        started = time.perf_counter()
        try:
            files = read_adapter_files(
                target, max_rank=self.max_rank, module_names=self._module_names, base_model=self.loaded.name
            )
        except AdapterError:
            self._counters["load_failures"] += 1
            raise
        self._seq += 1
        name = f"{expert.value}-{target.version}-{self._seq}"
        created = False
        try:
            with self.lock:  # generation pauses only for the structural change, not for the trial forward
                created = self._install(name, files.config, files.weights)
            # nobody else can select the new adapter yet, so the trial forward needs no exclusive hold
            self._smoke_test(name)
        except Exception as exc:  # anything peft or torch raise: the adapter is bad, the server is fine
            with self.lock:
                self._purge(name, created)
            self._counters["load_failures"] += 1
            reason = str(exc) if isinstance(exc, _Rejected) else f"failed to load: {exc}"
            raise AdapterError(expert.value, f"{target.version}: {reason}") from exc
        with self.lock:
            slot = _Slot(name, target, sum(t.numel() * t.element_size() for t in self._adapter_tensors(name)))
            self._slots[name] = slot
            self._lru[name] = None
            self._counters["loads"] += 1
        self.load_seconds[name] = time.perf_counter() - started
        return slot

    def _install(self, name: str, config: Any, weights: dict[str, torch.Tensor]) -> bool:
        """Load the adapter into the live model; True when this created the peft model.

        On failure every trace of it is removed before raising.
        """
        from peft import PeftModelForCausalLM, set_peft_model_state_dict

        created = self._peft is None
        try:
            if created:
                self._peft = PeftModelForCausalLM(self.base_model, config, adapter_name=name)
                self._route_per_thread(self._peft)
            else:
                self._peft.add_adapter(name, config)
            try:
                result = set_peft_model_state_dict(self._peft, weights, adapter_name=name)
            except RuntimeError as exc:
                raise _Rejected(f"tensor shapes do not match the base model: {exc}") from exc
            unexpected = list(result.unexpected_keys)
            missing = [k for k in result.missing_keys if f".{name}." in k and "lora_" in k]
            if unexpected:
                raise _Rejected(f"weights for modules the config does not target: {unexpected[:3]}")
            if missing:
                raise _Rejected(f"missing weights for {len(missing)} tensors (e.g. {missing[0]})")
            self._settle()
        except BaseException:
            self._purge(name, created)
            raise
        return created

    def _smoke_test(self, name: str) -> None:
        vocab = self.base_model.get_input_embeddings().weight.shape[0]
        ids = torch.arange(4, device=self.loaded.device).remainder(vocab).unsqueeze(0)
        with torch.inference_mode():
            logits = self._peft(input_ids=ids, adapter_names=[name]).logits
        if not torch.isfinite(logits).all():
            raise _Rejected("produces non-finite logits")

    def _purge(self, name: str, created: bool) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        if self._peft is None:
            return
        if created:  # it was the only adapter: take peft out entirely
            with contextlib.suppress(Exception):
                self._peft.unload()
            self._peft = None
            self._settle_layers_only(self.base_model)
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if name in self._peft.peft_config:
                with contextlib.suppress(Exception):
                    self._peft.delete_adapter(name)
            for layer in self._peft.modules():
                if isinstance(layer, BaseTunerLayer):
                    with contextlib.suppress(Exception):
                        layer.delete_adapter(name)
        self._settle()

    def _delete(self, slot: _Slot) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "adapter was active, setting active adapter to ..."
            self._peft.delete_adapter(slot.name)
        self._slots.pop(slot.name, None)
        self._lru.pop(slot.name, None)
        self._settle()
        log.info("deleted retired adapter %s", slot.name)

    def _collect_retired(self) -> None:
        for slot in [s for s in self._slots.values() if s.retired and s.refs == 0]:
            self._delete(slot)

    def _settle(self) -> None:
        """Restore the invariants peft may have disturbed: frozen, eval mode, no layer-level active adapter."""
        self._peft.eval()
        for param in self._peft.parameters():
            param.requires_grad_(False)
        self._settle_layers_only(self._peft)
        self._hook_new_layers()
        # peft needs one model-level active adapter (its forward reads that adapter's config); after a delete
        # it derives it from the layers, which we keep empty, so name a surviving adapter ourselves.
        names = list(self._peft.peft_config)
        for holder in (self._peft, self._peft.base_model):
            current = holder.active_adapter
            if names and (not isinstance(current, str) or current not in names):
                holder.active_adapter = names[0]

    @staticmethod
    def _settle_layers_only(model: nn.Module) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        # No active adapter in any layer: every call selects adapters with adapter_names, and a layer
        # injected while a generation runs (new target modules) cannot leak its adapter into that generation.
        for layer in model.modules():
            if isinstance(layer, BaseTunerLayer):
                layer._active_adapter = []

    # --- residency (LRU on the compute device) -----------------------------------------------------------

    def _slot_for(self, expert: Expert | str) -> _Slot:
        expert = to_expert(expert)
        slot = self._serving.get(expert)
        if slot is None:
            raise AdapterError(expert.value, "no adapter is registered for this expert")
        return slot

    def _make_resident(self, slot: _Slot, pinned: set[str]) -> None:
        if slot.on_device:
            self._counters["hits"] += 1
        else:
            self._counters["misses"] += 1
            self._move(slot, to_device=True)
        self._lru[slot.name] = None
        self._lru.move_to_end(slot.name)
        self._enforce_capacity(pinned | {slot.name})

    def _enforce_capacity(self, pinned: set[str]) -> None:
        """Offload least recently used idle adapters until within capacity (in-use ones are never moved)."""
        for name in list(self._lru):
            if len(self._lru) <= self.capacity_on_device:
                break
            slot = self._slots[name]
            if name in pinned or slot.refs > 0:
                continue
            self._move(slot, to_device=False)
            self._counters["evictions"] += 1
        if len(self._lru) > self.capacity_on_device:
            log.warning(
                "%d adapters in use exceed capacity_on_device=%d", len(self._lru), self.capacity_on_device
            )

    def _move(self, slot: _Slot, to_device: bool) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for layer in self._peft.modules():
            if not isinstance(layer, BaseTunerLayer):
                continue
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

    def _adapter_tensors(self, name: str) -> list[torch.Tensor]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        tensors: list[torch.Tensor] = []
        if self._peft is None:
            return tensors
        for layer in self._peft.modules():
            if isinstance(layer, BaseTunerLayer):
                for attr in layer.adapter_layer_names:
                    container = getattr(layer, attr, None)
                    if container is not None and name in container:
                        item = container[name]
                        tensors.extend(item.parameters() if isinstance(item, nn.Module) else [item])
        return tensors

    # --- locking -----------------------------------------------------------------------------------------

    def _lock_forward(self, model: nn.Module) -> None:
        """Hold ``lock`` for each forward call of the transformer (each decoding step)."""
        inner_forward = model.forward
        lock = self.lock

        @functools.wraps(inner_forward)  # generate() inspects forward's signature
        def locked_forward(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return inner_forward(*args, **kwargs)

        model.forward = locked_forward

    def _route_per_thread(self, peft_model: Any) -> None:
        """Replace peft's per-call routing hooks by a per-thread setting read by permanent layer hooks."""
        routing = self._routing
        lock = self.lock

        @contextlib.contextmanager
        def route(*args: Any, **kwargs: Any) -> Iterator[None]:
            names = kwargs.get("adapter_names")
            if names is None:
                yield
                return
            names = list(names)
            beams = kwargs.get("num_beams")
            if isinstance(beams, int) and beams > 1:  # generate repeats every row num_beams times
                names = [n for n in names for _ in range(beams)]
            with lock:
                unknown = {n for n in names if n != BASE_ADAPTER} - set(peft_model.peft_config)
            if unknown:
                raise ValueError(
                    f"Trying to infer with non-existing adapter(s): {', '.join(sorted(unknown))}"
                )
            if peft_model.training:
                raise ValueError("Cannot pass `adapter_names` when the model is in training mode.")
            previous = getattr(routing, "names", None)
            routing.names = names
            try:
                yield
            finally:
                routing.names = previous

        peft_model._enable_peft_forward_hooks = route

    def _hook_new_layers(self) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        routing = self._routing

        def set_adapter_names(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            names = getattr(routing, "names", None)
            if names is not None:
                kwargs["adapter_names"] = names
            return args, kwargs

        for layer in self._peft.modules():
            if isinstance(layer, BaseTunerLayer) and not getattr(layer, "_hexcore_routed", False):
                layer.register_forward_pre_hook(set_adapter_names, with_kwargs=True)
                layer._hexcore_routed = True


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")
