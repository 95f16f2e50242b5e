"""One cog per feature; each module has an async ``setup(bot)`` and holds Discord glue only.

The engine does the work; cogs validate input, call it in a few lines and format the result through
``bot.formatting``.
"""
