"""The generation core: batched == alone, streaming, stop/length/cancel, errors, sessions, mixed adapters."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model

from engine.errors import AdapterError, GenerationError, InvalidRequest
from engine.generation import (
    BASE_ADAPTER,
    Generator,
    GenJob,
    GenStats,
    decode_text,
)
from engine.model_loader import LoadedModel, load_base_model
from engine.prompts import build_messages, encode_messages, next_history
from engine.sessions import SessionStore
from hexcore.settings import EngineSettings

QUESTIONS = [
    (
        "What does trample do?",
        "702.19b If an attacking creature with trample is blocked, excess damage goes to the player.",
    ),
    ("Can I respond to a mana ability?", "605.3b A mana ability doesn't use the stack."),
    ("What is the stack?", ""),
    (
        "How does deathtouch work with trample?",
        "702.2c Any nonzero damage from a source with deathtouch is lethal.",
    ),
    (
        "When does a creature with 0 toughness die?",
        "704.5f A creature with toughness 0 or less is put into its graveyard.",
    ),
]


@dataclass
class Outcome:
    """Everything the callbacks of one job saw."""

    deltas: list[str] = field(default_factory=list)
    ids: list[int] | None = None
    stats: GenStats | None = None
    errors: list[BaseException] = field(default_factory=list)
    done_calls: int = 0

    @property
    def text(self) -> str:
        return "".join(self.deltas)


def job(outcome: Outcome, **fields: Any) -> GenJob:
    def done(out_ids: list[int], stats: GenStats) -> None:
        outcome.ids, outcome.stats = out_ids, stats
        outcome.done_calls += 1

    return GenJob(on_token=outcome.deltas.append, on_done=done, on_error=outcome.errors.append, **fields)


def run(generator: Generator, specs: list[dict[str, Any]], **kwargs: Any) -> list[Outcome]:
    """Run jobs given as GenJob field dicts in one ``run_batch``; return their outcomes in order."""
    outcomes = [Outcome() for _ in specs]
    generator.run_batch([job(outcome=o, **spec) for o, spec in zip(outcomes, specs, strict=True)], **kwargs)
    return outcomes


def prompts(tokenizer: Any, n: int = len(QUESTIONS), expert: str = "explain") -> list[list[int]]:
    return [encode_messages(tokenizer, build_messages(expert, q, c)) for q, c in QUESTIONS[:n]]


def random_prompts(n: int, seed: int = 0) -> list[list[int]]:
    """Token ids of different lengths (the tiny model is random: any ids are as good as text)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 40000, (5 + 7 * i,), generator=gen).tolist() for i in range(n)]


# ---- mechanics on the tiny random model (fast) ----


@pytest.fixture(scope="module")
def tiny_gen(tiny_model: LoadedModel) -> Generator:
    return Generator(tiny_model, max_batch_size=4)


def test_batched_rows_equal_each_job_alone(tiny_gen: Generator) -> None:
    ids = random_prompts(4)
    specs = [{"input_ids": x, "max_new_tokens": 6 + 3 * i, "eos_token_ids": []} for i, x in enumerate(ids)]
    alone = [run(tiny_gen, [spec])[0] for spec in specs]
    together = run(tiny_gen, specs)
    for a, b in zip(alone, together, strict=True):
        assert b.ids == a.ids and b.text == a.text
        assert b.stats.finish_reason == "length"
    assert len(together[-1].ids) == 15
    assert max(o.stats.batch_size for o in together) == 4
    assert alone[0].stats.batch_size == 1


