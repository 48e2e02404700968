"""Checkpoints: atomic writes (temporary folder, then rename), the ``latest`` pointer, rotation, lookup."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

from ..errors import FtcoreError

STATE_FILE = "trainer_state.json"
LATEST = "latest"
#: which checkpoint had the best eval loss so far: ``{"checkpoint": "checkpoint-N", "eval_loss": x}``
BEST = "best.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, g = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, g))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_complete(folder: Path) -> bool:
    """A checkpoint counts only once its state file (written last) says it is complete."""
    try:
        return json.loads((folder / STATE_FILE).read_text()).get("complete") is True
    except (OSError, ValueError):
        return False


def list_checkpoints(work_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``work_dir``, oldest first."""
    found = []
    if work_dir.is_dir():
        for entry in work_dir.iterdir():
            m = _NAME.match(entry.name)
            if m and entry.is_dir() and is_complete(entry):
                found.append((int(m.group(1)), entry))
    return sorted(found)


def latest_checkpoint(work_dir: Path) -> Path | None:
    """The newest complete checkpoint: the ``latest`` pointer if valid, else a scan."""
    pointer = work_dir / LATEST
    if pointer.is_file():
        candidate = work_dir / pointer.read_text().strip()
        if is_complete(candidate):
            return candidate
    found = list_checkpoints(work_dir)
    return found[-1][1] if found else None


def resolve_resume(resume: str, work_dir: Path) -> Path | None:
    """``auto`` -> latest complete checkpoint in work_dir (None if there is none); else PATH."""
    if resume == "auto":
        return latest_checkpoint(work_dir)
    path = Path(resume)
    if not path.is_dir():
        raise FtcoreError(f"checkpoint {resume!r} does not exist", where="--resume", hint=f"use --resume auto or a checkpoint-N folder in {work_dir}")
    if not is_complete(path):
        raise FtcoreError(f"{resume} is not a complete checkpoint (no {STATE_FILE} marked complete)", where="--resume", hint="it was probably interrupted while being written; use an earlier checkpoint or --resume auto")
    return path


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def begin_checkpoint(work_dir: Path, step: int) -> Path:
    """A fresh temporary folder for ``checkpoint-STEP`` (a fixed name every rank can find)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = work_dir / f".tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def finish_checkpoint(work_dir: Path, step: int, tmp: Path, state: dict[str, Any], keep: int) -> Path:
    """Mark ``tmp`` complete, rename it to ``checkpoint-STEP``, move ``latest``, drop old ones.

    The state file is written last with ``complete: true``, then the folder is renamed into
    place: a crash at any point leaves the previous checkpoints or the new complete one,
    never a half-written ``checkpoint-STEP``.
    """
    final = work_dir / f"checkpoint-{step}"
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step, "complete": True}, indent=2))
    if final.exists():
        trash = work_dir / f".trash-{final.name}-{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _write_text_atomic(work_dir / LATEST, final.name)
    prune(work_dir, keep)
    return final


def prune(work_dir: Path, keep: int) -> None:
    """Remove all but the ``keep`` newest complete checkpoints (0 keeps all) and the best one."""
    if keep > 0:
        best = (read_best(work_dir) or {}).get("checkpoint")
        for _, old in list_checkpoints(work_dir)[:-keep]:
            if old.name != best:
                shutil.rmtree(old, ignore_errors=True)


def read_best(work_dir: Path) -> dict[str, Any] | None:
    """What :func:`mark_best` last wrote, if its checkpoint still exists."""
    try:
        best = json.loads((work_dir / BEST).read_text())
    except (OSError, ValueError):
        return None
    return best if is_complete(work_dir / str(best.get("checkpoint"))) else None


def mark_best(work_dir: Path, folder: Path, value: float) -> None:
    """Record ``folder`` (a complete checkpoint) as the best so far, atomically."""
    _write_text_atomic(work_dir / BEST, json.dumps({"checkpoint": folder.name, "eval_loss": value}))


def read_state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / STATE_FILE).read_text())
