"""Engine fixtures: the real embedded model (slow, loaded once) and a tiny random model (fast).

Both return :class:`engine.model_loader.LoadedModel` (``.model``, ``.tokenizer``, ``.device``, ``.dtype``,
``.name``, ``.source``). They are session-scoped and shared: treat them as read-only. A test that mutates a
model (wraps it in a PeftModel, trains it) takes a fresh one from ``tiny_model_factory``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.adapter_store import AdapterStore
from engine.adapters import AdapterRegistry
from engine.model_loader import LoadedModel, load_base_model, load_embedded_tokenizer
from hexcore.settings import EngineSettings
from tests.engine.adapter_helpers import PROMPT
from tests.engine.tiny_models import build_tiny_llama


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Any:
    """One intra-op thread for engine tests: on a shared 2-core machine, 2 OpenMP threads competing with other
    processes made a tiny-model ``generate`` ~50x slower (1-3 s instead of 25 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def embedded_tokenizer() -> Any:
    """SmolLM2's real tokenizer from the model cache (left padding, pad token = ``<|im_end|>``)."""
    return load_embedded_tokenizer()


@pytest.fixture(scope="session")
def base_model() -> LoadedModel:
    """The real embedded SmolLM2-135M-Instruct in bfloat16 on CPU. Tests using it must be ``@pytest.mark.slow``."""
    return load_base_model(EngineSettings(model="embedded", dtype="bfloat16"))


@pytest.fixture(scope="session")
def tiny_model_factory(embedded_tokenizer: Any) -> Callable[..., LoadedModel]:
    """Build a fresh tiny random Llama (float32, hidden 64, 2 layers, 4 heads, tied embeddings, real tokenizer).

    Same seed -> same weights. Keyword arguments go to :func:`tests.engine.tiny_models.build_tiny_llama`.
    """

    def make(**kwargs: Any) -> LoadedModel:
        kwargs.setdefault("seed", 0)
        kwargs.setdefault("dtype", torch.float32)
        return build_tiny_llama(embedded_tokenizer, **kwargs)

    return make


@pytest.fixture(scope="session")
def tiny_model(tiny_model_factory: Callable[..., LoadedModel]) -> LoadedModel:
    """One shared tiny random Llama (seed 0, float32): fast plumbing tests. Read-only."""
    return tiny_model_factory()


# --- the adapter tests (test_adapters.py, test_adapter_residency.py, test_peft_routing.py) ------------------


@pytest.fixture
def loaded(tiny_model_factory: Callable[..., LoadedModel]) -> LoadedModel:
    """A fresh tiny model of the test's own (the registry wraps it in peft)."""
    return tiny_model_factory()


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    return AdapterStore(tmp_path / "adapters")


@pytest.fixture
def registry(loaded: LoadedModel, store: AdapterStore) -> Iterator[AdapterRegistry]:
    registry = AdapterRegistry(loaded, store, capacity_on_device=5, max_rank=16)
    yield registry
    registry.close()


@pytest.fixture
def base_logits(loaded: LoadedModel) -> torch.Tensor:
    """The plain model's logits of ``adapter_helpers.PROMPT`` (before any adapter)."""
    with torch.inference_mode():
        return loaded.model(input_ids=PROMPT).logits[0]


# The worker test kit's fixtures (tests/engine/spell_runner.py), for test_worker*.py.
from tests.engine.spell_runner import make_worker, spell  # noqa: E402, F401