def test_more_jobs_than_slots_and_admitted_jobs_join_the_running_batch(tiny_gen: Generator) -> None:
    ids = random_prompts(7, seed=1)
    specs = [
        {"input_ids": x, "max_new_tokens": 4 + (i % 3) * 5, "eos_token_ids": []} for i, x in enumerate(ids)
    ]
    alone = [run(tiny_gen, [spec])[0].ids for spec in specs]
    # Seven jobs, four slots: the rest wait and take the slots of rows that finish.
    assert [o.ids for o in run(tiny_gen, specs)] == alone
    # Jobs handed in by ``admit`` while the batch runs.
    late = [Outcome() for _ in specs[2:]]
    queue = [job(outcome=o, **spec) for o, spec in zip(late, specs[2:], strict=True)]
    asked: list[int] = []

    def admit(free: int) -> list[GenJob]:
        asked.append(free)
        taken, queue[:] = queue[:1], queue[1:]  # one at a time, so they join at different steps
        return taken

    first = run(tiny_gen, specs[:2], admit=admit)
    assert [o.ids for o in first + late] == alone
    assert asked and max(asked) <= tiny_gen.max_batch_size
    assert max(o.stats.batch_size for o in late) > 1


def test_streamed_deltas_concatenate_to_the_final_text(tiny_gen: Generator) -> None:
    (outcome,) = run(
        tiny_gen, [{"input_ids": random_prompts(1, seed=3)[0], "max_new_tokens": 40, "eos_token_ids": []}]
    )
    assert len(outcome.deltas) > 1
    assert outcome.text == decode_text(tiny_gen.tokenizer, outcome.ids)
    assert all(delta and "\ufffd" not in delta for delta in outcome.deltas)


def test_stop_token_ends_the_job_and_is_not_returned(tiny_gen: Generator) -> None:
    ids = random_prompts(1, seed=4)[0]
    (free,) = run(tiny_gen, [{"input_ids": ids, "max_new_tokens": 8, "eos_token_ids": []}])
    stop = free.ids[3]
    (stopped,) = run(tiny_gen, [{"input_ids": ids, "max_new_tokens": 8, "eos_token_ids": [stop]}])
    assert stopped.stats.finish_reason == "stop"
    assert stopped.ids == free.ids[: free.ids.index(stop)]
    assert stopped.text == decode_text(tiny_gen.tokenizer, stopped.ids)
    # The stop token as the very first token: done at prefill, nothing generated.
    (at_once,) = run(tiny_gen, [{"input_ids": ids, "max_new_tokens": 8, "eos_token_ids": [free.ids[0]]}])
    assert at_once.ids == [] and at_once.text == "" and at_once.stats.finish_reason == "stop"


def test_cancellation_stops_the_job_early_and_spares_the_others(tiny_gen: Generator) -> None:
    ids = random_prompts(3, seed=5)
    specs = [{"input_ids": x, "max_new_tokens": 30, "eos_token_ids": []} for x in ids]
    alone = [run(tiny_gen, [spec])[0].ids for spec in specs]
    seen: list[int] = []

    def cancel_after_five() -> bool:
        return len(seen) >= 5

    outcomes = [Outcome() for _ in specs]
    jobs = [job(outcome=o, **spec) for o, spec in zip(outcomes, specs, strict=True)]
    jobs[1].is_cancelled = cancel_after_five
    jobs[1].on_token = lambda delta: (seen.append(1), outcomes[1].deltas.append(delta))
    tiny_gen.run_batch(jobs)
    assert outcomes[1].stats.finish_reason == "cancelled"
    assert 5 <= len(outcomes[1].ids) < 30
    assert outcomes[1].ids == alone[1][: len(outcomes[1].ids)]
    assert [outcomes[0].ids, outcomes[2].ids] == [alone[0], alone[2]]
    # Cancelled before it started: no prefill, no tokens, still settled once.
    (early,) = run(tiny_gen, [{**specs[0], "is_cancelled": lambda: True}])
    assert early.ids == [] and early.stats.finish_reason == "cancelled" and early.done_calls == 1


