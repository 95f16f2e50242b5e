"""Memory accounting: what the model holds, what each engine component holds, and a leak check for tests.

Components (KV sessions, adapter registry, caches) register a size callback and optionally a reset hook
on one :class:`MemoryLedger`; ``report()`` gives per-component bytes plus process RSS (and CUDA when
present), which ``/status`` and the benchmarks show. :func:`leak_check` counts live tensors and RSS around
a block of repeated work and fails when they keep growing.
"""

from __future__ import annotations

import gc
import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psutil
import torch

log = logging.getLogger(__name__)

MiB = 2**20
_LORA_PARAM = re.compile(r"\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)\.([^.]+)(?:\.|$)")


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def component_bytes(model: torch.nn.Module) -> dict[str, Any]:
    """Bytes a model holds, split as ``{"weights": {dtype: bytes}, "lora": {adapter: bytes}, "buffers": bytes,
    "total": bytes}``.

    LoRA parameters (a PeftModel, or peft layers injected in place) are counted per adapter and not in
    ``weights``. Tied parameters count once. Quantized weights count their packed storage (bitsandbytes'
    small per-block scales live outside the parameters and are not included).
    """
    weights: dict[str, int] = {}
    lora: dict[str, int] = {}
    for name, param in model.named_parameters():  # deduplicates tied parameters
        match = _LORA_PARAM.search(name)
        if match:
            lora[match.group(1)] = lora.get(match.group(1), 0) + _nbytes(param)
        else:
            key = str(param.dtype).removeprefix("torch.")
            weights[key] = weights.get(key, 0) + _nbytes(param)
    buffers = sum(_nbytes(b) for _, b in model.named_buffers())
    total = sum(weights.values()) + sum(lora.values()) + buffers
    return {"weights": weights, "lora": lora, "buffers": buffers, "total": total}


@dataclass(slots=True)
class _Entry:
    size: Callable[[], int]
    reset: Callable[[], None] | None


class MemoryLedger:
    """Named size callbacks (``ledger.register("kv_sessions", lambda: store.bytes)``) and reset hooks.

    Thread-safe: components register from wherever they are built; the engine reports from its worker.
    A failing callback is logged and reported as -1 so one broken component cannot hide the others.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def register(self, name: str, size: Callable[[], int], reset: Callable[[], None] | None = None) -> None:
        """Add (or replace) a component; ``reset`` is called by :meth:`reset_caches`."""
        with self._lock:
            self._entries[name] = _Entry(size, reset)

    def register_model(self, name: str, model: torch.nn.Module) -> None:
        """Track a model's parameters + buffers (LoRA adapters included)."""
        self.register(name, lambda: component_bytes(model)["total"])

    def unregister(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)

    @property
    def names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def report(self) -> dict[str, int]:
        """Bytes per component, their ``total``, ``process_rss``, and ``cuda_allocated``/``cuda_reserved``."""
        with self._lock:
            entries = list(self._entries.items())
        out: dict[str, int] = {}
        for name, entry in entries:
            try:
                out[name] = int(entry.size())
            except Exception:
                log.exception("memory size callback %r failed", name)
                out[name] = -1
        out["total"] = sum(v for v in out.values() if v > 0)
        out["process_rss"] = process_rss()
        if torch.cuda.is_available():
            out["cuda_allocated"] = torch.cuda.memory_allocated()
            out["cuda_reserved"] = torch.cuda.memory_reserved()
        return out

    def reset_caches(self) -> None:
        """Call every reset hook, then collect garbage and hand cached CUDA blocks back to the driver."""
        with self._lock:
            hooks = [(n, e.reset) for n, e in self._entries.items() if e.reset is not None]
        for name, hook in hooks:
            try:
                hook()
            except Exception:
                log.exception("reset hook %r failed", name)
        reset_caches()


def reset_caches(ledger: MemoryLedger | None = None) -> None:
    """``gc.collect()`` and ``torch.cuda.empty_cache()``; with a ledger, its reset hooks first."""
    if ledger is not None:
        ledger.reset_caches()
        return
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def process_rss() -> int:
    return psutil.Process().memory_info().rss


# --- leak checking -------------------------------------------------------------------------------------


class MemoryLeakError(AssertionError):
    """Live tensors or RSS grew beyond tolerance across repeated work."""


@dataclass(slots=True)
class MemorySnapshot:
    tensors: int
    tensor_bytes: int
    rss: int

    @classmethod
    def take(cls) -> MemorySnapshot:
        gc.collect()
        count, storages = 0, {}
        for obj in gc.get_objects():
            try:
                # type(), not isinstance(): isinstance reads __class__, which some lazy modules turn into warnings
                if not issubclass(type(obj), torch.Tensor):
                    continue
                count += 1
                storage = obj.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
            except Exception:  # meta/sparse tensors without storage, or objects that lie about their type
                continue
        return cls(tensors=count, tensor_bytes=sum(storages.values()), rss=process_rss())


@dataclass(slots=True)
class LeakReport:
    """Filled in when the ``leak_check`` block exits: growth from before to after."""

    before: MemorySnapshot | None = None
    after: MemorySnapshot | None = None

    @property
    def new_tensors(self) -> int:
        return self.after.tensors - self.before.tensors if self.after and self.before else 0

    @property
    def rss_growth(self) -> int:
        return self.after.rss - self.before.rss if self.after and self.before else 0


@contextmanager
def leak_check(
    *, max_new_tensors: int = 16, max_rss_growth: int = 64 * MiB, label: str = "block"
) -> Iterator[LeakReport]:
    """Fail if the block leaves more than ``max_new_tensors`` extra live tensors or grows RSS by more than
    ``max_rss_growth`` bytes.

    Put N repetitions of the work inside the block (after a warm-up outside it, so one-time caches and
    allocator pools are already there): a leak grows with N, steady-state work does not. RSS is coarse
    (the allocator keeps freed pages), hence a tolerance; the tensor count is exact.
    """
    report = LeakReport(before=MemorySnapshot.take())
    yield report
    report.after = MemorySnapshot.take()
    problems = []
    if report.new_tensors > max_new_tensors:
        grown = (report.after.tensor_bytes - report.before.tensor_bytes) / MiB
        problems.append(
            f"{report.new_tensors} more live tensors (+{grown:.1f} MiB), tolerance {max_new_tensors}"
        )
    if report.rss_growth > max_rss_growth:
        problems.append(
            f"RSS grew {report.rss_growth / MiB:.1f} MiB, tolerance {max_rss_growth / MiB:.0f} MiB"
        )
    if problems:
        raise MemoryLeakError(f"memory leak in {label}: " + "; ".join(problems))


def assert_no_leak(
    work: Callable[[], Any], *, repetitions: int = 20, warmup: int = 2, **tolerances: Any
) -> LeakReport:
    """Run ``work`` ``warmup`` times, then ``repetitions`` times inside :func:`leak_check`."""
    for _ in range(warmup):
        work()
    with leak_check(label=getattr(work, "__name__", "work"), **tolerances) as report:
        for _ in range(repetitions):
            work()
    return report
