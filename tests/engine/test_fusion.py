"""Cross-expert attention: the module itself, the one-batch expert run, fused logits and fused generation."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from engine.adapter_store import AdapterStore, ensure_initial_adapters
from engine.adapters import AdapterRegistry
from engine.api import Expert
from engine.fusion import (
    FUSION_CONFIG,
    CrossExpertAttention,
    expert_hidden_states,
    expert_index,
    fused_logits,
    generate_fused,
)
from engine.model_loader import LoadedModel, load_base_model
from hexcore.settings import EngineSettings

TRAINED = (Expert.REASON, Expert.EXPLAIN, Expert.TEACH)

# --- the module alone ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("batch", "steps"), [(1, 1), (3, 7)])
def test_shapes_dtypes_and_convex_combination(k: int, dtype: torch.dtype, batch: int, steps: int) -> None:
    torch.manual_seed(k)
    fusion = CrossExpertAttention(16)
    with torch.no_grad():
        fusion.score.normal_()
        fusion.expert_bias.normal_()
    hidden = torch.randn(k, batch, steps, 16).to(dtype)
    out = fusion(hidden, expert_ids=list(range(k)))
    assert out.shape == (batch, steps, 16) and out.dtype == dtype
    if k == 1:
        assert torch.equal(out, hidden[0])
        return
    weights = fusion.attention_weights(hidden, list(range(k)))
    assert weights.shape == (k, batch, steps) and weights.dtype == torch.float32
    torch.testing.assert_close(weights.sum(0), torch.ones(batch, steps))
    assert len({round(float(w), 4) for w in weights.detach()[:, 0, 0]}) > 1  # non-uniform once trained
    lo, hi = hidden.float().min(0).values, hidden.float().max(0).values
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert bool(((out.float() >= lo - tol) & (out.float() <= hi + tol)).all())  # a convex mix per element


def test_untrained_fusion_averages_and_bias_selects_an_expert() -> None:
    fusion = CrossExpertAttention(8)
    hidden = torch.randn(3, 2, 4, 8)
    torch.testing.assert_close(fusion(hidden), hidden.mean(0))
    with torch.no_grad():
        fusion.expert_bias[expert_index(Expert.PREDICT)] = 50.0
    ids = [expert_index(e) for e in (Expert.REASON, Expert.PREDICT, Expert.TEACH)]
    torch.testing.assert_close(fusion(hidden, ids), hidden[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fusion(hidden), hidden.mean(0))  # no ids: no bias


def test_bad_inputs_are_rejected() -> None:
    fusion = CrossExpertAttention(8, n_experts_max=5)
    with pytest.raises(ValueError, match="K=6"):
        fusion(torch.randn(6, 1, 2, 8))
    with pytest.raises(ValueError, match="hidden states"):
        fusion(torch.randn(2, 1, 2, 9))
    with pytest.raises(ValueError, match="one id per expert"):
        fusion(torch.randn(2, 1, 2, 8), expert_ids=[0])


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    fusion = CrossExpertAttention(12)
    with torch.no_grad():
        fusion.score.normal_()
        fusion.expert_bias.copy_(torch.arange(5.0))
    fusion.save(tmp_path / "fusion")
    loaded = CrossExpertAttention.load(tmp_path / "fusion")
    hidden = torch.randn(4, 2, 3, 12)
    torch.testing.assert_close(loaded(hidden, [0, 1, 2, 3]), fusion(hidden, [0, 1, 2, 3]), rtol=0, atol=0)
    assert json.loads((tmp_path / "fusion" / FUSION_CONFIG).read_text())["hidden_size"] == 12

    # a file saved with another expert order is re-indexed by name
    config = json.loads((tmp_path / "fusion" / FUSION_CONFIG).read_text())
    config["expert_order"] = list(reversed(config["expert_order"]))
    (tmp_path / "fusion" / FUSION_CONFIG).write_text(json.dumps(config))
    reordered = CrossExpertAttention.load(tmp_path / "fusion")
    assert reordered.expert_bias.tolist() == [4.0, 3.0, 2.0, 1.0, 0.0]


# --- with a peft model holding several adapters -------------------------------------------------------------


def _serve(
    loaded: LoadedModel, store: AdapterStore, factory: Callable[..., LoadedModel] | None
) -> AdapterRegistry:
    """v0 (no-op) for every expert; random 'trained' adapters for TRAINED (needs ``factory``)."""
    ensure_initial_adapters(loaded, store)
    if factory is not None:
        for seed, expert in enumerate(TRAINED):
            torch.manual_seed(100 + seed)
            config = LoraConfig(
                r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
            )
            peft_model = get_peft_model(factory(dtype=loaded.dtype).model, config)
            store.promote(expert, store.save_new(expert, peft_model, {"base_model": loaded.name}).version)
    registry = AdapterRegistry(loaded, store, capacity_on_device=5)
    assert registry.register_serving() == {}
    return registry


@pytest.fixture(scope="module")
def served(tiny_model_factory, tmp_path_factory) -> Iterator[AdapterRegistry]:
    registry = _serve(
        tiny_model_factory(), AdapterStore(tmp_path_factory.mktemp("fusion")), tiny_model_factory
    )
    yield registry
    registry.close()


@pytest.fixture(scope="module")
def prompts(embedded_tokenizer) -> dict[str, torch.Tensor]:
    batch = embedded_tokenizer(
        ["When does a creature with haste attack?", "Explain trample."], return_tensors="pt", padding=True
    )
    assert embedded_tokenizer.padding_side == "left" and batch["attention_mask"][1, 0] == 0  # left padding
    return dict(batch)


def test_mixed_batch_hidden_states_equal_one_by_one(served: AdapterRegistry, prompts) -> None:
    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    with served.use(TRAINED) as names, torch.inference_mode():
        hidden, _ = expert_hidden_states(served.model, ids, mask, names)
        assert hidden.shape == (3, 2, ids.shape[1], 64)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        for k, name in enumerate(names):
            single = served.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                adapter_names=[name] * 2,
                output_hidden_states=True,
            ).hidden_states[-1]
            torch.testing.assert_close(hidden[k], single, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(hidden[0], hidden[1], atol=1e-3)


def test_single_expert_fused_logits_equal_the_adapters_logits(served: AdapterRegistry, prompts) -> None:
    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    fusion = CrossExpertAttention(64)
    with served.use([Expert.EXPLAIN]) as names, torch.inference_mode():
        fused = fused_logits(served.model, ids, mask, names, fusion, experts=[Expert.EXPLAIN])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        plain = served.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, adapter_names=names * 2
        )
    torch.testing.assert_close(fused, plain.logits, rtol=1e-4, atol=1e-4)


def test_gradients_reach_only_the_fusion(served: AdapterRegistry, prompts) -> None:
    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    fusion = CrossExpertAttention(64)
    optimizer = torch.optim.SGD(fusion.parameters(), lr=1.0)
    with served.use(TRAINED[:2]) as names:
        logits = fused_logits(served.model, ids, mask, names, fusion, experts=TRAINED[:2])
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        assert fusion.score.grad is not None and fusion.score.grad.abs().sum() > 0
        bias_grad = fusion.expert_bias.grad
        assert bias_grad[expert_index(TRAINED[0])] != 0 and bias_grad[expert_index(Expert.RETROSPECT)] == 0
        assert all(p.grad is None and not p.requires_grad for p in served.model.parameters())
        optimizer.step()
        with torch.no_grad():
            after = fused_logits(served.model, ids, mask, names, fusion, experts=TRAINED[:2])
            later = torch.nn.functional.cross_entropy(after[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert later < loss  # one step on the fusion alone lowers the loss


def test_generate_fused_single_expert_equals_generate(
    served: AdapterRegistry, prompts, embedded_tokenizer
) -> None:
    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    with served.use([Expert.TEACH]) as names, torch.inference_mode():
        fused = generate_fused(
            served.model, ids, mask, names, CrossExpertAttention(64), max_new_tokens=8, eos_token_id=None
        )
        reference = served.model.generate(
            input_ids=ids,
            attention_mask=mask,
            adapter_names=names * 2,
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=embedded_tokenizer.pad_token_id,
        )
    assert torch.equal(fused, reference[:, ids.shape[1] :])


def test_generate_fused_with_cache_matches_recomputing(served: AdapterRegistry, prompts) -> None:
    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    fusion = CrossExpertAttention(64)
    with torch.no_grad():
        fusion.score.normal_(std=0.5)
        fusion.expert_bias.normal_()
    streamed: list[list[int]] = []
    with served.use(TRAINED) as names, torch.inference_mode():
        tokens = generate_fused(
            served.model,
            ids,
            mask,
            names,
            fusion,
            max_new_tokens=6,
            experts=TRAINED,
            on_token=lambda t: streamed.append(t.tolist()),
        )
        # greedy with no cache: recompute the whole fused forward for every new token
        seq, seq_mask, expected = ids, mask, []
        for _ in range(6):
            nxt = fused_logits(served.model, seq, seq_mask, names, fusion, experts=TRAINED)[:, -1].argmax(-1)
            expected.append(nxt)
            seq = torch.cat([seq, nxt[:, None]], 1)
            seq_mask = torch.cat([seq_mask, torch.ones_like(nxt)[:, None]], 1)
    assert torch.equal(tokens, torch.stack(expected, 1))
    assert streamed == tokens.T.tolist()


def test_generate_fused_stops_at_eos_and_on_cancel(served: AdapterRegistry, prompts) -> None:
    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    fusion = CrossExpertAttention(64)
    with served.use(TRAINED[:2]) as names, torch.inference_mode():
        free = generate_fused(served.model, ids, mask, names, fusion, max_new_tokens=6)
        assert free.shape == (2, 6)
        eos = int(free[0, 0])  # pretend row 0's first token is EOS
        stopped = generate_fused(
            served.model, ids, mask, names, fusion, max_new_tokens=6, eos_token_id=eos, pad_token_id=0
        )
        calls: list[int] = []
        cancelled = generate_fused(
            served.model,
            ids,
            mask,
            names,
            fusion,
            max_new_tokens=6,
            on_token=lambda t: calls.append(1) or len(calls) < 2,
        )
    # each row: its tokens up to and including its first EOS, then padding; the loop ends when all rows ended
    ends = [row.tolist().index(eos) + 1 if eos in row.tolist() else 6 for row in free]
    assert stopped.shape == (2, max(ends))
    for row, end in enumerate(ends):
        assert torch.equal(stopped[row, :end], free[row, :end])
        assert (stopped[row, end:] == 0).all()
    assert cancelled.shape == (2, 2) and torch.equal(cancelled, free[:, :2])


def test_bfloat16_model_fuses(tiny_model_factory, tmp_path: Path, prompts) -> None:
    loaded = tiny_model_factory(dtype=torch.bfloat16)
    registry = _serve(loaded, AdapterStore(tmp_path / "adapters"), None)
    try:
        experts = [Expert.PREDICT, Expert.RETROSPECT, Expert.REASON, Expert.EXPLAIN, Expert.TEACH]
        with registry.use(experts) as names, torch.inference_mode():
            logits = fused_logits(
                registry.model,
                prompts["input_ids"],
                prompts["attention_mask"],
                names,
                CrossExpertAttention(64),
                experts=experts,
            )
            base = loaded.model(input_ids=prompts["input_ids"][:1]).logits
        assert logits.dtype == torch.bfloat16 and logits.shape == (
            2,
            prompts["input_ids"].shape[1],
            loaded.model.config.vocab_size,
        )
        # five no-op adapters averaged = the base model
        torch.testing.assert_close(logits[0], base[0], rtol=2e-2, atol=2e-2)
    finally:
        registry.close()


@pytest.mark.slow
def test_real_model_fused_generation(tmp_path: Path) -> None:
    loaded = load_base_model(EngineSettings(model="embedded", dtype="bfloat16"))  # own copy: it gets wrapped
    registry = _serve(loaded, AdapterStore(tmp_path / "adapters"), None)
    try:
        tok = loaded.tokenizer
        text = tok.apply_chat_template(
            [{"role": "user", "content": "What does trample do?"}], tokenize=False, add_generation_prompt=True
        )
        batch = tok([text], return_tensors="pt")
        hidden = loaded.model.config.hidden_size
        streamed: list[int] = []
        with registry.use([Expert.EXPLAIN, Expert.TEACH]) as names, torch.inference_mode():
            fused = generate_fused(
                registry.model,
                batch["input_ids"],
                batch["attention_mask"],
                names,
                CrossExpertAttention(hidden),
                max_new_tokens=12,
                eos_token_id=tok.eos_token_id,
                on_token=lambda t: streamed.append(int(t[0])),
                experts=[Expert.EXPLAIN, Expert.TEACH],
            )
            plain = loaded.model.generate(**batch, max_new_tokens=12, do_sample=False)
        assert fused.shape[1] >= 1 and streamed == fused[0].tolist()
        # v0 adapters are no-ops: the fused experts say what the base model says
        assert fused[0].tolist() == plain[0, batch["input_ids"].shape[1] :].tolist()[: fused.shape[1]]
        assert tok.decode(fused[0], skip_special_tokens=True).strip()
    finally:
        registry.close()