def test_a_failing_job_is_isolated_from_the_batch(tiny_gen: Generator) -> None:
    ids = random_prompts(2, seed=6)
    good = {"input_ids": ids[0], "max_new_tokens": 5, "eos_token_ids": []}
    expected = run(tiny_gen, [good])[0].ids
    outcomes = run(
        tiny_gen,
        [
            {"input_ids": ids[1], "adapter_name": "reason"},  # the plain model has no adapters
            {"input_ids": []},
            good,
            {"input_ids": ids[1], "max_new_tokens": 0},
            {"input_ids": list(range(3, 3000))},  # longer than the model's 2048 positions
        ],
    )
    assert isinstance(outcomes[0].errors[0], AdapterError)
    assert isinstance(outcomes[1].errors[0], InvalidRequest)
    assert isinstance(outcomes[3].errors[0], InvalidRequest)
    assert "too long" in outcomes[4].errors[0].user_message
    assert outcomes[2].ids == expected and not outcomes[2].errors
    for o in outcomes:  # each job settled exactly once
        assert (o.done_calls, len(o.errors)) in ((1, 0), (0, 1))


def test_a_raising_on_token_stops_only_that_job(tiny_gen: Generator) -> None:
    ids = random_prompts(2, seed=7)
    specs = [{"input_ids": x, "max_new_tokens": 12, "eos_token_ids": []} for x in ids]
    expected = run(tiny_gen, [specs[1]])[0].ids
    outcomes = [Outcome(), Outcome()]
    jobs = [job(outcome=o, **s) for o, s in zip(outcomes, specs, strict=True)]

    def broken(delta: str) -> None:
        raise ConnectionResetError("consumer went away")

    jobs[0].on_token = broken
    tiny_gen.run_batch(jobs)
    assert isinstance(outcomes[0].errors[0], GenerationError) and outcomes[0].done_calls == 0
    assert outcomes[1].ids == expected


def test_a_failing_decode_step_fails_every_row_and_is_raised(
    tiny_model_factory: Callable[..., LoadedModel],
) -> None:
    loaded = tiny_model_factory()
    generator = Generator(loaded)
    calls = {"n": 0}
    original = loaded.model.forward

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 4:  # two prefills, then a decode step or two
            raise RuntimeError("simulated device failure")
        return original(*args, **kwargs)

    loaded.model.forward = flaky
    outcomes = [Outcome(), Outcome()]
    jobs = [
        job(o, input_ids=x, max_new_tokens=10, eos_token_ids=[])
        for x, o in zip(random_prompts(2), outcomes, strict=True)
    ]
    with pytest.raises(RuntimeError, match="simulated"):
        generator.run_batch(jobs)
    assert all(isinstance(o.errors[0], GenerationError) and o.done_calls == 0 for o in outcomes)


def test_sampling_is_reproducible_with_a_seed(tiny_gen: Generator) -> None:
    ids = random_prompts(1, seed=8)[0]
    spec = {"input_ids": ids, "max_new_tokens": 12, "eos_token_ids": [], "temperature": 1.0, "top_p": 0.9}
    a, b = (run(tiny_gen, [{**spec, "seed": 1}])[0].ids for _ in range(2))
    c = run(tiny_gen, [{**spec, "seed": 2}])[0].ids
    greedy = run(tiny_gen, [{"input_ids": ids, "max_new_tokens": 12, "eos_token_ids": []}])[0].ids
    assert a == b and a != c and a != greedy


def test_repetition_penalty_discourages_repeats(tiny_gen: Generator) -> None:
    ids = random_prompts(1, seed=9)[0]
    spec = {"input_ids": ids, "max_new_tokens": 40, "eos_token_ids": []}
    plain = run(tiny_gen, [spec])[0].ids
    penalised = run(tiny_gen, [{**spec, "repetition_penalty": 5.0}])[0].ids
    assert len(set(penalised)) > len(set(plain))


