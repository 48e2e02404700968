"""That every process of a distributed run has the same recipe and data: fingerprints compared before weights load."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from typing import Any

from ..errors import FtcoreError


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A recipe as ``{"train.lr": "0.005", ...}`` (dotted keys, values as YAML would show them)."""
    if isinstance(value, dict) and value:
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(value, sort_keys=True, default=str)}


def fingerprint(recipe: dict[str, Any], data_keys: list[str]) -> dict[str, Any]:
    """This process's view of the run: where it runs, its resolved recipe (flattened) and a hash of
    its data (the processed-data cache keys: the files' content, tokenizer, template and data settings)."""
    settings = flatten(recipe)
    return {
        "rank": int(os.environ.get("RANK", 0)),
        "node": int(os.environ.get("GROUP_RANK", 0)),  # torchrun's node rank
        "host": socket.gethostname(),
        "settings": settings,
        "recipe": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12],
        "data": hashlib.sha256("|".join(data_keys).encode()).hexdigest()[:12],
    }


def differences(mine: dict[str, str], theirs: dict[str, str], limit: int = 3) -> str:
    """The first ``limit`` keys whose values differ: ``train.lr=0.001 (rank 0: 0.005)``."""
    keys = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    shown = [f"{k}={mine.get(k, '(unset)')} (rank 0: {theirs.get(k, '(unset)')})" for k in keys[:limit]]
    return ", ".join(shown) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_agreement(strategy: Any, mine: dict[str, Any]) -> None:
    """Raise on every process when any process's recipe or data differs from rank 0's."""
    if strategy.world_size == 1:
        return
    everyone = strategy.all_gather_object(mine)
    first = everyone[0]
    for key, what, hint in (
        ("recipe", "recipe", "start every node with the same recipe file, overrides and paths (`ftcore show RECIPE key=value ...` prints the resolved recipe to compare)"),
        ("data", "data", "every node needs the same data files (same content at the same paths), tokenizer and template"),
    ):
        odd = [p for p in everyone if p[key] != first[key]]
        if odd:
            nodes = sorted({(p["node"], p["host"]) for p in odd})
            where = ", ".join(f"node {node} ({host})" for node, host in nodes)
            ranks = ", ".join(str(p["rank"]) for p in odd)
            detail = differences(odd[0]["settings"], first["settings"]) if key == "recipe" else f"data fingerprint {odd[0][key]} vs {first[key]}"
            raise FtcoreError(
                f"the processes of this run do not have the same {what}: {where}, rank(s) {ranks}, differ from rank 0 on node {first['node']} ({first['host']}): "
                f"{detail}; nothing was loaded",
                hint=hint,
            )
