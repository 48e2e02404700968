"""Generating answers with a chat template's prompt and stop words: all at once
(:func:`generate_answer`) or streamed (:class:`Generation`), sampled as a :class:`Sampling`
says, for ``ftcore chat``, ``ftcore serve``, the ``evaluate_chat`` training hook and plugins.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Sequence


@dataclass(frozen=True)
class Sampling:
    """How an answer is generated: the one set of sampling settings of chat, serve, the
    ``evaluate_chat`` hook and plugins (the defaults are greedy).

    ``temperature`` 0 is greedy (``top_p`` and ``top_k`` are then unused); ``top_k`` 0 is off;
    ``repetition_penalty`` above 1 discourages repeating; ``stop`` adds stop words to the
    template's; ``seed`` makes sampling reproducible (each answer starts from it).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))  # e.g. a list from a JSON request

    def generate_kwargs(self) -> dict[str, Any]:
        """The matching ``model.generate`` keyword arguments (stop words and seed aside)."""
        kwargs: dict[str, Any] = {"do_sample": self.temperature > 0, "max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.temperature > 0:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


@dataclass
class ChatModel:
    """A model ready to answer: tokenizer, model (with adapter), template, system prompt.

    A subclass that takes images sets ``accepts_images`` and reads them from the messages
    (``messages[i]["images"]``: raw image bytes) in :meth:`generation`.
    """

    model: Any
    tokenizer: Any
    template: Any
    system: str | None = None
    name: str = "model"
    #: serialises generation: one model, one answer at a time
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: whether messages may carry images (``messages[i]["images"]``: raw image bytes)
    accepts_images: bool = False

    def generation(self, messages: list[dict[str, Any]], sampling: Sampling = Sampling()) -> "Generation":
        """The answer to ``messages`` (with this model's system prompt), ready to stream."""
        return Generation(self.model, self.tokenizer, self.template, messages, sampling, system=self.system)


def stop_token_ids(tokenizer: Any, template: Any) -> list[int]:
    """EOS plus every stop word of the template that is a single token."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for word in getattr(template, "stop_words", ()) or ():
        tok = tokenizer.convert_tokens_to_ids(word)
        if isinstance(tok, int) and tok != tokenizer.unk_token_id and tok not in ids:
            ids.append(tok)
    return ids


def _eos_ids(model: Any, tokenizer: Any, template: Any) -> list[int]:
    """``stop_token_ids`` plus the model's own generation_config EOS ids (e.g. a merged model's)."""
    ids = stop_token_ids(tokenizer, template)
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None) if config is not None else None
    for tok in extra if isinstance(extra, (list, tuple)) else ([extra] if extra is not None else []):
        if isinstance(tok, int) and tok not in ids:
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


def _stop_words(template: Any, extra: Sequence[str] = ()) -> list[str]:
    words = [w for w in (getattr(template, "stop_words", ()) or ()) if w]
    return words + [w for w in extra if w and w not in words]


def _stopping_criteria(tokenizer: Any, words: Sequence[str], prompt_len: int, cancel: threading.Event | None) -> Any:
    """Stop when any of ``words`` shows up in the generated text (multi-token stop words), or on ``cancel``."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    window = max([len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in words] or [0]) + 4

    class StopOnWords(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = bool(cancel is not None and cancel.is_set())
            if not done and words:
                tail = input_ids[0, max(prompt_len, input_ids.shape[1] - window) :].tolist()
                text = tokenizer.decode(tail, skip_special_tokens=False)
                done = any(w in text for w in words)
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopOnWords()])


