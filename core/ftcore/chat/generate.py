"""Generating an answer to a conversation with a chat template's prompt and stop words."""

from __future__ import annotations

from typing import Any


def stop_token_ids(tokenizer: Any, template: Any) -> list[int]:
    """EOS plus every stop word of the template that is a single token."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for word in getattr(template, "stop_words", ()) or ():
        tok = tokenizer.convert_tokens_to_ids(word)
        if isinstance(tok, int) and tok != tokenizer.unk_token_id and tok not in ids:
            ids.append(tok)
    return ids


def prompt_ids(tokenizer: Any, template: Any, messages: list[dict[str, Any]], system: str | None = None) -> list[int]:
    """Token ids of the prompt for the next assistant turn (BOS as the template asks)."""
    from ..data.encode import render_prompt

    text = render_prompt(messages, template, system=system, tokenizer=tokenizer, bos_token=tokenizer.bos_token)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if getattr(template, "bos", "first") != "none" and tokenizer.bos_token_id is not None and not getattr(template, "use_tokenizer_template", False):
        ids = [tokenizer.bos_token_id] + ids
    return ids


def generate_answer(
    model: Any,
    tokenizer: Any,
    template: Any,
    messages: list[dict[str, Any]],
    *,
    system: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    streamer: Any = None,
) -> str:
    """The model's answer to ``messages`` (greedy when ``temperature`` is 0), stop words removed."""
    import torch

    device = next(p for p in model.parameters()).device
    ids = torch.tensor([prompt_ids(tokenizer, template, messages, system)], device=device)
    was_training = model.training
    model.eval()
    kwargs: dict[str, Any] = {"do_sample": temperature > 0, "max_new_tokens": max_new_tokens, "repetition_penalty": repetition_penalty}
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    eos = stop_token_ids(tokenizer, template)
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                eos_token_id=eos or None,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0),
                use_cache=True,
                streamer=streamer,
                **kwargs,
            )
    finally:
        if was_training:
            model.train()
    text = tokenizer.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)
    for word in getattr(template, "stop_words", ()) or ():
        if word and word in text:
            text = text[: text.index(word)]
    return text.strip()
