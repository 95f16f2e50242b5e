"""Saving and loading the knowledge graph: gzip'd node-link JSON with the rules release and a format version.

A save writes a temp file of its own and renames it into place, so a crash never leaves a half-written graph;
a load that finds a damaged file moves it aside (:func:`hexcore.damaged.move_aside`) and says to rebuild.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import zlib
from pathlib import Path

import networkx as nx

from hexcore.damaged import move_aside
from knowledge.errors import DataMissing, StaleIndex

FORMAT_VERSION = 1


def write_graph(g: nx.MultiDiGraph, path: Path) -> None:
    """Write ``g`` to ``path`` atomically."""
    data = nx.node_link_data(g, edges="edges")
    data["graph"] = {**g.graph, "format": FORMAT_VERSION}
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temp file of its own (two builds on one state dir must not write the same one), renamed into
    # place only once complete: never a half-written graph behind.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw, gzip.open(raw, "wt", encoding="utf-8", compresslevel=6) as fh:
            json.dump(data, fh, ensure_ascii=False, separators=(",", ":"))
        os.chmod(tmp, 0o644)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_graph(path: Path) -> nx.MultiDiGraph:
    """The graph saved at ``path``; DataMissing when there is none, StaleIndex when it is old or damaged."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError as exc:
        raise DataMissing(f"No knowledge graph at {path}; build it with `hexcore index build`.") from exc
    except IsADirectoryError as exc:
        raise StaleIndex(f"Knowledge graph {path} is a folder, not a file; rebuild it.") from exc
    except PermissionError as exc:  # not damaged: nothing to move aside
        raise StaleIndex(f"Knowledge graph {path} is unreadable ({exc}); rebuild it.") from exc
    except (OSError, ValueError, EOFError, zlib.error) as exc:  # truncated (EOFError), garbage, bad JSON
        move_aside(path, exc)
        raise StaleIndex(f"Knowledge graph {path} was damaged ({exc}); rebuild it.") from exc
    meta = data.get("graph") if isinstance(data, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise StaleIndex(f"Knowledge graph {path} has an old format; rebuild it.")
    try:
        graph = nx.node_link_graph(data, directed=True, multigraph=True, edges="edges")
    except (KeyError, TypeError, ValueError, AttributeError, nx.NetworkXError) as exc:
        move_aside(path, exc)
        raise StaleIndex(f"Knowledge graph {path} was damaged ({exc!r}); rebuild it.") from exc
    graph.graph.pop("format", None)
    return graph
