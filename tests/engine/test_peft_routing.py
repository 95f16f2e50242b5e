"""engine.peft_routing: adapter_names per thread through peft's one private hook, and the forward lock."""

from __future__ import annotations

import threading

import pytest
import torch
from peft import LoraConfig, get_peft_model

from engine.adapter_store import AdapterStore
from engine.adapters import AdapterRegistry
from engine.api import Expert
from engine.model_loader import LoadedModel
from engine.peft_routing import BASE_ADAPTER, ThreadRouting, lock_forward, lora_layers, route_per_thread
from tests.engine.adapter_helpers import PROMPT, adapter_names, greedy, save_adapter


def test_peft_enters_the_replaced_private_hook_on_forward_and_generate(loaded: LoadedModel) -> None:
    """Fails if peft stops routing forward/generate through ``_enable_peft_forward_hooks`` (engine.peft_routing
    then needs another way in: see its docstring)."""
    config = LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)
    peft_model = get_peft_model(loaded.model, config, adapter_name="first")
    peft_model.add_adapter("second", config)
    peft_model.eval()
    routing = ThreadRouting(threading.RLock())
    route_per_thread(peft_model, routing)
    routing.hook_layers(peft_model)
    layer = next(lora_layers(peft_model))
    seen: list[object] = []
    layer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("adapter_names")), with_kwargs=True
    )
    try:
        with torch.inference_mode():
            peft_model(input_ids=PROMPT.repeat(2, 1), adapter_names=["first", BASE_ADAPTER])
            assert seen == [["first", BASE_ADAPTER]] and routing.current is None
            peft_model.generate(
                input_ids=PROMPT.repeat(2, 1),
                attention_mask=torch.ones(2, PROMPT.shape[1], dtype=torch.long),
                max_new_tokens=2,
                adapter_names=["second", "first"],
                pad_token_id=loaded.tokenizer.pad_token_id,
            )
        assert seen[1:] == [["second", "first"]] * 2  # prefill and one decoding step
        assert routing.current is None
    finally:
        peft_model.unload()


def test_lock_forward_holds_the_lock_and_undoes(loaded: LoadedModel) -> None:
    lock = threading.RLock()
    free: list[bool] = []

    def probe() -> None:  # from another thread: can the lock be taken right now?
        if lock.acquire(blocking=False):
            lock.release()
            free.append(True)
        else:
            free.append(False)

    def check(*_: object) -> None:
        thread = threading.Thread(target=probe)
        thread.start()
        thread.join()

    unlock = lock_forward(loaded.model, lock)
    handle = loaded.model.model.register_forward_pre_hook(check)
    try:
        with torch.inference_mode():
            loaded.model(input_ids=PROMPT)
        assert free == [False]  # held during the forward
    finally:
        handle.remove()
        unlock()
    assert "forward" not in loaded.model.__dict__


def test_a_failed_call_leaves_no_routing_behind(
    registry: AdapterRegistry, store: AdapterStore, tiny_model_factory, base_logits: torch.Tensor
) -> None:
    save_adapter(tiny_model_factory, store, Expert.TEACH, seed=3)
    registry.register(Expert.TEACH, "v0")
    name = adapter_names(registry)[Expert.TEACH]
    with pytest.raises(ValueError, match="adapter_names"), torch.inference_mode():
        registry.model(input_ids=PROMPT.repeat(2, 1), adapter_names=[name])  # wrong length: peft raises
    with torch.inference_mode():
        # peft alone would keep the failed call's hooks and force [name] onto these calls
        torch.testing.assert_close(registry.model(input_ids=PROMPT).logits[0], base_logits)
        three = registry.model(input_ids=PROMPT.repeat(3, 1), adapter_names=[name, BASE_ADAPTER, name]).logits
    torch.testing.assert_close(three[1], base_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(three[0], three[2])
    with pytest.raises(ValueError, match="non-existing"), torch.inference_mode():
        registry.model(input_ids=PROMPT, adapter_names=["nobody-v9-9"])


def test_threads_generating_at_once_each_get_their_adapters(
    registry: AdapterRegistry, store: AdapterStore, tiny_model_factory, loaded: LoadedModel
) -> None:
    for i, expert in enumerate((Expert.REASON, Expert.TEACH)):
        registry.register(expert, save_adapter(tiny_model_factory, store, expert, seed=40 + i).version)
    jobs = {"a": [Expert.REASON, Expert.REASON], "b": [Expert.TEACH, None], "c": [None, Expert.REASON]}
    prompt = PROMPT.repeat(2, 1)

    def run(experts: list) -> torch.Tensor:
        with registry.use(experts) as names:
            return greedy(registry, names, prompt, 8)

    expected = {key: run(experts) for key, experts in jobs.items()}
    assert not torch.equal(expected["a"], expected["b"])
    results: dict[str, list[torch.Tensor]] = {key: [] for key in jobs}
    errors: list[BaseException] = []

    def worker(key: str) -> None:
        try:
            for _ in range(3):
                results[key].append(run(jobs[key]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(key,)) for key in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for key, outputs in results.items():
        assert len(outputs) == 3 and all(torch.equal(out, expected[key]) for out in outputs)
