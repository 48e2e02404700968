"""Answers to a question/answer set, generated in batches (greedy unless the sampling says otherwise).

Prompts are built as ``ftcore chat`` builds them (chat template, system prompt, BOS), sorted by
length and left-padded into batches for one ``generate`` call each. A row stops at EOS or a
one-token stop word (``eos_token_id``), or at a longer stop word (``stop_strings``); its text is
cut at the first stop word, as chat cuts it. A prompt too long for the model's context keeps its
end (the question), so every item gets an answer.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..errors import FtcoreError, Problem, ValidationError
from .items import SHOWN, QAItem


def _prompts(tokenizer: Any, template: Any, items: Sequence[QAItem], system: str | None) -> list[list[int]]:
    """Every item's prompt ids; conversations the template cannot render are reported together, with file:line."""
    from ..chat.generate import prompt_ids

    out, problems = [], []
    for item in items:
        try:
            out.append(prompt_ids(tokenizer, template, item.messages, system))
        except FtcoreError as exc:  # RecordError: a conversation of the wrong shape
            problems.append(Problem(getattr(exc, "field", None) or "messages", exc.message, location=item.where))
    if problems:
        raise ValidationError(problems=problems[:SHOWN], source="the question/answer file")
    return out


def _eos_ids(model: Any, tokenizer: Any, template: Any) -> list[int]:
    from ..chat.generate import stop_token_ids

    ids = stop_token_ids(tokenizer, template)
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return ids + [t for t in (extra if isinstance(extra, (list, tuple)) else [extra]) if isinstance(t, int) and t not in ids]


def generate_answers(
    model: Any,
    tokenizer: Any,
    template: Any,
    items: Sequence[QAItem],
    sampling: Any,
    *,
    system: str | None = None,
    batch_size: int = 8,
    advance: Callable[[int], None] = lambda n: None,
) -> list[str]:
    """The model's answer to every item, in item order (stop words removed, stripped)."""
    import torch

    prompts = _prompts(tokenizer, template, items, system)
    words = [w for w in (*(getattr(template, "stop_words", ()) or ()), *sampling.stop) if w]
    eos = _eos_ids(model, tokenizer, template)
    context = int(getattr(getattr(model, "config", None), "max_position_embeddings", 0) or 4096)
    room = max(context - sampling.max_new_tokens, 1)
    prompts = [p[-room:] for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    multi = [w for w in words if len(tokenizer(w, add_special_tokens=False)["input_ids"]) > 1]
    extra: dict[str, Any] = {"stop_strings": multi, "tokenizer": tokenizer} if multi else {}
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers = [""] * len(prompts)
    device = next(model.parameters()).device
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), eos_token_id=eos or None, pad_token_id=pad,
                                 use_cache=True, **sampling.generate_kwargs(), **extra)
            for row, i in enumerate(batch):
                new = out[row, width:].tolist()
                cut = next((k for k, t in enumerate(new) if t in eos), len(new))
                text = tokenizer.decode(new[:cut], skip_special_tokens=True)
                stop = min((text.index(w) for w in words if w in text), default=len(text))
                answers[i] = text[:stop].strip()
            advance(len(batch))
    return answers
