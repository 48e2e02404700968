"""The text of an answer from its tokens, one token at a time (for the batched server): incremental
detokenizing, stop words cut off and never shown, leading whitespace dropped and trailing
whitespace held back until more text follows, so the streamed pieces join to the final text.
"""

from __future__ import annotations

from typing import Any, Sequence

from .generate import _cut_at_stop, _held_back

#: prompt tokens decoded along with the first answer tokens, so a first token's leading space is right
CONTEXT_TOKENS = 5


class AnswerText:
    """Feed it token ids (:meth:`add`); it returns the new text to show and sees stop words.

    Decoding follows the prefix/read offsets of vLLM's detokenizer: each new token is decoded
    together with a few tokens before it, and only complete characters are released (a byte-level
    tokenizer may split a Chinese character over several tokens), so the work per token is small
    and does not grow with the answer.
    """

    def __init__(self, tokenizer: Any, prompt: Sequence[int], words: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.words = [w for w in words if w]
        self._longest = max((len(w) for w in self.words), default=0)
        self._tokens = list(prompt[-CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._tokens)
        self.raw = ""  # everything decoded so far (special tokens skipped)
        self._searched = 0  # raw[:_searched] holds no stop word
        self.shown = 0  # how much of raw has been released
        self.started = False  # past the leading whitespace
        self.stopped = False  # a stop word was found: the answer ends at it
        self.text = ""  # what has been released

    def _decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token: int) -> str:
        """The text to show after ``token`` (often "", never past a stop word)."""
        if self.stopped:
            return ""
        self._tokens.append(token)
        before = self._decode(self._tokens[self._prefix : self._read])
        after = self._decode(self._tokens[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # nothing new, or half a character
        self.raw += after[len(before) :]
        self._prefix, self._read = self._read, len(self._tokens)
        return self._release(final=False)

    def finish(self) -> str:
        """The rest of the text once the answer ends (trailing whitespace dropped; a character
        left incomplete by the last token shows as U+FFFD, as transformers' streamer shows it)."""
        if not self.stopped and self._read < len(self._tokens):
            before = self._decode(self._tokens[self._prefix : self._read])
            after = self._decode(self._tokens[self._prefix :])
            self.raw += after[len(before) :]
            self._prefix = self._read = len(self._tokens)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        start = max(0, self._searched - self._longest)
        cut, self.stopped = _cut_at_stop(self.raw[start:], self.words) if self.words else (self.raw[start:], False)
        end = start + len(cut)
        if not self.stopped:
            self._searched = len(self.raw)
            if not final:
                end -= _held_back(self.raw, self.words) if self.words else 0
        visible = self.raw[:end].rstrip()  # trailing whitespace waits for what follows it
        if not self.started:
            lead = len(visible) - len(visible.lstrip())
            if lead == len(visible):
                return ""
            self.started, self.shown = True, lead
        if len(visible) <= self.shown:
            return ""
        piece = visible[self.shown :]
        self.shown = len(visible)
        self.text += piece
        return piece
