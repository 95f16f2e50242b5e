"""Admin commands through real interactions: who may run them, /retrain through the real scheduler into the
real store, and /status with its figures and PNG."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from discord.webhook.async_ import AsyncWebhookAdapter

from bot.cogs.admin import NotAdmin
from bot.scheduler import RETRAIN, JobScheduler
from bot.storage import FeedbackStore
from hexcore.settings import BotSettings, Settings, TrainingSettings
from tests.bot.harness import DEFERRED_MESSAGE, DiscordHarness
from tests.bot.png import png_size


class Report:
    def __init__(self, experts: dict) -> None:
        self.experts = experts

    def to_json(self) -> dict:
        return {"experts": self.experts}


PROMOTED = {"teach": {"promoted": True, "reason": "validation score up", "metrics": {"score": 0.74}}}


@pytest.fixture
async def store(tmp_path: Path):
    s = await FeedbackStore.open(tmp_path / "feedback.sqlite3")
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def retrain_calls() -> list:
    return []


@pytest.fixture
async def scheduler(settings: Settings, store: FeedbackStore, retrain_calls: list):
    config = Settings(paths=settings.paths, training=TrainingSettings(_env_file=None, min_new_feedback=0))

    def retrain(settings, experts, examples):
        retrain_calls.append(experts)
        gate = getattr(retrain, "gate", None)
        if gate is not None:
            gate.wait(30)
        return Report(PROMOTED)

    sched = JobScheduler(config, store, retrain=retrain, timezone="UTC")
    sched.retrain_fn = retrain
    sched.start()
    try:
        yield sched
    finally:
        await sched.close()


@pytest.fixture
def admin(harness, store, scheduler):
    """The conftest harness with a real store and a running scheduler."""
    harness.bot.store = store
    harness.bot.scheduler = scheduler
    return harness


def without_manage_server(h: DiscordHarness, index: int) -> None:
    """Member ``index`` gets no permissions in the interaction payloads (the harness gives everyone all)."""
    target = h.members[index]

    def payload(member):
        data = DiscordHarness._member_payload(member)
        if member.id == target.id:
            data["permissions"] = "0"
        return data

    h._member_payload = payload


@contextlib.contextmanager
def uploads() -> Iterator[list[tuple[str, bytes]]]:
    """Files the bot attaches to followups (the harness records the JSON part of multipart bodies only)."""
    captured: list[tuple[str, bytes]] = []
    installed = AsyncWebhookAdapter.execute_webhook

    async def capture(adapter, *args, multipart=None, **kwargs):
        for part in multipart or []:
            if part["name"].startswith("files["):
                fp = part["value"]
                captured.append((part["filename"], fp.getvalue() if hasattr(fp, "getvalue") else fp.read()))
        return await installed(adapter, *args, multipart=multipart, **kwargs)

    AsyncWebhookAdapter.execute_webhook = capture
    try:
        yield captured
    finally:
        AsyncWebhookAdapter.execute_webhook = installed


def fields(message) -> dict[str, str]:
    return {f["name"]: f["value"] for e in message.embeds for f in e.get("fields", [])}


# ------------------------------------------------------------------------------------------ permissions


@pytest.mark.parametrize("command", ["status", "retrain"])
async def test_members_without_manage_server_are_refused(admin, retrain_calls, command):
    without_manage_server(admin, 1)
    rec = await admin.slash(command, user=1)
    assert rec.original.ephemeral and rec.original.text() == NotAdmin.user_message
    assert retrain_calls == []
    assert admin.bot.scheduler.states[RETRAIN].runs == 0
    assert admin.errors.records == [], "a refusal is not an error"


async def test_the_owner_may_run_admin_commands_without_manage_server(admin, settings):
    without_manage_server(admin, 1)
    owner = admin.members[1].id
    admin.bot.settings = Settings(paths=settings.paths, bot=BotSettings(_env_file=None, owner_id=owner))
    rec = await admin.slash("retrain", user=1)
    assert "started" in rec.original.text()
    await admin.bot.scheduler.wait_idle(RETRAIN, 10)


def test_admin_commands_are_hidden_from_others_by_default(admin):
    for name in ("status", "retrain"):
        command = admin.bot.tree.get_command(name)
        assert command.default_permissions is not None and command.default_permissions.manage_guild
        assert command.to_dict(admin.bot.tree)["default_member_permissions"] == 1 << 5  # Manage Server


# ---------------------------------------------------------------------------------------------- /retrain


async def test_retrain_starts_a_run_and_answers_at_once(admin, store, retrain_calls):
    rec = await admin.slash("retrain", expert="teach")
    assert rec.kinds() == ["callback"] and rec.original.ephemeral
    assert "Retraining of the teach expert started" in rec.original.text()
    state = await admin.bot.scheduler.wait_idle(RETRAIN, 10)
    assert retrain_calls == [["teach"]] and state.last_result.startswith("promoted")
    run = await store.runs.last()
    assert (run.status, run.trigger, run.experts) == ("promoted", "manual", ["teach"])


async def test_retrain_while_running_says_so(admin, store, retrain_calls):
    gate = threading.Event()
    admin.bot.scheduler.retrain_fn.gate = gate
    try:
        first = await admin.slash("retrain")
        assert "all experts started" in first.original.text()
        second = await admin.slash("retrain", expert="reason", user=1)
        assert "already in progress" in second.original.text()
    finally:
        gate.set()
    await admin.bot.scheduler.wait_idle(RETRAIN, 10)
    assert retrain_calls == [None] and len(await store.runs.recent()) == 1


async def test_retrain_without_a_scheduler(harness):
    rec = await harness.slash("retrain")
    assert rec.original.ephemeral and "not available" in rec.original.text()


# ----------------------------------------------------------------------------------------------- /status


async def test_status_shows_every_part_and_attaches_a_plot(admin, store, engine):
    await store.answers.record("a1", 1, 2, 3, "ask", "q?", "text", ["reason"], [], latency_ms=850.0)
    await store.votes.record("a1", 4, 1, "button")
    admin.bot.scheduler.request_retrain(["teach"])
    await admin.bot.scheduler.wait_idle(RETRAIN, 10)
    with uploads() as files:
        rec = await admin.slash("status")
    assert rec.callback_type == DEFERRED_MESSAGE and rec.original.ephemeral, "deferred privately first"
    shown = fields(rec.original)
    assert set(shown) == {"Engine", "Adapters", "Last retraining", "Scheduled jobs", "Feedback"}
    assert "queue 0/4" in shown["Engine"] and "latency p95: no data yet" in shown["Engine"]
    assert "teach `fake-1`" in shown["Adapters"]
    assert "**promoted** · manual · teach" in shown["Last retraining"]
    assert "teach: promoted (score 0.74): validation score up" in shown["Last retraining"]
    assert "**Nightly retraining**: promoted (manual, 1 feedback examples)" in shown["Scheduled jobs"]
    assert "1 answers · 1 votes (👍 1 / 👎 0) from 1 users" in shown["Feedback"]
    assert rec.original.embeds[0]["image"]["url"] == "attachment://status.png"
    ((name, png),) = files
    assert name == "status.png" and png_size(png) == (800, 320)
    assert admin.errors.records == []


async def test_status_shows_failures(admin, engine, store):
    def broken(settings, experts, examples):
        raise RuntimeError("adapter validation crashed")

    admin.bot.scheduler._retrain_fn = broken
    admin.bot.scheduler.request_retrain()
    await admin.bot.scheduler.wait_idle(RETRAIN, 10)
    engine.alive = False
    rec = await admin.slash("status")
    shown = fields(rec.original)
    assert shown["Engine"].startswith("**down**")
    assert (
        "**failed**" in shown["Last retraining"] and "adapter validation crashed" in shown["Last retraining"]
    )
    assert "1 failure(s)" in shown["Scheduled jobs"]
    assert "RuntimeError: adapter validation crashed" in shown["Scheduled jobs"]


async def test_status_without_store_or_scheduler(harness):
    with uploads() as files:
        rec = await harness.slash("status")
    shown = fields(rec.original)
    assert shown["Last retraining"] == "no feedback store" and shown["Scheduled jobs"] == "no scheduler"
    assert "Feedback" not in shown
    ((_, png),) = files
    assert png_size(png) == (800, 320)
    assert harness.errors.records == []


async def test_status_when_the_scheduler_stopped(admin):
    await admin.bot.scheduler.close()
    rec = await admin.slash("status")
    assert fields(rec.original)["Scheduled jobs"].startswith("**scheduler stopped**")
