"""Admin commands: ``/status`` (engine, adapters, latency, retraining, jobs, feedback, with a plot) and
``/retrain [expert]`` (starts a retraining run in the scheduler and answers at once).

Only members with Manage Server (in that server) and the configured owner (``HEXCORE_BOT_OWNER_ID``)
may run them. Discord hides the commands from others by default (``default_permissions``), and the bot
checks again itself, since server admins can change who sees a command. Replies are private.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from bot import formatting, limits
from bot.errors import BotError, send_ephemeral
from bot.scheduler import expert_results
from bot.status_plot import curves_from_runs, render_status_png
from engine.api import Expert

if TYPE_CHECKING:
    from bot.client import HexcoreBot

log = logging.getLogger(__name__)

T = TypeVar("T")

PLOT_NAME = "status.png"
LATENCIES_PLOTTED = 500
RUNS_PLOTTED = 30


class NotAdmin(app_commands.CheckFailure, BotError):
    user_message = "Only members with the Manage Server permission (or the bot owner) can use this command."


def is_admin(interaction: discord.Interaction) -> bool:
    owner_id = interaction.client.settings.bot.owner_id  # type: ignore[attr-defined]
    if owner_id is not None and interaction.user.id == owner_id:
        return True
    if interaction.guild is None:
        return False
    return interaction.permissions.manage_guild


def admin_only() -> Callable[[T], T]:
    def predicate(interaction: discord.Interaction) -> bool:
        if not is_admin(interaction):
            raise NotAdmin()
        return True

    return app_commands.check(predicate)


def _when(value: dt.datetime | None) -> str:
    return discord.utils.format_dt(value, "f") if value is not None else "never"


def _field(embed: discord.Embed, name: str, value: str) -> None:
    embed.add_field(
        name=name, value=formatting.truncate(value or "—", limits.EMBED_FIELD_VALUE_LIMIT), inline=False
    )


class Admin(commands.Cog):
    def __init__(self, bot: HexcoreBot) -> None:
        self.bot = bot

    # ---------------------------------------------------------------------------------- /retrain

    @app_commands.command(
        name="retrain", description="Retrain the expert adapters now, from the collected feedback."
    )
    @app_commands.describe(expert="Only this expert (default: all)")
    @app_commands.choices(expert=[app_commands.Choice(name=e.value, value=e.value) for e in Expert])
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def retrain(self, interaction: discord.Interaction, expert: str | None = None) -> None:
        scheduler = self.bot.scheduler
        experts = [expert] if expert else None
        result = scheduler.request_retrain(experts) if scheduler is not None else "unavailable"
        which = f"the {expert} expert" if expert else "all experts"
        message = {
            "started": f"Retraining of {which} started in the background. /status shows its result.",
            "running": "A retraining run is already in progress; /status shows it.",
        }.get(result, "Retraining is not available: the job scheduler is not running.")
        if result == "started":
            log.info("retraining of %s requested by %s", which, interaction.user.id)
        await send_ephemeral(interaction, message)

    # ----------------------------------------------------------------------------------- /status

    @app_commands.command(name="status", description="Engine, adapters, latency, retraining and job status.")
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def status(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        embed = discord.Embed(title="Hexcore status", colour=formatting.ANSWER_COLOUR)
        self._engine_fields(embed)
        runs = await self._retraining_field(embed)
        self._job_field(embed)
        latencies = await self._feedback_field(embed)
        if self.bot.extension_errors:
            _field(
                embed,
                "Extensions that failed to load",
                "\n".join(f"{k}: {v}" for k, v in self.bot.extension_errors.items()),
            )
        metric, curves = curves_from_runs(runs)
        kwargs: dict[str, Any] = {"embed": embed, "ephemeral": True}
        try:
            png = await asyncio.to_thread(render_status_png, latencies, curves, metric=metric)
        except Exception:  # the figures still go out without the picture
            log.exception("status plot failed")
        else:
            embed.set_image(url=f"attachment://{PLOT_NAME}")
            kwargs["file"] = discord.File(io.BytesIO(png), filename=PLOT_NAME)
        await interaction.followup.send(**kwargs)

    def _engine_fields(self, embed: discord.Embed) -> None:
        try:
            s = self.bot.engine.status()
        except Exception as exc:
            _field(embed, "Engine", f"status unavailable: {type(exc).__name__}: {exc}")
            return
        lines = [
            f"{'running' if s.alive else '**down**'} · queue {s.queue_depth}/{s.queue_capacity}",
            f"sessions {s.sessions} ({s.session_bytes / 2**20:.1f} MiB) · restarts {s.restarts}",
            f"latency p95: {f'{s.latency_p95_ms:.0f} ms' if s.latency_p95_ms is not None else 'no data yet'}",
        ]
        if s.last_error:
            lines.append(f"last error: {s.last_error}")
        _field(embed, "Engine", "\n".join(lines))
        adapters = " · ".join(f"{name} `{version}`" for name, version in sorted(s.adapters.items()))
        _field(embed, "Adapters", adapters or "none loaded (base model only)")

    async def _retraining_field(self, embed: discord.Embed) -> list:
        store = self.bot.store
        if store is None:
            _field(embed, "Last retraining", "no feedback store")
            return []
        runs = await store.runs.recent(RUNS_PLOTTED)
        if not runs:
            _field(embed, "Last retraining", "none yet")
            return runs
        last = runs[-1]
        which = ", ".join(last.experts) if last.experts else "all experts"
        lines = [f"**{last.status}** · {last.trigger} · {which} · started {_when(last.started)}"]
        if last.finished is not None:
            lines[0] += f" · finished {_when(last.finished)}"
        for r in expert_results(last.validation):
            verdict = (
                "promoted" if r.promoted else "kept serving adapter" if r.promoted is False else "validated"
            )
            metrics = ", ".join(f"{k} {v:.3g}" for k, v in list(r.metrics.items())[:3])
            lines.append(
                f"{r.expert}: {verdict}"
                + (f" ({metrics})" if metrics else "")
                + (f": {r.reason}" if r.reason else "")
            )
        if last.validation and "error" in last.validation:
            lines.append(f"error: {last.validation['error']}")
        _field(embed, "Last retraining", "\n".join(lines))
        return runs

    def _job_field(self, embed: discord.Embed) -> None:
        scheduler = self.bot.scheduler
        if scheduler is None:
            _field(embed, "Scheduled jobs", "no scheduler")
            return
        lines = []
        for job in scheduler.job_states():
            state = "**running**" if job.running else (job.last_result or "not run yet")
            line = f"**{job.name}**: {state} · last {_when(job.last_finished)} · next {_when(job.next_run)}"
            if job.failures:
                line += f"\n  {job.failures} failure(s), last {_when(job.last_error_at)}: {job.last_error}"
            if job.last_skip:
                line += f"\n  skipped {job.skipped}×, last: {job.last_skip}"
            lines.append(line)
        if not scheduler.running:
            lines.insert(0, "**scheduler stopped**")
        _field(embed, "Scheduled jobs", "\n".join(lines) or "no jobs")

    async def _feedback_field(self, embed: discord.Embed) -> list[float]:
        """Adds the feedback figures; returns recent latencies for the plot."""
        recent = getattr(self.bot.engine, "recent_latencies", None)
        latencies: list[float] = list(recent()) if callable(recent) else []
        store = self.bot.store
        if store is None:
            return latencies
        s = await store.stats()
        _field(
            embed,
            "Feedback",
            f"{s['answers']} answers · {s['votes']} votes (👍 {s['upvotes']} / 👎 {s['downvotes']}) "
            f"from {s['voters']} users · {s['size_bytes'] / 2**20:.1f} MiB",
        )
        return latencies or await store.answers.recent_latencies(LATENCIES_PLOTTED)


async def setup(bot: HexcoreBot) -> None:
    await bot.add_cog(Admin(bot))
