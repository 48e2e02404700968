"""``ftcore eval``: score a model, a checkpoint or an adapter on multiple-choice files (``--mc``),
question/answer sets (``--qa``) and lm-evaluation-harness tasks (``--lm-eval``).

Only click is imported when the module loads; the command checks everything cheap first (the
libraries it needs, MODEL and the adapter, every eval file item by item, the harness's task
names), then loads the model once, as ``ftcore chat`` does, and runs each evaluation on it; with
``--compare``, once with the adapter switched off (the base model) and once with it on.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from ..chat.commands import TRUST_OPTION
from ..errors import FtcoreError


def _say(message: str) -> None:
    click.secho(message, err=True, fg="yellow" if message.startswith(("warning", "note")) else None)


def _quiet() -> None:
    """No library chatter around the results (progress is ftcore's own)."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _labels(plan: Any, compare: bool) -> list[str]:
    """The models to evaluate: ``base`` and ``adapter`` with ``--compare``; else ``adapter`` or ``model``."""
    if compare:
        return ["base", "adapter"]
    return ["adapter" if plan.adapter is not None else "model"]


def _adapter_off(model: Any, label: str) -> Any:
    """The adapter switched off while the base model is evaluated."""
    return model.disable_adapter() if label == "base" else contextlib.nullcontext()


def _split_tasks(values: tuple[str, ...]) -> list[str]:
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


@click.command("eval")
@click.argument("model", type=click.Path())
@click.option("--adapter", type=click.Path(), help="a LoRA/QLoRA checkpoint folder (work_dir/checkpoint-N) to apply")
@click.option("--template", help="chat template (default: the adapter's training template, else the tokenizer's chat_template)")
@click.option("--system", help="system prompt (default: the adapter's recipe data.system, else the template's)")
@click.option("--bits", type=click.Choice(["4", "8"]), help="load the model quantized: 4 = NF4, 8 = int8 (bitsandbytes)")
@click.option("--builder", help="model builder (default: the adapter's recipe, else by model_type, else hf)")
@TRUST_OPTION
@click.option("--compare", is_flag=True, help="evaluate the base model (adapter off) and the adapter, side by side")
@click.option("--mc", "mc_paths", multiple=True, metavar="PATH", help="multiple-choice items: question, choices, answer, subject? (files, folders or globs; repeatable)")
@click.option("--normalize", type=click.Choice(["none", "length"]), default="none", show_default=True,
              help="multiple choice: compare summed log-likelihoods (none), or per character of the choice (length)")
@click.option("--letters", is_flag=True, help="multiple choice as MMLU/C-Eval ask it: the choices listed under the question (A. ...), the letters scored")
@click.option("--qa", "qa_paths", multiple=True, metavar="PATH", help="question/answer set in any supported SFT format: generate answers, score ROUGE/BLEU/exact match")
@click.option("--format", "format_name", default="auto", show_default=True, help="dataset format of --qa (see `ftcore list formats`)")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True, help="longest generated answer, in tokens")
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.0, show_default=True, help="0 = greedy (deterministic)")
@click.option("--top-p", type=click.FloatRange(min=0.0, max=1.0, min_open=True), default=1.0, show_default=True, help="nucleus sampling (with --temperature > 0)")
@click.option("--seed", type=int, default=0, show_default=True, help="random seed (sampling, harness few-shot choice)")
@click.option("--lm-eval", "lm_eval_tasks", multiple=True, metavar="TASKS", help="lm-evaluation-harness tasks, comma-separated (needs ftcore[lm-eval])")
@click.option("--include-path", multiple=True, type=click.Path(), help="a folder of your own harness task YAML files (repeatable)")
@click.option("--num-fewshot", type=click.IntRange(min=0), help="harness few-shot examples (default: each task's own)")
@click.option("--apply-chat-template", is_flag=True, help="harness prompts in the chat template (--mc and --qa always use it)")
@click.option("--limit", type=click.IntRange(min=1), help="only the first N items of each eval set (and of each harness task)")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="sequences per forward pass (choices) or per generate call (answers)")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False), help="where results.json and predictions.jsonl go (default: eval_results/NAME)")
@click.pass_obj
def eval_cmd(app: Any, model: str, adapter: str | None, template: str | None, system: str | None, bits: str | None, builder: str | None, trust_remote_code: bool,
             compare: bool, mc_paths: tuple[str, ...], normalize: str, letters: bool, qa_paths: tuple[str, ...], format_name: str, max_new_tokens: int, temperature: float,
             top_p: float, seed: int, lm_eval_tasks: tuple[str, ...], include_path: tuple[str, ...], num_fewshot: int | None, apply_chat_template: bool,
             limit: int | None, batch_size: int, output_dir: str | None) -> None:
    """Score MODEL (a model folder, a merged checkpoint, or an adapter checkpoint) on eval sets.

    \b
    --mc FILE       multiple choice, by the log-likelihood of each choice: accuracy per subject
    --qa FILE       generated answers against references: ROUGE-1/2/L, BLEU-4, exact match
    --lm-eval TASK  lm-evaluation-harness tasks (local task files with --include-path)

    The results show as tables and go to OUTPUT_DIR/results.json, every item's scores and answers
    to OUTPUT_DIR/predictions.jsonl.
    """
    from ..chat.resolve import plan_chat

    tasks = _split_tasks(lm_eval_tasks)
    if not (mc_paths or qa_paths or tasks):
        raise click.UsageError("nothing to evaluate: give --mc FILE, --qa FILE and/or --lm-eval TASKS")
    if qa_paths:
        from .metrics import check_metric_libraries

        check_metric_libraries()
    if tasks:
        from .harness import check_harness

        check_harness()
    plan = plan_chat(app.parts, model, adapter=adapter, builder=builder, template=template, system=system,
                     bits=int(bits) if bits else None, trust_remote_code=trust_remote_code)
    if compare and plan.adapter is None:
        raise FtcoreError("--compare compares the base model with an adapter, and there is none", hint="give --adapter DIR (or an adapter checkpoint as MODEL)")
    mc_items = qa_items = manager = None
    if mc_paths:
        from .items import read_choice_items

        mc_items = read_choice_items(list(mc_paths), limit)
        if letters:
            from .items import with_letters

            mc_items = [with_letters(item) for item in mc_items]
    if qa_paths:
        from .items import read_qa_items

        qa_items, format_name = read_qa_items(list(qa_paths), app.parts.formats, format_name, limit)
    if tasks:
        from .harness import check_tasks, task_manager

        manager = task_manager(include_path)
        check_tasks(manager, tasks)
    name = (plan.adapter.path if plan.adapter is not None else Path(plan.model_path)).expanduser().resolve().name
    from .report import Output

    out = Output(output_dir or Path("eval_results") / name)
    _quiet()
    from ..chat.resolve import load_chat_model

    chat = load_chat_model(app.parts, plan, warn=_say)
    labels = _labels(plan, compare)
    results: dict[str, Any] = {
        "model": str(Path(plan.model_path).expanduser().resolve()),
        "adapter": str(plan.adapter.path.expanduser().resolve()) if plan.adapter is not None else None,
        "template": chat.template.name, "system": chat.system, "bits": plan.bits, "models": labels,
    }
    if mc_items is not None:
        results["multiple_choice"] = _multiple_choice(chat, mc_items, labels, out, mc_paths, normalize, letters, batch_size)
        out.write_results(results)
    if qa_items is not None:
        from ..chat.generate import Sampling

        sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        results["generation"] = _generation(chat, qa_items, labels, out, qa_paths, format_name, sampling, batch_size)
        out.write_results(results)
    if tasks:
        settings = {"num_fewshot": num_fewshot, "limit": limit, "batch_size": batch_size, "apply_chat_template": apply_chat_template,
                    "max_new_tokens": max_new_tokens, "seed": seed}
        results["lm_eval"] = _harness(chat, tasks, manager, labels, out, include_path, settings)
        out.write_results(results)
    click.echo(f"wrote {out.results} and {out.predictions}", err=True)