def test_stats_are_filled_in(tiny_gen: Generator) -> None:
    (o,) = run(tiny_gen, [{"input_ids": random_prompts(1)[0], "max_new_tokens": 9, "eos_token_ids": []}])
    s = o.stats
    assert s.prompt_tokens == 5 and s.new_tokens == 9 and s.reused_tokens == 0
    assert 0 < s.prefill_ms <= s.ttft_ms <= s.total_ms and s.decode_ms > 0 and s.decode_tok_s > 0
    assert s.as_dict()["decode_tok_s"] == s.decode_tok_s and s.adapter is None


def test_generate_accepts_messages_ids_and_text(tiny_gen: Generator) -> None:
    messages = build_messages("teach", "What is ward?", "702.21a Ward is a triggered ability.")
    ids = encode_messages(tiny_gen.tokenizer, messages)
    by_messages = tiny_gen.generate(messages, max_new_tokens=5, eos_token_ids=[])
    by_ids = tiny_gen.generate(ids, max_new_tokens=5, eos_token_ids=[])
    assert by_messages[:2] == by_ids[:2]
    assert (
        tiny_gen.generate_text("Hello", max_new_tokens=3, eos_token_ids=[])
        == tiny_gen.generate("Hello", max_new_tokens=3, eos_token_ids=[])[0]
    )
    with pytest.raises(InvalidRequest):
        tiny_gen.generate([], max_new_tokens=3)


def test_session_rows_batch_with_plain_rows_and_reuse_equals_recompute(tiny_model: LoadedModel) -> None:
    store = SessionStore(1 << 30, ttl_s=600, max_sessions=8)
    with_sessions, plain = Generator(tiny_model, sessions=store), Generator(tiny_model)
    ids = random_prompts(3, seed=10)
    first = run(
        with_sessions, [{"input_ids": ids[0], "max_new_tokens": 7, "eos_token_ids": [], "session_id": "a"}]
    )[0]
    follow_up = ids[0] + first.ids + ids[1]
    specs = [
        {"input_ids": follow_up, "max_new_tokens": 9, "eos_token_ids": [], "session_id": "a"},
        {"input_ids": ids[2], "max_new_tokens": 5, "eos_token_ids": [], "session_id": "b"},
        {"input_ids": ids[1], "max_new_tokens": 11, "eos_token_ids": []},
    ]
    reused = run(with_sessions, specs)
    recomputed = [run(plain, [{k: v for k, v in s.items() if k != "session_id"}])[0] for s in specs]
    assert [o.ids for o in reused] == [o.ids for o in recomputed]
    # All but the last generated token of turn one was cached, and is reused.
    assert reused[0].stats.reused_tokens == len(ids[0]) + len(first.ids) - 1
    assert store.stats().count == 2 and "b" in store


# ---- the real embedded model ----
#
# Exact "batched == alone" holds in float32. In bfloat16 it cannot be promised: the CPU matmul kernels
# round a row's result differently depending on how many rows share the call (seen here: down_proj,
# 1 row vs 2), so a near-tie between two tokens can flip. The decode attention itself is batch-invariant
# (rows start at column 0, padding on the right). So: exact token equality on a float32 copy of the real
# model (with two LoRA adapters); in bfloat16, differences only of rounding size.


def cycle(tokens: list[int]) -> Callable[[list[int], torch.Tensor], torch.Tensor]:
    """A logits processor that makes the model emit ``tokens`` over and over (a loop, on purpose)."""

    def force(ids: list[int], scores: torch.Tensor) -> torch.Tensor:
        forced = torch.full_like(scores, float("-inf"))
        forced[tokens[force.step % len(tokens)]] = 0.0
        force.step += 1
        return forced

    force.step = 0  # type: ignore[attr-defined]
    return force


