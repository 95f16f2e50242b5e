"""The served model and the peft wrapper around it: the one place that wraps, changes and unwraps it.

peft needs a first adapter to build a ``PeftModelForCausalLM``: registering the first adapter wraps the base
model, so the model to run changes identity. :class:`PeftHost` does that (and the undo when the first
adapter fails, or on ``close``) in :meth:`PeftHost._set_peft`, which bumps :attr:`PeftHost.model_generation`:
whoever holds the model compares that number (or ``model`` by identity) to know when to take the new one.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from engine.peft_routing import ThreadRouting, deactivate_layers, lock_forward, lora_layers, route_per_thread

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModelForCausalLM


class Rejected(Exception):
    """An adapter failed a check while loading into the live model (the registry makes it an ``AdapterError``)."""


class PeftHost:
    """The base model, its peft wrapper once an adapter is loaded, and the lock every forward pass holds."""

    def __init__(self, base_model: nn.Module, device: torch.device) -> None:
        if any(True for _ in lora_layers(base_model)):
            raise ValueError(
                "the model already holds peft adapters: close() the previous AdapterRegistry first"
            )
        self.base_model = base_model
        self.device = device
        self.lock = threading.RLock()
        """Held for every forward pass and every change of the model's adapters; re-entrant."""
        self.routing = ThreadRouting(self.lock)
        self.peft: PeftModelForCausalLM | None = None
        self.model_generation = 0
        """Bumped each time :attr:`model` changes identity (first adapter wraps, last failure or close unwraps)."""
        self._unlock_forward = lock_forward(base_model, self.lock)

    @property
    def model(self) -> nn.Module:
        """What to run: the peft model once an adapter is loaded, else the plain base model."""
        return self.peft if self.peft is not None else self.base_model

    def _set_peft(self, peft: PeftModelForCausalLM | None) -> None:
        self.peft = peft
        self.model_generation += 1

    # --- loading ----------------------------------------------------------------------------------------

    def install(self, name: str, config: LoraConfig, weights: dict[str, torch.Tensor]) -> bool:
        """Load the adapter into the live model (call under ``lock``); True when this created the peft model.

        Raises ``Rejected`` (or what peft raises) after removing every trace of it.
        """
        from peft import PeftModelForCausalLM, set_peft_model_state_dict

        created = self.peft is None
        try:
            if self.peft is None:
                self._set_peft(PeftModelForCausalLM(self.base_model, config, adapter_name=name))
                route_per_thread(self.peft, self.routing)
            else:
                self.peft.add_adapter(name, config)
            try:
                result = set_peft_model_state_dict(self.peft, weights, adapter_name=name)
            except RuntimeError as exc:
                raise Rejected(f"tensor shapes do not match the base model: {exc}") from exc
            unexpected = list(result.unexpected_keys)
            missing = [k for k in result.missing_keys if f".{name}." in k and "lora_" in k]
            if unexpected:
                raise Rejected(f"weights for modules the config does not target: {unexpected[:3]}")
            if missing:
                raise Rejected(f"missing weights for {len(missing)} tensors (e.g. {missing[0]})")
            self.settle()
        except BaseException:
            self.purge(name, created)
            raise
        return created

    def smoke_test(self, name: str) -> None:
        """One short forward with adapter ``name``; ``Rejected`` when its logits are not finite."""
        assert self.peft is not None
        vocab = self.base_model.get_input_embeddings().weight.shape[0]
        ids = torch.arange(4, device=self.device).remainder(vocab).unsqueeze(0)
        with torch.inference_mode():
            logits = self.peft(input_ids=ids, adapter_names=[name]).logits
        if not torch.isfinite(logits).all():
            raise Rejected("produces non-finite logits")

    # --- removing ---------------------------------------------------------------------------------------

    def purge(self, name: str, created: bool) -> None:
        """Remove a half-loaded adapter (``created``: it was the first, so take peft out entirely)."""
        if self.peft is None:
            return
        if created:
            with contextlib.suppress(Exception):
                self.peft.unload()
            self._set_peft(None)
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if name in self.peft.peft_config:
                with contextlib.suppress(Exception):
                    self.peft.delete_adapter(name)
            for layer in lora_layers(self.peft):
                with contextlib.suppress(Exception):
                    layer.delete_adapter(name)
        self.settle()

    def delete(self, name: str) -> None:
        """Delete a loaded adapter (call under ``lock``)."""
        assert self.peft is not None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "adapter was active, setting active adapter to ..."
            self.peft.delete_adapter(name)
        self.settle()

    def close(self) -> None:
        """Take every adapter out and give the base model back unchanged."""
        if self.peft is not None:
            self.peft.unload()
            self._set_peft(None)
        self._unlock_forward()

    # --- invariants -------------------------------------------------------------------------------------

    def settle(self) -> None:
        """Restore the invariants peft may have disturbed: frozen, eval mode, no layer-level active adapter,
        every LoRA layer routed per thread."""
        assert self.peft is not None
        self.peft.eval()
        for param in self.peft.parameters():
            param.requires_grad_(False)
        deactivate_layers(self.peft)
        self.routing.hook_layers(self.peft)
        # peft needs one model-level active adapter (its forward reads that adapter's config); after a delete
        # it derives it from the layers, which we keep empty, so name a surviving adapter ourselves.
        names = list(self.peft.peft_config)
        for holder in (self.peft, self.peft.base_model):
            current = holder.active_adapter
            if names and (not isinstance(current, str) or current not in names):
                holder.active_adapter = names[0]

    def adapter_tensors(self, name: str) -> list[torch.Tensor]:
        """The tensors of adapter ``name`` in every LoRA layer."""
        tensors: list[torch.Tensor] = []
        if self.peft is None:
            return tensors
        for layer in lora_layers(self.peft):
            for attr in layer.adapter_layer_names:
                container = getattr(layer, attr, None)
                if container is not None and name in container:
                    item = container[name]
                    tensors.extend(item.parameters() if isinstance(item, nn.Module) else [item])
        return tensors