def _multiple_choice(chat: Any, items: list, labels: list[str], out: Any, paths: tuple[str, ...], normalize: str, letters: bool, batch_size: int) -> dict[str, Any]:
    from ..ui import console
    from .choice import accuracy, score_choices
    from .report import Progress, table

    section: dict[str, Any] = {"files": list(paths), "normalize": normalize, "letters": letters, "n": len(items)}
    for label in labels:
        with _adapter_off(chat.model, label), Progress(f"multiple choice ({label})", len(items), quiet_up_to=batch_size) as bar:
            scores = score_choices(chat.model, chat.tokenizer, chat.template, items, system=chat.system, batch_size=batch_size, advance=bar.advance)
        subjects, preds = accuracy(items, scores, normalize)
        section[label] = {"accuracy": subjects["all"]["accuracy"], "accuracy_none": subjects["all"]["accuracy_none"],
                          "accuracy_length": subjects["all"]["accuracy_length"], "subjects": subjects}
        out.add_predictions(
            {"kind": "multiple_choice", "model": label, "where": it.where, "subject": it.subject, "question": it.question, "choices": it.choices,
             "answer": it.answer, "pred": pred, "correct": pred == it.answer, "loglikelihoods": s.loglikelihoods, "tokens": s.tokens,
             "scores": s.scores(it.choices, normalize)}
            for it, s, pred in zip(items, scores, preds)
        )
    names = ["all", *sorted(n for n in section[labels[0]]["subjects"] if n != "all")]
    rows = [((n, str(section[labels[0]]["subjects"][n]["n"])), [section[l]["subjects"][n]["accuracy"] for l in labels]) for n in names]
    console().print(table(f"multiple choice: accuracy % (normalize {normalize})", ["subject", "n"], labels, rows))
    return section


