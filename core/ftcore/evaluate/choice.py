"""Multiple-choice scoring by log-likelihood: each choice is the assistant's answer to the question
(rendered with the chat template), scored by the summed log-probability of its tokens.

Every (question, choice) pair is one sequence: the prompt's ids (as ``ftcore chat`` builds them)
followed by the choice's. Sequences are sorted by length and run in batches, left-padded so that
every choice ends at the last position: the model then only computes logits for the last
``longest choice + 1`` positions (``logits_to_keep``), and one ``gather`` over them gives every
token's log-probability; no Python loop runs over tokens. A sequence longer than the model's
context loses the start of its prompt (as lm-evaluation-harness does). The choice text is scored
without the end-of-turn token, so "I am Zed" and "I am Zed, an assistant" are not penalised for
where the answer stops.

``--normalize none`` compares the sums (lm-evaluation-harness's ``acc``); ``length`` divides
each sum by the choice's length in characters (its ``acc_norm``), which does not favour short
choices and does not depend on the tokenizer. Both accuracies are reported either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .items import ChoiceItem

NORMALIZE = ("none", "length")


@dataclass
class ChoiceScores:
    """One item's scores: the summed log-likelihood and the token count of each choice."""

    loglikelihoods: list[float]
    tokens: list[int]

    def scores(self, choices: Sequence[str], normalize: str) -> list[float]:
        if normalize == "length":
            return [ll / max(len(c), 1) for ll, c in zip(self.loglikelihoods, choices)]
        return list(self.loglikelihoods)


def _context_length(model: Any) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "max_position_embeddings", 0) or 4096)


def _last_logits(model: Any, input_ids: Any, attention_mask: Any, keep: int) -> Any:
    """Logits of the last ``keep`` positions of a left-padded batch."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=keep, use_cache=False)
    except TypeError as exc:  # a model (remote code) without logits_to_keep: every position's logits, then the tail
        if "logits_to_keep" not in str(exc):
            raise
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return out.logits[:, -keep:]


def score_choices(
    model: Any,
    tokenizer: Any,
    template: Any,
    items: Sequence[ChoiceItem],
    *,
    system: str | None = None,
    batch_size: int = 8,
    advance: Callable[[int], None] = lambda n: None,
) -> list[ChoiceScores]:
    """The log-likelihood of every choice of every item, in item order; ``advance(n)`` is called
    as each batch finishes with the number of items it completed."""
    import torch

    from ..chat.generate import prompt_ids

    prompts = [prompt_ids(tokenizer, template, [{"role": "user", "content": item.question}], item.system or system) for item in items]
    flat = [c for item in items for c in item.choices]
    cont = tokenizer(flat, add_special_tokens=False)["input_ids"]
    owner = [(i, k) for i, item in enumerate(items) for k in range(len(item.choices))]
    limit = _context_length(model)
    seqs = []
    for (i, _), c in zip(owner, cont):
        c = c[-limit:]
        seqs.append((prompts[i] + c)[-limit:] if len(prompts[i]) + len(c) > limit else prompts[i] + c)
    order = sorted(range(len(seqs)), key=lambda j: -len(seqs[j]))
    sums = [0.0] * len(seqs)
    left = [len(item.choices) for item in items]  # choices still to score, per item
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(seqs[j]) for j in batch)
            lengths = torch.tensor([min(len(cont[j]), len(seqs[j]) - 1) for j in batch])  # the first token has no prediction
            keep = int(lengths.max())
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, j in enumerate(batch):
                ids[row, width - len(seqs[j]) :] = torch.tensor(seqs[j])
                mask[row, width - len(seqs[j]) :] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = _last_logits(model, ids, mask, keep + 1)[:, :-1].float()  # position t predicts token t + 1
            targets = ids[:, width - keep :]
            logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            in_choice = torch.arange(keep).unsqueeze(0) >= (keep - lengths).unsqueeze(1)
            totals = (logprobs.cpu() * in_choice).sum(-1).tolist()
            done = 0
            for j, total in zip(batch, totals):
                sums[j] = total
                i = owner[j][0]
                left[i] -= 1
                done += left[i] == 0
            advance(done)
    out, pos = [], 0
    for item in items:
        n = len(item.choices)
        out.append(ChoiceScores(sums[pos : pos + n], [len(c) for c in cont[pos : pos + n]]))
        pos += n
    return out


def accuracy(items: Sequence[ChoiceItem], scores: Sequence[ChoiceScores], normalize: str) -> tuple[dict[str, Any], list[int]]:
    """Accuracy (0-100) overall (``all``) and per subject, under both normalisations, with
    ``accuracy`` the one ``normalize`` names; and each item's predicted choice under it."""
    preds = {n: [max(range(len(it.choices)), key=s.scores(it.choices, n).__getitem__) for it, s in zip(items, scores)] for n in NORMALIZE}
    groups: dict[str, list[int]] = {"all": list(range(len(items)))}
    for i, item in enumerate(items):
        if item.subject != "all":
            groups.setdefault(item.subject, []).append(i)
    table = {}
    for name, members in groups.items():
        row: dict[str, Any] = {"n": len(members)}
        for n in NORMALIZE:
            row[f"accuracy_{n}"] = 100.0 * sum(preds[n][i] == items[i].answer for i in members) / max(len(members), 1)
        row["accuracy"] = row[f"accuracy_{normalize}"]
        table[name] = row
    return table, preds[normalize]