def test_a_looping_answer_stops_at_its_first_repeated_run(tiny_gen: Generator) -> None:
    loop = [101, 202, 303, 404]
    prompt = [7, 8, *loop, *loop, 9]  # the prompt holds the run twice: quoting it is not a loop
    stopped, unchecked, longer = run(
        tiny_gen,
        [
            {"input_ids": prompt, "max_new_tokens": 40, "stop_on_repeat": 3, "logits_processor": cycle(loop)},
            {"input_ids": prompt, "max_new_tokens": 40, "logits_processor": cycle(loop)},
            {"input_ids": prompt, "max_new_tokens": 40, "stop_on_repeat": 5, "logits_processor": cycle(loop)},
        ],
    )
    # 101 202 303 404 101 202 303: the 3-gram (101, 202, 303) is back at token 7
    assert stopped.ids == [*loop, 101, 202, 303] and stopped.stats.finish_reason == "repetition"
    assert unchecked.stats.finish_reason == "length" and len(unchecked.ids) == 40
    assert longer.ids == [*loop, *loop, 101] and longer.stats.finish_reason == "repetition"


@pytest.fixture(scope="module")
def fp32_adapters() -> LoadedModel:
    """A private float32 copy of the real model with two random (output-changing) LoRA adapters."""
    loaded = load_base_model(EngineSettings(model="embedded", dtype="float32", quantization="none"))
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(loaded.model, config, adapter_name="reason")
    peft_model.add_adapter("explain", config)
    peft_model.eval()
    loaded.model = peft_model
    return loaded


@pytest.fixture(scope="module")
def real_gen(base_model: LoadedModel) -> Generator:
    return Generator(base_model, max_batch_size=8)


@pytest.mark.slow
def test_real_model_mixed_adapter_batch_equals_each_alone(fp32_adapters: LoadedModel) -> None:
    generator = Generator(fp32_adapters, max_batch_size=8)
    assert generator.adapters() == {"reason", "explain"}
    ids = prompts(generator.tokenizer)
    adapters = ["reason", "explain", None, "explain", BASE_ADAPTER, "reason"]
    specs = [
        {"input_ids": ids[i % len(ids)], "adapter_name": name, "max_new_tokens": 8 + 2 * i}
        for i, name in enumerate(adapters)
    ]
    alone = [run(generator, [s])[0] for s in specs]
    together = run(generator, specs)
    assert [o.ids for o in together] == [o.ids for o in alone]
    assert [o.text for o in together] == [o.text for o in alone]
    assert [o.stats.adapter for o in together] == ["reason", "explain", None, "explain", None, "reason"]
    assert max(o.stats.batch_size for o in together) == 6
    # The adapters really are in play: one prompt, three different answers.
    by_adapter = {name: run(generator, [{**specs[0], "adapter_name": name}])[0].ids for name in adapters[:3]}
    assert len({tuple(v) for v in by_adapter.values()}) == 3
    (bad,) = run(generator, [{"input_ids": ids[0], "adapter_name": "teach"}])
    assert isinstance(bad.errors[0], AdapterError)


@pytest.mark.slow
def test_real_model_matches_transformers_generate(fp32_adapters: LoadedModel) -> None:
    """Our loop, cache and decode attention give exactly transformers' greedy tokens (float32)."""
    generator = Generator(fp32_adapters)
    model = fp32_adapters.model
    for i, name in enumerate(["reason", BASE_ADAPTER]):
        ids = prompts(generator.tokenizer)[i]
        ours = generator.generate(ids, adapter_name=name, max_new_tokens=32)[1]
        with torch.inference_mode():
            out = model.generate(
                input_ids=torch.tensor([ids]), adapter_names=[name], max_new_tokens=32, do_sample=False
            )
        assert ours == [t for t in out[0, len(ids) :].tolist() if t not in generator.default_eos]
    assert model.config._attn_implementation == "sdpa"  # restored after each batch