def _generation(chat: Any, items: list, labels: list[str], out: Any, paths: tuple[str, ...], format_name: str, sampling: Any, batch_size: int) -> dict[str, Any]:
    from ..ui import console
    from .generation import generate_answers
    from .metrics import score_answers
    from .report import Progress, table

    section: dict[str, Any] = {"files": list(paths), "format": format_name, "n": len(items), "sampling": asdict(sampling)}
    references = [it.reference for it in items]
    for label in labels:
        with _adapter_off(chat.model, label), Progress(f"generation ({label})", len(items), quiet_up_to=batch_size) as bar:
            answers = generate_answers(chat.model, chat.tokenizer, chat.template, items, sampling, system=chat.system, batch_size=batch_size, advance=bar.advance)
        scores, per_item = score_answers(answers, references)
        section[label] = scores
        out.add_predictions(
            {"kind": "generation", "model": label, "where": it.where, "messages": it.messages, "reference": it.reference, "prediction": answer, **row}
            for it, answer, row in zip(items, answers, per_item)
        )
    metrics = ["rouge1", "rouge2", "rougeL", "bleu", "exact_match"]
    rows = [((m,), [section[l][m] for l in labels]) for m in metrics]
    console().print(table(f"generation: {len(items)} answers, scores 0-100 ({section[labels[0]]['bleu_signature']})", ["metric"], labels, rows))
    return section


def _harness(chat: Any, tasks: list[str], manager: Any, labels: list[str], out: Any, include_path: tuple[str, ...], settings: dict[str, Any]) -> dict[str, Any]:
    from ..ui import console
    from .harness import metric_rows, run_harness
    from .report import table

    section: dict[str, Any] = {"tasks": tasks, "include_path": list(include_path), **settings}
    for label in labels:
        with _adapter_off(chat.model, label):
            results, rows = run_harness(chat, tasks, manager, num_fewshot=settings["num_fewshot"], limit=settings["limit"], batch_size=settings["batch_size"],
                                        apply_chat_template=settings["apply_chat_template"], max_new_tokens=settings["max_new_tokens"], seed=settings["seed"])
        section[label] = results
        out.add_predictions({"kind": "lm_eval", "model": label, **row} for row in rows)
    keyed = {label: {(t, m): (v, e) for t, m, v, e in metric_rows(section[label])} for label in labels}
    keys = list(dict.fromkeys(k for label in labels for k in keyed[label]))
    shown = [(k, [keyed[l].get(k, (None, None))[0] for l in labels]) for k in keys]
    console().print(table("lm-evaluation-harness", ["task", "metric"], labels, shown, digits=4))
    return section
