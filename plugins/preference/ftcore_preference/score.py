"""``ftcore score``: a trained reward model's score for each answer to a prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ftcore.api import FtcoreError


def load_reward_model(parts: Any, adapter: Path, base: str | None = None) -> tuple[Any, Any, Any]:
    """(model, tokenizer, template) of a reward-model checkpoint: its base loaded with a score head
    by the builder it was trained with, the adapter (with the head) on it; eval mode, CPU or GPU."""
    import torch
    import yaml
    from peft import PeftModel

    recipe_file = adapter / "recipe.yaml"
    if not (adapter / "adapter_config.json").is_file() or not recipe_file.is_file():
        raise FtcoreError(f"{adapter} is not a reward-model checkpoint (adapter_config.json and recipe.yaml)", hint="give a checkpoint-N folder of a run with objective.name=reward")
    recipe = yaml.safe_load(recipe_file.read_text(encoding="utf-8"))
    if recipe.get("objective", {}).get("name") != "reward":
        raise FtcoreError(f"{adapter} was trained with objective {recipe.get('objective', {}).get('name', 'sft')!r}, not a reward model", where=str(recipe_file))
    base = base or recipe["model"]["path"]
    builder = parts.models.get(recipe["model"].get("builder", "hf"))
    tokenizer = builder.load_tokenizer(str(adapter))  # the checkpoint keeps the training tokenizer
    model = builder.load_model(str(base), head="sequence_classification", dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    if torch.cuda.is_available():
        model.to("cuda")
    template = parts.templates.get(recipe["data"]["template"]) if recipe.get("data", {}).get("template") else None
    return model, tokenizer, template


def score_answers(model: Any, tokenizer: Any, template: Any, prompt: str, answers: list[str], system: str | None = None) -> list[float]:
    """Each answer's score, rendered and packed exactly as in training (the answer after the prompt)."""
    import torch

    from ftcore.api import TrainingPlan, collate_rows, encode_batch, finish_plan, pack

    from .objectives import answer_scores

    samples = [{"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": a}], "side": i % 2} for i, a in enumerate(answers)]
    encoded = encode_batch(samples, tokenizer, template, 1 << 20, system=system)
    rows = pack(encoded, 1 << 20, packed=False, shuffle=False, extras={"side": [s["side"] for s in samples]})
    batch = collate_rows([rows.row(i) for i in range(len(rows))], tokenizer.pad_token_id or 0)
    device = next(model.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    with torch.no_grad():
        return answer_scores(finish_plan(TrainingPlan(model), flat=False), model, batch).tolist()


@click.command("score")
@click.argument("adapter", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="the question or conversation turn the answers reply to")
@click.option("--answer", "answers", multiple=True, required=True, help="an answer to score (give --answer several times)")
@click.option("--base", help="the base model folder (default: the one the checkpoint was trained on)")
@click.option("--system", help="system prompt (default: the template's)")
@click.pass_obj
def score_cmd(app: Any, adapter: Path, prompt: str, answers: tuple[str, ...], base: str | None, system: str | None) -> None:
    """Score ANSWERS to PROMPT with a reward model (a checkpoint of objective.name=reward): higher is better."""
    model, tokenizer, template = load_reward_model(app.parts, adapter, base)
    scores = score_answers(model, tokenizer, template, prompt, list(answers), system)
    width = max(len(a) for a in answers)
    for answer, value in sorted(zip(answers, scores), key=lambda pair: -pair[1]):
        click.echo(f"{value:+.4f}  {answer.ljust(width)}")
