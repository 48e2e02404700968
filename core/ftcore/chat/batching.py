"""Continuous batching for ``ftcore serve``: the :class:`Batcher` decodes every running answer
together, one token per answer per step, and answers join and leave between steps.

Why it is shaped this way:

- **One scheduler thread owns the model.** Requests hand it a :class:`Job` (a
  :class:`~ftcore.chat.generate.Generation`: prompt ids, sampling, stop words) and read its text
  pieces back on the event loop; nothing else runs the model, so peft's per-row adapter hooks and
  the shared KV cache never see two callers at once.
- **A left-padded batch over one KV cache.** Rows are right-aligned: row ``i`` holds its tokens in
  the last columns and zeros (masked out by the attention mask) before them; each row's position
  ids count its own tokens only, so a row computes exactly what it would alone. Joining answers
  are prefilled together and their cache rows padded onto the running batch's; leaving rows are
  dropped with an index select and columns that every row has left are cut away. transformers'
  own continuous batching (``generate_batch``) packs every row into one flattened sequence, where
  peft's per-row ``adapter_names`` cannot tell rows apart, and on a 2-core CPU it took ~130 ms a
  token for one request against ~20 ms for ``generate``: this scheduler keeps peft's mixed-adapter
  batches and one-request latency.
- **Per step, not per token.** A step is one forward pass for the whole batch and one vectorized
  sampling; Python touches each row only to detokenize its new token and see whether it ended.
- **Bounded.** At most ``max_batch`` rows decode together; at most ``max_queue`` answers wait for
  a row, and :meth:`Batcher.submit` refuses more (:class:`QueueFull`, a 429 with Retry-After).
  A request that goes away cancels its job, which leaves the queue at once or the batch at the
  next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections import deque
from typing import Any, AsyncIterator, Awaitable, Callable

from .generate import Generation, _eos_ids
from .pieces import AnswerText

#: how often a waiting request checks whether its client is still there, in seconds
POLL_S = 0.25
#: after a deadline, how long the answer may take to stop at its next step, in seconds
STOP_GRACE_S = 10.0
#: the window of :meth:`Batcher.tokens_per_second`, in seconds
RATE_WINDOW_S = 10.0
#: the adapter name peft gives rows that use the base model alone
BASE_ROW = "__base__"


class Unavailable(Exception):
    """The model could not answer: busy until the deadline, or the server is stopping (503)."""


class QueueFull(Exception):
    """Too many answers are waiting already (429, with Retry-After)."""


class Job:
    """One answer in the batcher: its :class:`Generation` (filled in with the result: ``text``,
    ``finish_reason``, ``completion_tokens``), the adapter it runs with, and its text pieces on
    their way to the event loop."""

    def __init__(self, generation: Generation, adapter: str | None, eos: frozenset[int]) -> None:
        self.generation = generation
        self.adapter = adapter
        self.eos = eos
        self.text = AnswerText(generation.tokenizer, generation.ids, generation.words)
        self.tokens: list[int] = []
        self.generator: Any = None  # a torch.Generator for an answer sampled with a seed, made by the scheduler
        self.reason: str | None = None  # finish_reason asked for by stop(), e.g. "length" at a deadline
        self.joined = False  # it got a row in the batch
        self.ended = False
        self.pieces: deque[tuple[str, Any]] = deque()  # ("piece", text) | ("end", None) | ("error", exc)
        self.arrived = asyncio.Event()

    @property
    def cancelled(self) -> bool:
        return self.generation.cancel.is_set()

    def stop(self, reason: str | None = None) -> None:
        """Leave the batch at the next step; with ``reason``, the answer so far ends with it."""
        if reason and self.reason is None:
            self.reason = reason
        self.generation.cancel.set()


class Batcher:
    """Continuous batching of :class:`Generation` s on one model (see the module docstring).

    ``multi_adapter``: the model is a peft model with several named adapters, and each row says
    which one it uses (peft's ``adapter_names``; rows for the base use ``__base__``).
    """

    def __init__(self, model: Any, *, max_batch: int = 64, max_queue: int = 256, multi_adapter: bool = False) -> None:
        self.model = model
        self.max_batch, self.max_queue, self.multi_adapter = max_batch, max_queue, multi_adapter
        base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
        params = inspect.signature(base.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keep_arg = "logits_to_keep" in params
        config = getattr(model, "generation_config", None)
        self._suppress = [int(t) for t in (getattr(config, "suppress_tokens", None) or [])]
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()  # submitted, not yet in the batch (guarded by _cond)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.stopping = False
        # the running batch: only the scheduler thread touches these
        self._rows: list[Job] = []
        self._cache: Any = None
        self._mask: Any = None  # [rows, columns] 1 = a real token
        self._last: Any = None  # [rows] the token each row feeds next
        self._positions: Any = None  # [rows] that token's position
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent steps
        self.running = 0  # rows in the batch (read by metrics)
        self.peak = 0  # the most rows decoded together so far

    # ------------------------------------------------------------------ the event loop's side

    @property
    def waiting(self) -> int:
        """Answers waiting for a row."""
        return len(self._waiting)

    def tokens_per_second(self) -> float:
        """Tokens generated per second over the last ``RATE_WINDOW_S`` seconds (all answers)."""
        cutoff = time.monotonic() - RATE_WINDOW_S
        return sum(n for t, n in list(self._recent) if t >= cutoff) / RATE_WINDOW_S

    def submit(self, generation: Generation, adapter: str | None = None) -> Job:
        """Queue an answer (from the event loop); raises :class:`QueueFull` or :class:`Unavailable`."""
        if self.stopping:
            raise Unavailable("the server is shutting down")
        self._loop = asyncio.get_running_loop()
        job = Job(generation, adapter, frozenset(_eos_ids(self.model, generation.tokenizer, generation.template)))
        with self._cond:
            if len(self._waiting) >= self.max_queue + max(0, self.max_batch - len(self._rows)):  # free rows take jobs at the next step
                raise QueueFull(f"{len(self._waiting)} requests are waiting already (ftcore serve --max-queue {self.max_queue}); try again shortly")
            self._waiting.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ftcore-batcher", daemon=True)
                self._thread.start()
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """The job leaves the queue now, or the batch at the next step."""
        job.stop()
        with self._cond:
            with contextlib.suppress(ValueError):
                self._waiting.remove(job)
            self._cond.notify()

    def stop(self) -> None:
        """Server shutdown: cut running answers short and turn waiting requests away."""
        self.stopping = True
        with self._cond:
            for job in list(self._waiting) + list(self._rows):
                job.generation.cancel.set()
                job.arrived.set()
            self._cond.notify()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    async def stream(self, job: Job, deadline: float, gone: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator[str]:
        """The pieces of ``job``'s answer as they are generated.

        Ends early, and cancels the job, when ``gone()`` says the client left or at ``deadline``
        (``loop.time()``), then with ``finish_reason`` "length". Raises :class:`Unavailable` when
        the job gets no row before the deadline or the server stops, and re-raises errors of the
        model. Close it (``aclosing``) when done with it.
        """
        loop = asyncio.get_running_loop()
        stopping_at: float | None = None
        checked = loop.time()
        try:
            while True:
                while job.pieces:
                    kind, value = job.pieces.popleft()
                    if kind == "piece":
                        while job.pieces and job.pieces[0][0] == "piece":  # the model ran ahead of this stream: one event for all
                            value += job.pieces.popleft()[1]
                        yield value
                    elif kind == "error":
                        raise value
                    else:
                        return
                if self.stopping:
                    raise Unavailable("the server is shutting down; the answer was cut short")
                now = loop.time()
                if stopping_at is None and now >= deadline:
                    if not job.joined:
                        raise Unavailable("the model was busy with other requests for the whole --request-timeout; try again")
                    job.stop("length")  # the answer so far, ended as if by max_tokens
                    with self._cond:
                        self._cond.notify()
                    stopping_at = now + STOP_GRACE_S
                elif stopping_at is not None and now >= stopping_at:
                    job.generation.finish_reason = "length"  # stuck in one forward pass: answer anyway
                    return
                if gone is not None and now - checked >= POLL_S:
                    if await gone():
                        return
                    checked = loop.time()
                if not job.pieces:
                    job.arrived.clear()
                    wait = min(POLL_S, (stopping_at or deadline) - now)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(job.arrived.wait(), max(wait, 0.0))
        finally:
            self.cancel(job)

    def _post(self, events: list[tuple[Job, str, Any]]) -> None:
        """Hand a step's pieces to the event loop, in one call."""
        if not events or self._loop is None:
            return

        def deliver() -> None:
            for job, kind, value in events:
                job.pieces.append((kind, value))
                job.arrived.set()

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens any more
            self._loop.call_soon_threadsafe(deliver)

    # ------------------------------------------------------------------ the scheduler thread

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self.stopping and not self._waiting and not self._rows:
                        self._cond.wait()
                    if self.stopping:
                        return
                    room = self.max_batch - len(self._rows)
                    new = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                events: list[tuple[Job, str, Any]] = []
                try:
                    self._leave([job for job in self._rows if job.cancelled], events)
                    new = [job for job in new if not job.cancelled]
                    if new:
                        self._prefill(new, events)
                    elif self._rows:
                        self._decode(events)
                except Exception as exc:  # noqa: BLE001 - every answer in the batch fails with it, the server goes on
                    for job in self._rows + new:
                        if not job.ended:
                            job.ended = True
                            events.append((job, "error", exc))
                    self._reset()
                self.running = len(self._rows)
                self.peak = max(self.peak, self.running)
                self._post(events)

    def _reset(self) -> None:
        self._rows, self._cache, self._mask, self._last, self._positions = [], None, None, None, None

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any, rows: list[Job], last_only: bool) -> Any:
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, self._cache_arg: cache, "use_cache": True}
        if last_only and self._keep_arg:
            kwargs["logits_to_keep"] = 1
        if self.multi_adapter:
            kwargs["adapter_names"] = [job.adapter or BASE_ROW for job in rows]
        return self.model(**kwargs).logits[:, -1, :]

    def _prefill(self, new: list[Job], events: list[tuple[Job, str, Any]]) -> None:
        """Run the prompts of the joining jobs together and add them to the batch."""
        import torch
        from transformers import DynamicCache

        device = self._device()
        width = max(len(job.generation.ids) for job in new)
        ids = torch.zeros((len(new), width), dtype=torch.long, device=device)
        mask = torch.zeros((len(new), width), dtype=torch.long, device=device)
        for i, job in enumerate(new):
            prompt = job.generation.ids
            ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt) :] = 1
            job.joined = True
            if job.generation.sampling.temperature > 0 and job.generation.sampling.seed is not None:
                job.generator = torch.Generator(device=device)
                job.generator.manual_seed(job.generation.sampling.seed)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self._forward(ids, mask, positions, cache, new, last_only=True)
        tokens = self._sample(logits, new)
        self._join(new, cache, mask, positions[:, -1] + 1)
        self._last[len(self._rows) - len(new) :] = tokens
        self._advance(new, tokens, events)

    def _decode(self, events: list[tuple[Job, str, Any]]) -> None:
        """One step: the next token of every row."""
        import torch

        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self._rows), 1))], dim=1)
        rows = list(self._rows)
        logits = self._forward(self._last[:, None], self._mask, self._positions[:, None], self._cache, rows, last_only=False)
        self._positions = self._positions + 1
        self._last = self._sample(logits, rows)
        self._advance(rows, self._last, events)

    def _advance(self, rows: list[Job], tokens: Any, events: list[tuple[Job, str, Any]]) -> None:
        """Record each row's new token, post its text, and let finished rows leave."""
        done = []
        for job, token in zip(rows, tokens.tolist()):
            job.tokens.append(token)
            job.generation.completion_tokens = len(job.tokens)
            ended = token in job.eos
            if not ended:
                piece = job.text.add(token)
                if piece:
                    events.append((job, "piece", piece))
            if ended or job.text.stopped or len(job.tokens) >= job.generation.max_new_tokens:
                done.append(job)
        self._recent.append((time.monotonic(), len(rows)))
        while self._recent and self._recent[0][0] < time.monotonic() - RATE_WINDOW_S:
            self._recent.popleft()
        self._leave(done, events)

    def _finish(self, job: Job, events: list[tuple[Job, str, Any]]) -> None:
        generation = job.generation
        tail = job.text.finish()
        if tail:
            events.append((job, "piece", tail))
        generation.text = job.text.text
        generation.completion_tokens = len(job.tokens)
        stopped = job.text.stopped or (bool(job.tokens) and job.tokens[-1] in job.eos)
        if not stopped and len(job.tokens) >= generation.max_new_tokens:
            generation.finish_reason = "length"
        elif not stopped and job.reason is not None:
            generation.finish_reason = job.reason
        else:
            generation.finish_reason = "stop"
        job.ended = True
        events.append((job, "end", None))

    def _leave(self, jobs: list[Job], events: list[tuple[Job, str, Any]]) -> None:
        """Drop ``jobs`` from the batch (finished, or cancelled) and cut columns nobody needs."""
        import torch

        if not jobs:
            return
        for job in jobs:
            if not job.ended:
                self._finish(job, events)
        gone = set(map(id, jobs))
        keep = [i for i, job in enumerate(self._rows) if id(job) not in gone]
        if not keep:
            self._reset()
            return
        index = torch.tensor(keep, device=self._mask.device)
        self._rows = [self._rows[i] for i in keep]
        self._mask, self._last, self._positions = self._mask[index], self._last[index], self._positions[index]
        used = self._mask.any(dim=0)
        first = int(used.long().argmax())  # the first column some row still uses
        for layer in self._cache.layers:
            layer.keys = layer.keys[index][:, :, first:]
            layer.values = layer.values[index][:, :, first:]
        self._mask = self._mask[:, first:]

    def _join(self, new: list[Job], cache: Any, mask: Any, positions: Any) -> None:
        """Append the prefilled rows to the batch, left-padding the shorter side's columns."""
        import torch
        import torch.nn.functional as F

        if not self._rows:
            self._rows, self._cache, self._mask, self._positions = list(new), cache, mask, positions
            self._last = positions.new_zeros(len(new))
            return
        old_width, new_width = self._mask.shape[1], mask.shape[1]
        width = max(old_width, new_width)
        for layer, joining in zip(self._cache.layers, cache.layers):
            layer.keys = torch.cat([F.pad(layer.keys, (0, 0, width - old_width, 0)), F.pad(joining.keys, (0, 0, width - new_width, 0))])
            layer.values = torch.cat([F.pad(layer.values, (0, 0, width - old_width, 0)), F.pad(joining.values, (0, 0, width - new_width, 0))])
        self._mask = torch.cat([F.pad(self._mask, (width - old_width, 0)), F.pad(mask, (width - new_width, 0))])
        self._positions = torch.cat([self._positions, positions])
        self._last = torch.cat([self._last, self._last.new_zeros(len(new))])
        self._rows += new

    def _sample(self, logits: Any, rows: list[Job]) -> Any:
        """The next token of each row: greedy where temperature is 0, else sampled with the
        row's temperature, top-k and top-p; rows with a seed draw from their own generator (so
        they repeat), the others in one draw for all of them."""
        import torch

        logits = logits.float()
        if self._suppress:
            logits[:, self._suppress] = float("-inf")
        tokens = logits.argmax(dim=-1)
        sampled = [i for i, job in enumerate(rows) if job.generation.sampling.temperature > 0]
        if not sampled:
            return tokens
        settings = [rows[i].generation.sampling for i in sampled]
        scores = logits if len(sampled) == len(rows) else logits[sampled]  # (a list index is a copy to the GPU each step)
        temperatures = {s.temperature for s in settings}
        if len(temperatures) == 1:
            scores = scores / temperatures.pop()
        else:
            scores = scores / torch.tensor([s.temperature for s in settings], device=logits.device)[:, None]
        top_k = [s.top_k for s in settings]
        if any(top_k):
            k = torch.tensor([min(k, scores.shape[-1]) if k > 0 else scores.shape[-1] for k in top_k], device=logits.device)
            kth = scores.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if any(s.top_p < 1 for s in settings):
            top_p = torch.tensor([s.top_p for s in settings], device=logits.device)
            ordered, order = scores.sort(dim=-1, descending=True)
            probs = ordered.softmax(dim=-1)
            before = probs.cumsum(dim=-1) - probs  # the mass of the likelier tokens
            drop = before >= top_p[:, None]
            drop[:, 0] = False
            scores = scores.scatter(1, order, ordered.masked_fill(drop, float("-inf")))
        probs = scores.softmax(dim=-1)
        unseeded = [row for row, i in enumerate(sampled) if rows[i].generator is None]
        if len(unseeded) == len(rows):  # every row sampled, none seeded: one draw, no indexing
            return torch.multinomial(probs, 1).squeeze(1)
        if unseeded:
            tokens[[sampled[row] for row in unseeded]] = torch.multinomial(probs[unseeded], 1).squeeze(1)
        for row, i in enumerate(sampled):
            if rows[i].generator is not None:
                tokens[i] = torch.multinomial(probs[row], 1, generator=rows[i].generator)[0]
        return tokens

    def _device(self) -> Any:
        return next(p for p in self.model.parameters()).device
