"""lm-evaluation-harness on a model ftcore loaded: :class:`FtcoreLM`, the harness's ``HFLM`` over
the model and tokenizer ``ftcore chat`` would use (adapter applied, InternLM2 without remote code,
4/8-bit), with ftcore's chat template when the harness is asked to apply one.

Nothing here imports ``lm_eval`` at module level but :class:`FtcoreLM`'s module, which the
``eval`` command imports only after :func:`check_harness` found the harness installed.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any, Sequence

from ..errors import FtcoreError

EXTRA_HINT = "pip install 'ftcore[lm-eval]' (lm-evaluation-harness)"


def check_harness() -> None:
    """Raise a clear error when lm-evaluation-harness is not installed."""
    try:
        import lm_eval  # noqa: F401
        import lm_eval.models.huggingface  # noqa: F401
    except ImportError as exc:
        raise FtcoreError(f"--lm-eval needs lm-evaluation-harness, which is not installed ({exc})", hint=EXTRA_HINT) from None


def task_manager(include_paths: Sequence[str]) -> Any:
    """The harness's task index: its own tasks and those in ``include_paths`` (which replace same-named ones)."""
    import os

    from lm_eval.tasks import TaskManager

    for path in include_paths:
        if not os.path.isdir(path):
            raise FtcoreError("--include-path must be a folder of harness task YAML files", where=path)
    return TaskManager(include_path=list(include_paths) or None)


def check_tasks(manager: Any, tasks: Sequence[str]) -> list[str]:
    """The task names (globs allowed), each known to the harness; unknown ones with a "did you mean"."""
    known = set(manager.all_tasks)
    problems = []
    for name in tasks:
        if name in known or manager.match_tasks([name]):
            continue
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        problems.append(f"{name!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
    if problems:
        raise FtcoreError(f"lm-evaluation-harness has no task {', '.join(problems)}",
                          hint="give a folder of your own task YAML files with --include-path DIR; `python -m lm_eval ls tasks` lists the harness's")
    return list(tasks)


class _DropNotice(logging.Filter):
    """The harness warns that a model object (not a name) was passed in; that is how ftcore uses it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`pretrained` model kwarg is not of type `str`" not in record.getMessage()


def run_harness(
    chat_model: Any,
    tasks: Sequence[str],
    manager: Any,
    *,
    num_fewshot: int | None,
    limit: int | None,
    batch_size: int,
    apply_chat_template: bool,
    max_new_tokens: int,
    seed: int = 0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run harness ``tasks`` on ``chat_model``: the harness's results (per task: metric -> value)
    and one row per evaluated document (the harness's samples)."""
    import lm_eval

    from .lm_harness import FtcoreLM

    logging.getLogger("lm_eval.models.huggingface").addFilter(_DropNotice())
    lm = FtcoreLM(chat_model, batch_size=batch_size, max_new_tokens=max_new_tokens)
    out = lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, task_manager=manager, log_samples=True,
        apply_chat_template=apply_chat_template, system_instruction=chat_model.system if apply_chat_template else None,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed, bootstrap_iters=1000,
    )
    if out is None:  # only on ranks other than 0 of a multi-process run
        return {}, []
    results = {"results": out.get("results", {}), "groups": out.get("groups", {}), "n-samples": out.get("n-samples", {}),
               "versions": out.get("versions", {}), "n-shot": out.get("n-shot", {}), "higher_is_better": out.get("higher_is_better", {})}
    rows = []
    for task, samples in (out.get("samples") or {}).items():
        for sample in samples:
            arguments = sample.get("arguments") or [()]  # one (context, continuation or generation settings) per request
            prompt = arguments[0][0] if isinstance(arguments, (list, tuple)) and arguments[0] else None
            row = {"task": task, "doc_id": sample.get("doc_id"), "doc": sample.get("doc"), "prompt": prompt,
                   "target": sample.get("target"), "response": sample.get("filtered_resps")}
            row.update({k: sample[k] for k in sample.get("metrics", []) if k in sample})
            rows.append(row)
    return results, rows


def metric_rows(results: dict[str, Any]) -> list[tuple[str, str, float, float | None]]:
    """(task, metric, value, stderr) for every numeric metric of the harness's results."""
    rows = []
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if "_stderr" in key or not isinstance(value, (int, float)) or isinstance(value, bool) or key in ("samples", "sample_len"):
                continue
            metric, _, filt = key.partition(",")
            stderr = metrics.get(f"{metric}_stderr,{filt}") if filt else metrics.get(f"{metric}_stderr")
            label = metric if filt in ("", "none") else f"{metric} ({filt})"
            rows.append((task, label, float(value), float(stderr) if isinstance(stderr, (int, float)) else None))
    return rows
