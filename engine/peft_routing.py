"""Per-thread adapter routing for a peft model, and the forward lock of the served model.

peft routes ``adapter_names`` (one adapter per batch row) by registering a pre-hook on every LoRA layer for
the duration of one call (``LoraModel._enable_peft_forward_hooks``). Two threads generating at once
overwrite each other's hooks, and an exception leaks them into later calls. peft has no public API for
this, so :func:`route_per_thread` replaces that one private context manager on the ``PeftModel`` instance:
the call's ``adapter_names`` go into a thread-local, and one permanent pre-hook per LoRA layer
(:meth:`ThreadRouting.hook_layers`) hands them to the layer. It is the only place that touches peft's
private API; tests/engine/test_peft_routing.py fails if peft stops calling it.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

BASE_ADAPTER = "__base__"
"""peft's name for 'no adapter' in ``adapter_names``."""


def lora_layers(model: nn.Module) -> Iterator[BaseTunerLayer]:
    """Every peft tuner layer (LoRA layer) inside ``model``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            yield module


def deactivate_layers(model: nn.Module) -> None:
    """No active adapter in any layer (peft's public ``set_adapter([])``), all adapters frozen.

    Every call selects adapters with ``adapter_names``, so a call without them computes the base model, and a
    layer injected while a generation runs (new target modules) cannot leak its adapter into that generation.
    """
    for layer in lora_layers(model):
        layer.set_adapter([], inference_mode=True)


def lock_forward(model: nn.Module, lock: threading.RLock) -> Callable[[], None]:
    """Hold ``lock`` for each forward call of ``model`` (each decoding step); returns the undo function."""
    own_forward = model.__dict__.get("forward")
    inner_forward = model.forward

    @functools.wraps(inner_forward)  # generate() inspects forward's signature
    def locked_forward(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return inner_forward(*args, **kwargs)

    model.forward = locked_forward

    def unlock() -> None:
        if own_forward is not None:
            model.forward = own_forward
        else:
            model.__dict__.pop("forward", None)

    return unlock


class ThreadRouting:
    """The ``adapter_names`` of each thread's current call, read by one permanent hook per LoRA layer."""

    def __init__(self, lock: threading.RLock) -> None:
        self.lock = lock
        """Held while checking the names against the model's adapters (the set changes under it)."""
        self._local = threading.local()  # .names: the adapter_names of the calling thread's current call
        self._hooked: weakref.WeakSet[nn.Module] = weakref.WeakSet()

    @property
    def current(self) -> list[str] | None:
        """The calling thread's ``adapter_names`` (None outside a call that passed them)."""
        return getattr(self._local, "names", None)

    @contextlib.contextmanager
    def route(self, peft_model: PeftModel, **kwargs: Any) -> Iterator[None]:
        """What peft's per-call hook context does, checks included, but per thread and leak-free."""
        names = kwargs.get("adapter_names")
        if names is None:
            yield
            return
        names = list(names)
        beams = kwargs.get("num_beams")
        if isinstance(beams, int) and beams > 1:  # generate repeats every row num_beams times
            names = [n for n in names for _ in range(beams)]
        with self.lock:
            unknown = {n for n in names if n != BASE_ADAPTER} - set(peft_model.peft_config)
        if unknown:
            raise ValueError(f"Trying to infer with non-existing adapter(s): {', '.join(sorted(unknown))}")
        if peft_model.training:
            raise ValueError("Cannot pass `adapter_names` when the model is in training mode.")
        previous = self.current
        self._local.names = names
        try:
            yield
        finally:
            self._local.names = previous

    def hook_layers(self, model: nn.Module) -> None:
        """Give every LoRA layer not hooked yet the pre-hook that passes the thread's ``adapter_names``."""

        def set_adapter_names(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            names = self.current
            if names is not None:
                kwargs["adapter_names"] = names
            return args, kwargs

        for layer in lora_layers(model):
            if layer not in self._hooked:
                layer.register_forward_pre_hook(set_adapter_names, with_kwargs=True)
                self._hooked.add(layer)


def route_per_thread(peft_model: PeftModel, routing: ThreadRouting) -> None:
    """Replace peft's private per-call routing (``_enable_peft_forward_hooks``) by ``routing``.

    peft 0.21 enters ``self._enable_peft_forward_hooks(*args, **kwargs)`` around every ``forward`` and
    ``generate`` of a ``PeftModel``; an instance attribute of that name takes precedence over the method.
    """

    @contextlib.contextmanager
    def route(*args: Any, **kwargs: Any) -> Iterator[None]:
        with routing.route(peft_model, **kwargs):
            yield

    peft_model._enable_peft_forward_hooks = route
