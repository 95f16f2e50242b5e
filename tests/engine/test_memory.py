"""Memory accounting: component sizes (with LoRA), the ledger, reset hooks, and the leak check."""

from __future__ import annotations

import pytest
import torch

from engine.memory import (
    MemoryLeakError,
    MemoryLedger,
    MiB,
    assert_no_leak,
    component_bytes,
    leak_check,
    reset_caches,
)

_LEAKED: list = []


@pytest.fixture(autouse=True)
def _forget_leaks():
    yield
    _LEAKED.clear()


def test_component_bytes_of_the_tiny_model_counts_tied_weights_once(tiny_model) -> None:
    sizes = component_bytes(tiny_model.model)
    params = {id(p): p for p in tiny_model.model.parameters()}.values()
    expected = sum(p.numel() * 4 for p in params)
    assert sizes["weights"] == {"float32": expected}
    assert sizes["lora"] == {}
    assert sizes["buffers"] > 0  # rotary inv_freq
    assert sizes["total"] == expected + sizes["buffers"]


def test_component_bytes_separates_lora_adapters(tiny_model_factory) -> None:
    from peft import LoraConfig, get_peft_model

    base = tiny_model_factory().model
    plain = component_bytes(base)["weights"]["float32"]
    peft_model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), adapter_name="reason"
    )
    peft_model.add_adapter("explain", LoraConfig(r=2, target_modules=["q_proj"]))
    sizes = component_bytes(peft_model)
    hidden, kv_out, layers = 64, 32, 2  # tiny model: hidden 64, 2 kv heads x 16
    reason = layers * 4 * ((hidden + hidden) + (hidden + kv_out)) * 4
    explain = layers * 2 * (hidden + hidden) * 4
    assert sizes["lora"] == {"reason": reason, "explain": explain}
    assert sizes["weights"]["float32"] == plain  # base weights unchanged, LoRA not double-counted


def test_component_bytes_by_dtype(tiny_model_factory) -> None:
    model = tiny_model_factory(dtype=torch.bfloat16).model
    sizes = component_bytes(model)
    assert list(sizes["weights"]) == ["bfloat16"]
    assert sizes["weights"]["bfloat16"] == sum(p.numel() * 2 for p in model.parameters())


def test_ledger_reports_components_and_process_memory(tiny_model) -> None:
    store = {"bytes": 1000}
    ledger = MemoryLedger()
    ledger.register("kv_sessions", lambda: store["bytes"])
    ledger.register_model("base_model", tiny_model.model)
    report = ledger.report()
    assert report["kv_sessions"] == 1000
    assert report["base_model"] == component_bytes(tiny_model.model)["total"]
    assert report["total"] == 1000 + report["base_model"]
    assert report["process_rss"] > report["base_model"]
    store["bytes"] = 5
    assert ledger.report()["kv_sessions"] == 5  # callbacks are live, not snapshots
    ledger.unregister("kv_sessions")
    assert "kv_sessions" not in ledger.report()


def test_a_broken_size_callback_does_not_hide_the_others() -> None:
    ledger = MemoryLedger()
    ledger.register("broken", lambda: 1 // 0)
    ledger.register("fine", lambda: 7)
    report = ledger.report()
    assert report["broken"] == -1 and report["fine"] == 7 and report["total"] == 7


def test_reset_caches_calls_every_hook_even_after_one_fails() -> None:
    calls: list[str] = []
    cache = [torch.zeros(10)]
    ledger = MemoryLedger()
    ledger.register("bad", lambda: 0, reset=lambda: 1 // 0)
    ledger.register(
        "cache", lambda: sum(t.numel() * 4 for t in cache), reset=lambda: (cache.clear(), calls.append("c"))
    )
    assert ledger.report()["cache"] == 40
    reset_caches(ledger)
    assert calls == ["c"] and ledger.report()["cache"] == 0


def test_a_real_tensor_leak_is_caught() -> None:
    def leaky_step() -> None:
        _LEAKED.append(torch.ones(1024))

    with pytest.raises(MemoryLeakError, match="more live tensors"):
        assert_no_leak(leaky_step, repetitions=40)


def test_an_rss_leak_outside_torch_is_caught() -> None:
    with pytest.raises(MemoryLeakError, match="RSS grew"):
        with leak_check(max_rss_growth=64 * MiB):
            for _ in range(8):  # 512 MiB against a 64 MiB limit: robust to memory freed meanwhile
                # 64 MiB blocks are above glibc's largest mmap threshold, so they get fresh (touched) pages
                # rather than reusing heap space freed by earlier tests.
                _LEAKED.append(b"\x01" * (64 * MiB))


def test_steady_work_that_frees_its_tensors_passes() -> None:
    report = assert_no_leak(lambda: torch.ones(4096).sum(), repetitions=50)
    assert report.new_tensors <= 16 and report.after is not None


def test_repeated_generation_with_the_tiny_model_is_not_flagged(tiny_model) -> None:
    enc = tiny_model.tokenizer(["one prompt", "another, longer prompt"], return_tensors="pt", padding=True)

    def generate() -> None:
        with torch.inference_mode():
            tiny_model.model.generate(**enc, max_new_tokens=4)

    report = assert_no_leak(generate, repetitions=8, warmup=2)
    assert report.new_tensors <= 16
