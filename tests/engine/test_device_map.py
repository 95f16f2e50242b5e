"""The multi-GPU planner, with simulated GPUs: real configs, a real tiny Mixtral dispatched on CPU."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MixtralConfig, MixtralForCausalLM

from engine.device_map import (
    DevicePlan,
    GiB,
    GpuBudget,
    ModelDoesNotFit,
    ModelSpec,
    plan_device_map,
    uncovered_parameters,
)
from engine.errors import ModelLoadError

# mistralai/Mixtral-8x7B-v0.1 config.json
MIXTRAL_8X7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    num_local_experts=8,
    num_experts_per_tok=2,
    max_position_embeddings=32768,
    tie_word_embeddings=False,
)


def two_cards(gib: float = 16) -> list[GpuBudget]:
    return [GpuBudget(0, int(gib * GiB)), GpuBudget(1, int(gib * GiB))]


@pytest.fixture(scope="module")
def mixtral_4bit() -> ModelSpec:
    return ModelSpec.from_config(MixtralConfig(**MIXTRAL_8X7B), weights="4bit")


@pytest.fixture(scope="module")
def tiny_mixtral() -> MixtralForCausalLM:
    config = MixtralConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        intermediate_size=128,
        vocab_size=512,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    return MixtralForCausalLM(config).eval()


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_spec_reads_mixtral_8x7b_and_counts_its_46_7b_parameters() -> None:
    spec = ModelSpec.from_config(MixtralConfig(**MIXTRAL_8X7B), weights="bf16")
    assert (spec.num_experts, spec.experts_per_token, spec.head_dim, spec.num_kv_heads) == (8, 2, 128, 8)
    assert spec.total_bytes() / 2 == pytest.approx(46.70e9, rel=0.005)


def test_mixtral_8x7b_4bit_fits_two_16gb_cards_balanced(mixtral_4bit: ModelSpec) -> None:
    plan = plan_device_map(mixtral_4bit, two_cards())
    totals = plan.bytes_per_device
    assert set(totals) == {0, 1}
    assert max(totals.values()) <= 1.1 * min(totals.values())
    assert all(totals[d] <= plan.budget_bytes[d] for d in totals)
    assert sum(plan.weight_bytes.values()) == mixtral_4bit.total_bytes()
    # 4-bit with its scales: ~0.516 bytes per quantized weight -> ~22.8 GiB in all
    assert 22 * GiB < mixtral_4bit.total_bytes() < 24 * GiB
    assert plan.device_map["model.embed_tokens"] == 0 and plan.device_map["lm_head"] == 1
    assert len(plan.layers[0]) + len(plan.layers[1]) == 32


def test_mixtral_experts_alternate_and_the_expert_parallel_totals_balance(mixtral_4bit: ModelSpec) -> None:
    plan = plan_device_map(mixtral_4bit, two_cards())
    assert plan.expert_placement[0] == (0, 1, 0, 1, 0, 1, 0, 1)
    assert plan.expert_placement[1] == (1, 0, 1, 0, 1, 0, 1, 0)
    for devices in plan.expert_placement.values():
        assert devices.count(0) == devices.count(1) == 4
    ep = plan.expert_parallel_bytes
    assert max(ep.values()) <= 1.1 * min(ep.values())
    assert sum(ep.values()) == sum(plan.bytes_per_device.values())


def test_mixtral_8x7b_4bit_on_one_16gb_card_is_a_clear_error(mixtral_4bit: ModelSpec) -> None:
    with pytest.raises(ModelDoesNotFit) as info:
        plan_device_map(mixtral_4bit, two_cards()[:1])
    message = str(info.value)
    assert "needs 23.3" in message and "offer 15.00 GiB" in message
    assert isinstance(info.value, ModelLoadError)


def test_bitsandbytes_unquantized_experts_do_not_fit_and_the_error_says_why() -> None:
    spec = ModelSpec.from_config(MixtralConfig(**MIXTRAL_8X7B), weights="4bit", quantized_experts=False)
    with pytest.raises(ModelDoesNotFit, match=r"fused expert tensors, 84\.00 GiB, unquantized"):
        plan_device_map(spec, two_cards())


def test_uneven_cards_get_work_in_proportion_to_their_budget() -> None:
    spec = ModelSpec.from_config(LlamaConfig(num_hidden_layers=24, hidden_size=2048, intermediate_size=5632))
    plan = plan_device_map(spec, [GpuBudget("cuda:0", 12 * GiB), GpuBudget("cuda:1", 4 * GiB)], kv_tokens=0)
    fill = {d: plan.bytes_per_device[d] / plan.budget_bytes[d] for d in plan.budget_bytes}
    assert len(plan.layers["cuda:0"]) > 2 * len(plan.layers["cuda:1"]) > 0
    assert abs(fill["cuda:0"] - fill["cuda:1"]) < 0.15


def test_kv_reserve_is_counted_per_layer(mixtral_4bit: ModelSpec) -> None:
    plan = plan_device_map(mixtral_4bit, two_cards(), kv_tokens=8192)
    per_token_layer = 2 * 8 * 128 * 2  # K and V, 8 kv heads x 128, bf16
    assert sum(plan.kv_bytes.values()) == per_token_layer * 8192 * 32
    assert plan.kv_bytes[0] == per_token_layer * 8192 * len(plan.layers[0])


def test_tied_embeddings_keep_the_head_with_the_embeddings() -> None:
    spec = ModelSpec.from_config(
        LlamaConfig(
            num_hidden_layers=8,
            hidden_size=256,
            intermediate_size=512,
            vocab_size=1024,
            tie_word_embeddings=True,
        ),
        weights="fp32",
    )
    layer = spec.layer_bytes()
    plan = plan_device_map(spec, [GpuBudget(0, 5 * layer, 0), GpuBudget(1, 5 * layer, 0)], kv_tokens=0)
    assert plan.device_map["lm_head"] == plan.device_map["model.embed_tokens"] == 0
    assert plan.device_map["model.norm"] == 1


def test_spec_validates_weight_format() -> None:
    with pytest.raises(ValueError, match="weights must be one of"):
        ModelSpec.from_config(LlamaConfig(), weights="3bit")


def test_byte_count_matches_an_instantiated_tiny_mixtral_exactly(tiny_mixtral: MixtralForCausalLM) -> None:
    spec = ModelSpec.from_config(tiny_mixtral.config, weights="fp32")
    assert spec.total_bytes() == _param_bytes(tiny_mixtral)


def _tiny_plan(model: MixtralForCausalLM) -> DevicePlan:
    spec = ModelSpec.from_config(model.config, weights="fp32")
    half = _param_bytes(model) * 0.6  # forces a split over the two simulated cards
    return plan_device_map(spec, [GpuBudget(0, int(half), 0), GpuBudget(1, int(half), 0)], kv_tokens=0)


def test_tiny_mixtral_map_covers_every_parameter(tiny_mixtral: MixtralForCausalLM) -> None:
    plan = _tiny_plan(tiny_mixtral)
    assert set(plan.device_map.values()) == {0, 1}
    module_names = dict(tiny_mixtral.named_modules())
    assert all(key in module_names for key in plan.device_map)
    names = [n for n, _ in tiny_mixtral.named_parameters()] + [n for n, _ in tiny_mixtral.named_buffers()]
    assert uncovered_parameters(plan.device_map, names) == []
    assert uncovered_parameters({"model.layers.0": 0}, names)  # the check itself can fail


def test_tiny_mixtral_loaded_and_dispatched_with_the_plan_gives_the_same_logits(
    tiny_mixtral: MixtralForCausalLM, tmp_path: Path
) -> None:
    from accelerate import dispatch_model

    cpu_map = {name: "cpu" for name in _tiny_plan(tiny_mixtral).device_map}
    tiny_mixtral.save_pretrained(tmp_path)
    ids = torch.randint(
        0, tiny_mixtral.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1)
    )
    with torch.inference_mode(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        expected = tiny_mixtral(ids).logits
        loaded = AutoModelForCausalLM.from_pretrained(
            tmp_path, device_map=cpu_map, dtype=torch.float32
        ).eval()
        assert torch.equal(loaded(ids).logits, expected)
        # force_hooks: accelerate attaches its per-module device hooks as it would across real GPUs.
        fresh = MixtralForCausalLM(tiny_mixtral.config).eval()
        fresh.load_state_dict(tiny_mixtral.state_dict())
        dispatched = dispatch_model(fresh, device_map=cpu_map, force_hooks=True)
        assert hasattr(dispatched.model.layers[1], "_hf_hook")
        assert torch.equal(dispatched(ids).logits, expected)
    assert not [w for w in caught if "device_map" in str(w.message)]