@pytest.mark.slow
def test_real_model_bf16_batch_differs_from_alone_only_by_rounding(real_gen: Generator) -> None:
    """Every step of every row gets the next-token probabilities it gets alone, up to bfloat16 rounding;
    a token differs only where the two candidates were within that rounding (a near-tie)."""
    ids = prompts(real_gen.tokenizer)
    # Rounding noise moves next-token probabilities by up to ~0.05 here; a mask, position or cache bug
    # changes what the row attends to and moves them far more.
    tolerance = 0.1

    def recorder(
        log: dict[tuple[int, ...], torch.Tensor],
    ) -> Callable[[list[int], torch.Tensor], torch.Tensor]:
        def record(seen: list[int], scores: torch.Tensor) -> torch.Tensor:
            log[tuple(seen)] = scores.clone()
            return scores

        return record

    alone_logs: list[dict[tuple[int, ...], torch.Tensor]] = [{} for _ in ids]
    batch_logs: list[dict[tuple[int, ...], torch.Tensor]] = [{} for _ in ids]
    specs = [{"input_ids": x, "max_new_tokens": 16 + 2 * i} for i, x in enumerate(ids)]
    alone = [
        run(real_gen, [{**s, "logits_processor": recorder(alone_logs[i])}])[0] for i, s in enumerate(specs)
    ]
    together = run(
        real_gen, [{**s, "logits_processor": recorder(batch_logs[i])} for i, s in enumerate(specs)]
    )
    compared = 0
    for a, b, a_log, b_log in zip(alone, together, alone_logs, batch_logs, strict=True):
        for prefix, scores in b_log.items():
            if prefix not in a_log:  # past a divergence: the two runs saw different tokens
                continue
            reference = a_log[prefix]
            probs, reference = scores.softmax(-1), reference.softmax(-1)
            assert (probs - reference).abs().max() < tolerance
            assert reference[int(probs.argmax())] > reference.max() - tolerance  # same token, or a near-tie
            compared += 1
        if a.ids != b.ids:
            first = next(k for k, (x, y) in enumerate(zip(a.ids, b.ids, strict=False)) if x != y)
            assert first > 0  # the first token comes from the row's own prefill: always identical
    assert compared >= sum(len(o.ids) for o in alone) // 2


@pytest.mark.slow
def test_real_model_streaming_concatenates_to_the_answer(real_gen: Generator) -> None:
    (o,) = run(real_gen, [{"input_ids": prompts(real_gen.tokenizer, 1)[0], "max_new_tokens": 40}])
    assert o.text == decode_text(real_gen.tokenizer, o.ids) and o.text.strip()
    assert len(o.deltas) > 3


@pytest.mark.slow
def test_real_model_cancellation(real_gen: Generator) -> None:
    stop = threading.Event()
    outcome = Outcome()

    def on_token(delta: str) -> None:
        outcome.deltas.append(delta)
        if len(outcome.deltas) == 3:
            stop.set()

    j = job(outcome, input_ids=prompts(real_gen.tokenizer, 1)[0], max_new_tokens=100, eos_token_ids=[])
    j.on_token, j.is_cancelled = on_token, stop.is_set
    real_gen.run_batch([j])
    assert outcome.stats.finish_reason == "cancelled" and 3 <= len(outcome.ids) < 10


@pytest.mark.slow
def test_real_model_session_follow_up_reuses_the_history(
    real_gen: Generator, base_model: LoadedModel
) -> None:
    """bf16, as served: the follow-up prefills only its new message (exactness: float32, test_sessions)."""
    store = SessionStore(1 << 30, ttl_s=600, max_sessions=4)
    generator = Generator(base_model, sessions=store)
    question, context = QUESTIONS[0]
    messages = build_messages("reason", question, context)
    answer, first_ids, _ = generator.generate(messages, max_new_tokens=24, session_id="thread-1")
    follow = build_messages(
        "reason", "And if it also has deathtouch?", QUESTIONS[3][1], next_history(messages, answer)
    )
    text, ids, stats = generator.generate(follow, max_new_tokens=24, session_id="thread-1")
    history = len(generator.encode(messages)) + len(first_ids)
    assert (
        history - 2 <= stats.reused_tokens <= history
    )  # all of turn one (tokenisation may differ at the seam)
    assert text == decode_text(generator.tokenizer, ids) and ids