def _cut_at_stop(text: str, words: Sequence[str]) -> tuple[str, bool]:
    cut = min((text.index(w) for w in words if w in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def generate_answer(
    model: Any,
    tokenizer: Any,
    template: Any,
    messages: list[dict[str, Any]],
    sampling: Sampling = Sampling(max_new_tokens=128),
    *,
    system: str | None = None,
) -> str:
    """The model's whole answer to ``messages`` (greedy unless ``sampling`` says otherwise), stop
    words removed; a model in training mode is switched to eval mode meanwhile (evaluate_chat)."""
    was_training = model.training
    model.eval()
    try:
        return Generation(model, tokenizer, template, messages, sampling, system=system).run()
    finally:
        if was_training:
            model.train()


class Generation:
    """One answer, streamed: iterate for text pieces as tokens are generated.

    Stop words (the template's plus ``sampling.stop``) end the answer and are never shown; text
    that could be the start of a stop word is held back until it is clear. Afterwards
    ``text``, ``finish_reason`` (``stop`` or ``length``), ``prompt_tokens`` and
    ``completion_tokens`` describe the answer. Closing the iterator early (a client that
    went away, Ctrl-C), setting ``cancel`` or calling :meth:`interrupt` (from any thread)
    stops generation at the next token.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        template: Any,
        messages: list[dict[str, Any]],
        sampling: Sampling = Sampling(),
        *,
        system: str | None = None,
        ids: list[int] | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.tokenizer, self.template = model, tokenizer, template
        # ``ids``/``inputs``: a prompt prepared by the caller and extra generate() inputs
        # (e.g. an image model's pixel_values); otherwise rendered from ``messages``.
        self.ids = ids if ids is not None else prompt_ids(tokenizer, template, messages, system)  # raises on a malformed conversation
        self.inputs = inputs or {}
        self.sampling = sampling
        self.words = _stop_words(template, sampling.stop)
        self.text = ""
        self.finish_reason = "stop"
        self.prompt_tokens = len(self.ids)
        self.completion_tokens = 0
        self.cancel = threading.Event()
        self._interrupted: str | None = None  # the finish_reason an interrupt() asked for

    @property
    def max_new_tokens(self) -> int:
        return self.sampling.max_new_tokens

    def limit(self, max_new_tokens: int) -> None:
        """Answer with at most ``max_new_tokens`` tokens (e.g. what fits in the model's context); before iterating."""
        self.sampling = replace(self.sampling, max_new_tokens=max_new_tokens)

    def interrupt(self, finish_reason: str = "length") -> None:
        """Stop at the next token, from any thread; an answer cut short this way ends with
        ``finish_reason`` (e.g. "length" when a time limit passed)."""
        if self._interrupted is None:
            self._interrupted = finish_reason
        self.cancel.set()

    def _run(self, streamer: Any, result: dict[str, Any]) -> None:
        import torch

        try:
            device = next(p for p in self.model.parameters()).device
            ids = torch.tensor([self.ids], device=device)
            eos = _eos_ids(self.model, self.tokenizer, self.template)
            if self.sampling.seed is not None:
                torch.manual_seed(self.sampling.seed)
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    eos_token_id=eos or None,
                    pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (eos[0] if eos else 0),
                    use_cache=True,
                    streamer=streamer,
                    stopping_criteria=_stopping_criteria(self.tokenizer, self.words, ids.shape[1], self.cancel),
                    **self.sampling.generate_kwargs(),
                    **self.inputs,
                )
            new = out[0, ids.shape[1] :].tolist()
            result["tokens"] = new
            result["eos"] = bool(new) and new[-1] in eos
        except BaseException as exc:  # re-raised in the consuming thread
            result["error"] = exc
            streamer.end()

    def __iter__(self) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=0.1)
        result: dict[str, Any] = {}
        thread = threading.Thread(target=self._run, args=(streamer, result), daemon=True)
        thread.start()
        raw = ""  # everything decoded so far
        shown = 0  # how much of raw has been yielded
        stopped = False
        try:
            while True:
                try:
                    piece = next(streamer)
                except StopIteration:
                    break
                except queue.Empty:
                    if not thread.is_alive() and "error" in result:
                        break
                    continue
                if stopped:
                    continue  # drain
                raw += piece
                cut, stopped = _cut_at_stop(raw, self.words)
                if stopped:
                    self.cancel.set()
                    end = len(cut)
                else:
                    end = len(raw) - _held_back(raw, self.words)
                if not shown:
                    lead = len(raw[:end]) - len(raw[:end].lstrip())
                    if lead == end:
                        continue  # only whitespace so far: the answer has not started
                    shown = lead
                if end > shown:
                    out = raw[shown:end]
                    shown = end
                    self.text += out
                    yield out
            thread.join()
            if "error" in result:
                raise result["error"]
            if not stopped:
                tail = _cut_at_stop(raw, self.words)[0][shown:] if shown else _cut_at_stop(raw, self.words)[0].lstrip()
                if tail:
                    self.text += tail
                    yield tail
            tokens = result.get("tokens", [])
            self.completion_tokens = len(tokens)
            if not stopped and not result.get("eos") and len(tokens) >= self.max_new_tokens:
                self.finish_reason = "length"
            elif not stopped and not result.get("eos") and self._interrupted is not None:
                self.finish_reason = self._interrupted
            self.text = self.text.rstrip()
        finally:
            self.cancel.set()
            if thread is not threading.current_thread():  # a generator closed by GC may be finalised anywhere
                thread.join(timeout=60)

    def run(self) -> str:
        """Generate the whole answer and return it."""
        for _ in self:
            pass
        return self.text


def _held_back(text: str, words: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop word."""
    best = 0
    for w in words:
        for n in range(min(len(w) - 1, len(text)), best, -1):
            if text.endswith(w[:n]):
                best = n
                break
    return best
