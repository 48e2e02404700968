"""What ``ftcore run`` checks before anything heavy loads: consent to remote code, the checkpoint to resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import FtcoreError
from .checkpoint import read_state, resolve_resume

TRUST_HINT = "pass --trust-remote-code if you trust the Python files shipped with {path}"


def check_remote_code(recipe: Any, allowed: bool) -> None:
    """A recipe may *ask* for the model's own Python code (``model.trust_remote_code``); only the
    ``--trust-remote-code`` flag of the person running ftcore grants it."""
    if recipe["model"]["trust_remote_code"] and not allowed:
        raise FtcoreError(
            "the recipe asks to run Python code shipped with the model (model.trust_remote_code: true), which ftcore never does on a file's say-so",
            where=recipe.lines.get("model.trust_remote_code", recipe.source),
            hint=TRUST_HINT.format(path=recipe["model"]["path"]),
        )


def check_resume(recipe: Any, resume: str | None) -> Path | None:
    """The checkpoint ``--resume`` names (None: start fresh), checked against the recipe's ``max_steps``."""
    if not resume:
        return None
    folder = resolve_resume(resume, Path(recipe["work_dir"]))
    if folder is None:
        return None
    step, max_steps = int(read_state(folder)["step"]), recipe["train"]["max_steps"]
    if max_steps is not None and max_steps <= step:
        raise FtcoreError(
            f"the checkpoint {folder} is at step {step}, but train.max_steps is {max_steps}: there is nothing left to train",
            where="train.max_steps",
            hint=f"raise train.max_steps above {step} to train on, or start a new run without --resume",
        )
    return folder
