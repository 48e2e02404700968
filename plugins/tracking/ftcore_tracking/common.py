"""What both trackers log: a run's numeric step metrics, its recipe as flat parameters, the run id a resumed run continues."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftcore.api import FtcoreError


def need(module: str, extra: str) -> Any:
    """``import module``, or an error naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FtcoreError(f"the {extra} hook needs {module} ({exc})", hint=f"pip install 'ftcore[{extra}]'") from None


def numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """Every number a step reported (loss, lr, throughput, an objective's rewards, eval loss), not the step itself."""
    return {k: float(v) for k, v in metrics.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def flat(data: Any, prefix: str = "") -> dict[str, str]:
    """A recipe as ``{"model.path": "...", "train.lr": "0.0002", ...}`` (lists as their text)."""
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: str(data)}


def run_id_file(work_dir: Path, tracker: str) -> Path:
    """Where a run keeps its tracker run id, so that ``--resume`` logs into the same tracked run."""
    return Path(work_dir) / f"{tracker}-run-id"
