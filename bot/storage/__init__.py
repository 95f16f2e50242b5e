"""Feedback storage: answers, votes and retraining runs in one SQLite file (aiosqlite).

* ``database``: the two connections and the one serialized, durable writer (WAL, group commit).
* ``schema``: the versioned migrations (``PRAGMA user_version``).
* ``answers``, ``votes``, ``runs``, ``users``: one repository per table (``users``: a user's data
  across them, for ``/forgetme``).
* ``store``: :class:`FeedbackStore`, which opens the file and holds the repositories.

Times are stored as UTC unix seconds (REAL) and returned as aware ``datetime``s.
"""

from bot.storage.database import MAX_BATCH, Database
from bot.storage.errors import StoreError, UnknownAnswer
from bot.storage.runs import RetrainRun
from bot.storage.schema import MIGRATIONS, SCHEMA_VERSION
from bot.storage.store import FeedbackStore, database_path, open_store
from bot.storage.votes import Vote

__all__ = [
    "MAX_BATCH",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Database",
    "FeedbackStore",
    "RetrainRun",
    "StoreError",
    "UnknownAnswer",
    "Vote",
    "database_path",
    "open_store",
]
