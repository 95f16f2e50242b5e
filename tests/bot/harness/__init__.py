"""Discord without Discord: every fake the bot tests need, in one tested package.

Modules: ``records`` (sent messages, interaction records, the clock, the error log), ``fake_http`` (the
HTTP and interaction endpoints), ``payloads`` and ``interactions`` (what the harness sends), ``core``
(:class:`DiscordHarness`). Import from the package.

* dpytest runs the gateway side (guild, channels, members, messages, reactions) and its fake HTTP.
  dpytest refuses sharded clients, so :meth:`DiscordHarness.start` does its ``configure`` itself.
* :class:`HarnessHttp` extends dpytest's fake HTTP with what it lacks: threads, command sync, NotFound
  on deleted messages and channels, and a record of every payload (components, allowed mentions).
* :class:`InteractionServer` replaces the interaction endpoints of ``AsyncWebhookAdapter`` (callback,
  followups, edits, deletes) and behaves like Discord: 3 s to acknowledge, one acknowledgement only,
  the first followup after a defer completes the deferred message, tokens expire after 15 minutes,
  edits of a deleted message raise NotFound.
* Interactions are REAL ``discord.Interaction`` objects built from gateway payloads and dispatched the
  way the gateway does (``ConnectionState.parse_interaction_create`` -> ``CommandTree._call`` or the
  view store), so checks, transformers, autocomplete and persistent views all run for real.

Time: :class:`FakeClock` is the bot's clock (``HexcoreBot(clock=...)``); ``clock.advance(s)`` moves both
monotonic and wall time, so deadlines (3 s ack, 15 min token, cooldowns, stream throttling) are tested
without sleeping.

Usage (the ``harness`` fixture in tests/bot/conftest.py does the setup)::

    h = await DiscordHarness.start(bot, clock=clock)     # after this, setup_hook has run
    rec = await h.slash("ask", question="...", user=1)    # user: member or index; channel=...; wait=False
    rec = await h.slash("admin ban", options={"user": h.members[1]})  # subcommands; clashing option names
    rec.kinds(); rec.callback_type; rec.original.text(); rec.followups; rec.ephemeral_text()
    choices = await h.autocomplete("card", "name", name="tarm")
    click = await h.click(rec.original, views.HELPFUL_ID, user=2)
    done = await h.submit_modal(click, {"Reason": "wrong rule"})     # after a button that showed a modal
    msg = await h.message("[[Ponder]]", channel=thread)  # a member posts; waits for on_message handlers
    await h.react(rec.original, "👍", user=1)             # raw (and cached) reaction events
    h.bot_messages(channel); h.delete_message(id); await h.archive_thread(id); await h.delete_thread(id)
    h.set_permissions(channel, h.guild.me, send_messages=False); h.send_attempts
    h.synced[None]                                        # command payloads synced globally
    h.errors.records                                      # ERROR logs from discord.py and the bot
    await h.settle()                                      # pending events and bot.background tasks
    await h.close()
"""

from tests.bot.harness.core import DiscordHarness
from tests.bot.harness.fake_http import HarnessHttp, InteractionServer
from tests.bot.harness.records import (
    ATTACHMENT_LIMIT,
    AUTOCOMPLETE,
    CHANNEL_MESSAGE,
    DEFERRED_MESSAGE,
    DEFERRED_UPDATE,
    EPHEMERAL,
    LOADING,
    MODAL,
    UPDATE_MESSAGE,
    FakeClock,
    InteractionRecord,
    LogCapture,
    Reply,
    SentMessage,
    http_error,
)

__all__ = [
    "ATTACHMENT_LIMIT",
    "AUTOCOMPLETE",
    "CHANNEL_MESSAGE",
    "DEFERRED_MESSAGE",
    "DEFERRED_UPDATE",
    "EPHEMERAL",
    "LOADING",
    "MODAL",
    "UPDATE_MESSAGE",
    "DiscordHarness",
    "FakeClock",
    "HarnessHttp",
    "InteractionRecord",
    "InteractionServer",
    "LogCapture",
    "Reply",
    "SentMessage",
    "http_error",
]
