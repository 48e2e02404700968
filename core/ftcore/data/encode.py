"""Conversations to text (by a PromptTemplate) and to token ids with label masks.

A chat sample is ``{"messages": [{"role": "system"|"user"|"assistant", "content": str,
"loss": bool}]}``; a pre-training sample is ``{"text": str}``. The rendering follows
XTuner 0.1.x: for turn ``n`` (1-based) the untrained prompt is ``system.format(system=...)``
(first turn only, when there is a system prompt) + ``instruction.format(input=...,
round=n)``; the trained answer is the assistant text + ``suffix``, followed by EOS when
``suffix_as_eos`` is false; ``sep`` (untrained) follows every turn. BOS goes where the
template's ``bos`` policy says. The ``hf`` template (``use_tokenizer_template``) renders
with the tokenizer's own Jinja ``chat_template`` instead.

Encoding tokenises every text piece of a whole batch in one call of the tokenizer and
assembles ids and labels with numpy; nothing here loops over tokens in Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Sequence

import numpy as np

from ..errors import FtcoreError
from .formats import Message, RecordError
from . import IGNORE as IGNORE_INDEX
from .pack import Encoded, offsets
from .template import PromptTemplate

ROLES = ("system", "user", "assistant")

#: A piece of an encoded sample: a text to tokenise (``str``) or one token id (``int``),
#: and whether it is trained.
_Piece = tuple[str | int, bool]


# --------------------------------------------------------------------------- checks


#: role sequences of a valid single exchange, the shape almost every record has
_ONE_EXCHANGE = {("user", "assistant"), ("system", "user", "assistant")}


def _is_one_exchange(messages: Any) -> bool:
    """A cheap yes for the common valid record: [system,] user, assistant with string contents."""
    try:
        return (
            tuple(m["role"] for m in messages) in _ONE_EXCHANGE
            and all(type(m["content"]) is str for m in messages)
            and type(messages[-1].get("loss", True)) is bool
        )
    except (TypeError, KeyError, AttributeError):
        return False


def _check_messages(messages: Any, *, need_answer: bool, tools: bool = False) -> list[Message]:
    """Validate a conversation's shape; raise :class:`RecordError` saying what is wrong. ``tools``: the
    template renders tool calls (a Jinja one), so ``tool`` results and assistant ``tool_calls`` may appear."""
    if need_answer and type(messages) is list and _is_one_exchange(messages):
        return messages
    if not isinstance(messages, list) or not messages:
        raise RecordError("the conversation is empty (messages must be a non-empty list)", "messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise RecordError(f"messages[{i}] must be a mapping with role and content, got {type(msg).__name__}", f"messages[{i}]")
        role = msg.get("role")
        if (role == "tool" or msg.get("tool_calls")) and not tools:
            raise RecordError(f"messages[{i}] is a tool {'result' if role == 'tool' else 'call'}, which this template cannot render",
                              f"messages[{i}].{'role' if role == 'tool' else 'tool_calls'}")
        if role not in ROLES and role != "tool":
            raise RecordError(f"messages[{i}].role must be one of {', '.join(ROLES + (('tool',) if tools else ()))}, got {role!r}", f"messages[{i}].role")
        if not isinstance(msg.get("content"), str):
            raise RecordError(f"messages[{i}].content must be a string, got {type(msg.get('content')).__name__}", f"messages[{i}].content")
        if role == "assistant" and not isinstance(msg.get("loss", True), bool):
            raise RecordError(f"messages[{i}].loss must be true or false, got {msg.get('loss')!r}", f"messages[{i}].loss")
        if role == "system" and i != 0:
            raise RecordError(f"messages[{i}] is a system message; only the first message may be one", f"messages[{i}].role")
    body = messages[1:] if messages[0]["role"] == "system" else messages
    if not body:
        raise RecordError("the conversation has a system message but no user or assistant turn", "messages")
    if body[0]["role"] != "user":
        raise RecordError("the conversation starts with an assistant message; it must start with a user message (after an optional system message)", "messages")
    for prev, cur in zip(body, body[1:]):
        if prev["role"] == cur["role"] and cur["role"] != "tool":
            i = messages.index(cur)
            raise RecordError(f"messages[{i}]: two {cur['role']} messages in a row; user and assistant turns must alternate", f"messages[{i}].role")
    if need_answer:
        if not any(m["role"] == "assistant" for m in body):
            raise RecordError("the conversation has no assistant message, so there is nothing to train", "messages")
        if body[-1]["role"] != "assistant":
            raise RecordError(f"the conversation ends with a {body[-1]['role']} message that has no answer; end it with an assistant message", "messages")
    elif body[-1]["role"] != "user":
        raise RecordError("a chat prompt must end with the user message to answer", "messages")
    return messages


def _system_prompt(messages: list[Message], template: PromptTemplate, system: str | None) -> str | None:
    """The system prompt in force: the sample's, else the recipe's, else the template's default."""
    if messages[0]["role"] == "system":
        text: str | None = messages[0]["content"]
    elif system is not None:
        text = system
    else:
        text = template.default_system
    if text and not template.system:
        raise FtcoreError(
            f"template {template.name!r} has no system slot, but the conversation has a system prompt",
            hint="choose a template with a system field, or drop the system message / data.system",
        )
    return text or None


def _is_hf(template: PromptTemplate | None) -> bool:
    return bool(template is not None and template.use_tokenizer_template)


# --------------------------------------------------------------------------- templates


def _template_pieces(
    messages: list[Message],
    template: PromptTemplate,
    system: str | None,
    *,
    need_answer: bool,
    bos_id: int | str | None = None,
    eos_id: int | str | None = None,
) -> list[_Piece]:
    """A conversation as pieces by a named template (BOS/EOS only where their ids are given)."""
    _check_messages(messages, need_answer=need_answer)
    sys_text = _system_prompt(messages, template, system)
    body = messages[1:] if messages[0]["role"] == "system" else messages
    pieces: list[_Piece] = []
    for n, start in enumerate(range(0, len(body), 2), start=1):
        user = body[start]
        if bos_id is not None and (template.bos == "every_turn" or (template.bos == "first" and n == 1)):
            pieces.append((bos_id, False))
        prompt = template.system.format(system=sys_text) if n == 1 and sys_text else ""
        prompt += template.instruction.format(input=user["content"], round=n)
        pieces.append((prompt, False))
        if start + 1 >= len(body):  # the user message a chat prompt ends with
            break
        answer = body[start + 1]
        trained = answer.get("loss", True)
        pieces.append((answer["content"] + template.suffix, trained))
        if not template.suffix_as_eos and eos_id is not None:
            pieces.append((eos_id, trained))
        if template.sep:
            pieces.append((template.sep, False))
    return pieces


def _chat_template_of(tokenizer: Any, template: PromptTemplate | None = None) -> str:
    """The Jinja to render with: the template's own (a model family's, kept as data), else the tokenizer's."""
    if tokenizer is None:
        raise FtcoreError("a Jinja chat template renders with the tokenizer (its special tokens), so it needs the tokenizer")
    if template is not None and template.jinja:
        return template.jinja
    chat_template = getattr(tokenizer, "chat_template", None)
    if not chat_template:
        raise FtcoreError(
            "template 'hf' needs the tokenizer's own chat_template, but this tokenizer has none",
            hint="choose a named template (`ftcore list templates`), or use a tokenizer whose tokenizer_config.json has a chat_template",
        )
    return chat_template


#: what a message carries into a Jinja template besides role and content (OpenAI's tool-call fields)
JINJA_KEYS = ("tool_calls", "tool_call_id", "name")


def _hf_messages(messages: list[Message], system: str | None) -> list[dict[str, Any]]:
    plain = [{"role": m["role"], "content": m["content"], **{k: m[k] for k in JINJA_KEYS if m.get(k) is not None}} for m in messages]
    if plain[0]["role"] != "system" and system:
        plain.insert(0, {"role": "system", "content": system})
    return plain


def _apply(tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool, chat_template: str | None = None, tools: list | None = None) -> str:
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(messages, chat_template=chat_template, tools=tools or None, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as exc:  # e.g. the template's raise_exception("roles must alternate ...")
        raise RecordError(f"the tokenizer's chat_template refused this conversation: {exc}", "messages") from None
    if not isinstance(text, str):
        raise FtcoreError(f"the tokenizer's apply_chat_template returned {type(text).__name__}, not text")
    return text


def _hf_pieces(messages: list[Message], tokenizer: Any, system: str | None, template: PromptTemplate | None = None, tools: list | None = None) -> list[_Piece]:
    """A conversation rendered by a Jinja chat template (the template's own, else the tokenizer's; with
    the record's ``tools``), cut into trained/untrained spans.

    The span of assistant turn ``k`` starts where the rendering of ``messages[:k]`` with
    the generation prompt ends and stops where the rendering of ``messages[:k+1]`` ends,
    so whatever the template writes to close the answer is trained with it (an EOS that a
    template such as Phi-3's writes only after the last message closes the last answer).
    Tool results and everything but the assistant turns stay untrained.
    """
    chat_template = _chat_template_of(tokenizer, template)
    _check_messages(messages, need_answer=True, tools=True)
    plain = _hf_messages(messages, system)
    offset = len(plain) - len(messages)  # 1 when the recipe's system prompt was put in front
    losses = [True] * offset + [bool(m.get("loss", True)) for m in messages]
    full = _apply(tokenizer, plain, False, chat_template, tools)
    eos = getattr(tokenizer, "eos_token", None)
    pieces: list[_Piece] = []
    pos = 0
    for k, msg in enumerate(plain):
        if msg["role"] != "assistant":
            continue
        start = _apply(tokenizer, plain[:k], True, chat_template, tools)
        end = _apply(tokenizer, plain[: k + 1], False, chat_template, tools)
        if eos and k + 1 < len(plain) and end.endswith(eos) and not full.startswith(end):
            end = end[: -len(eos)]  # the conversation's closing EOS, not this turn's
        if not (end.startswith(start) and full.startswith(end) and len(start) >= pos):
            raise FtcoreError(
                "cannot find the assistant turns in this tokenizer's chat_template: rendering a conversation's "
                "prefix does not give a prefix of the whole rendering (the template rewrites earlier turns)",
                hint="use a named template instead of hf",
            )
        pieces.append((full[pos : len(start)], False))
        pieces.append((full[len(start) : len(end)], losses[k]))
        pos = len(end)
    pieces.append((full[pos:], False))
    return [p for p in pieces if p[0] != ""]


# --------------------------------------------------------------------------- public API


def render_segments(
    messages: list[Message],
    template: PromptTemplate,
    system: str | None = None,
    *,
    tokenizer: Any = None,
    tools: list | None = None,
) -> list[tuple[str, bool]]:
    """The conversation as text segments with a trained flag, in order.

    ``system`` (a recipe's system prompt) is used when the sample has no system message;
    when neither has one, ``template.default_system`` is. Segments per turn: the prompt
    (system part on the first turn + instruction; untrained), the answer + ``suffix``
    (trained unless the message has ``loss: false``) and ``sep`` (untrained). BOS and EOS
    tokens are not text and are not included (:func:`encode_batch` adds them). The ``hf``
    template needs ``tokenizer``. Raises :class:`RecordError` for a malformed conversation
    (empty, assistant first, two user or assistant turns in a row, no assistant turn).
    """
    if _is_hf(template):
        return [(str(text), trained) for text, trained in _hf_pieces(messages, tokenizer, system, template, tools)]
    pieces = _template_pieces(messages, template, system, need_answer=True)
    return [(text, trained) for text, trained in pieces if isinstance(text, str) and text]


def render_prompt(
    messages: list[Message],
    template: PromptTemplate,
    system: str | None = None,
    *,
    tokenizer: Any = None,
    bos_token: str | None = None,
) -> str:
    """The text to feed a model at chat time: the history, the last user message and the
    generation prompt (the template's instruction ends where the answer starts).

    ``messages`` alternate user/assistant (after an optional system message) and end with
    a user message. The first BOS is the caller's to add (as an id, when ``template.bos``
    is not ``none``); for ``bos: every_turn`` pass ``bos_token`` (the tokenizer's BOS text)
    to have it written before each later turn, as in training. An EOS closing each past
    answer (``suffix_as_eos`` false) is written as the tokenizer's EOS text when given
    ``tokenizer``. The ``hf`` template renders with ``tokenizer.apply_chat_template``.
    """
    if _is_hf(template):
        chat_template = _chat_template_of(tokenizer, template)
        _check_messages(messages, need_answer=False)
        return _apply(tokenizer, _hf_messages(messages, system), True, chat_template)
    eos = getattr(tokenizer, "eos_token", None) if tokenizer is not None else None
    bos = bos_token if template.bos != "none" else None
    pieces = _template_pieces(messages, template, system, need_answer=False, bos_id=bos, eos_id=eos)
    if bos is not None:
        pieces = pieces[1:]  # the first BOS is the caller's (as an id)
    return "".join(str(text) for text, _ in pieces)


def _rust_backend(tokenizer: Any) -> Any:
    """The ``tokenizers.Tokenizer`` to call directly, or None when only ``tokenizer(...)`` is right.

    Direct calls are equivalent for a plain transformers fast tokenizer (no subclass override of
    the encoding path) whose backend has no truncation or padding of its own and splits special
    tokens as the tokenizer says; anything else goes through ``tokenizer(...)``.
    """
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    cls = type(tokenizer)
    if not (isinstance(tokenizer, TokenizersBackend) and cls._encode_plus is TokenizersBackend._encode_plus and cls.__call__ is PreTrainedTokenizerBase.__call__):
        return None
    if backend.truncation is not None or backend.padding is not None:
        return None
    if bool(backend.encode_special_tokens) != bool(getattr(tokenizer, "split_special_tokens", False)):
        return None
    return backend


def tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of every text, no special tokens added, in one batched call.

    A fast tokenizer's Rust backend is called directly when that gives the same ids: going
    through ``tokenizer(...)`` converts every encoding to a Python dict first, which for
    short chat pieces costs about as much CPU as tokenising them. The Rust call releases
    the GIL, so another thread can prepare the next batch meanwhile.
    """
    if not texts:
        return []
    backend = _rust_backend(tokenizer)
    if backend is not None:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)["input_ids"]


@dataclass
class BatchPlan:
    """A batch cut into pieces before tokenising: what :func:`plan_batch` returns.

    Each piece is a text (an index into ``texts``, which holds every distinct text once)
    or a single token id, with whether it is trained and which sample it belongs to.
    """

    num_samples: int
    texts: list[str]
    text_of: np.ndarray  # per piece: index into texts, or -1 for a token id
    token: np.ndarray  # per piece: the token id (when text_of is -1)
    trained: np.ndarray
    owner: np.ndarray
    #: per sample: a text (pre-training) sample, cut into chunks rather than truncated
    is_text: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


@dataclass
class EncodedBatch(Encoded):
    """What :func:`encode_batch` returns: the kept samples, and what happened to the others."""

    #: for each kept sample, its index in the input list (a chunked text's index once per chunk)
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: samples cut to ``max_length``
    truncated: int = 0
    #: samples left out because no trained token remained (after truncation)
    dropped: int = 0
    #: text samples longer than ``max_length``, cut into chunks (nothing is lost)
    chunked: int = 0
    #: the chunks they became
    chunks: int = 0


def _sample_pieces(
    sample: dict[str, Any], tokenizer: Any, template: PromptTemplate | None, system: str | None, bos_id: int | None, eos_id: int | None
) -> list[_Piece]:
    if "messages" in sample:
        if template is None:
            raise FtcoreError("chat data needs a template", where="data.template", hint="name one from `ftcore list templates`")
        if _is_hf(template):
            return _hf_pieces(sample["messages"], tokenizer, system, template, sample.get("tools"))
        bos = bos_id if template.bos != "none" else None
        return _template_pieces(sample["messages"], template, system, need_answer=True, bos_id=bos, eos_id=eos_id)
    if "text" in sample:
        if not isinstance(sample["text"], str):
            raise RecordError(f"field 'text' must be a string, got {type(sample['text']).__name__}", "text")
        pieces: list[_Piece] = [(bos_id, True)] if bos_id is not None else []
        pieces.append((sample["text"], True))
        if eos_id is not None:
            pieces.append((eos_id, True))
        return pieces
    raise RecordError("a sample needs 'messages' (chat) or 'text' (pre-training)", "messages")


def plan_batch(samples: Sequence[dict[str, Any]], tokenizer: Any, template: PromptTemplate | None, system: str | None = None) -> BatchPlan:
    """Render every sample into pieces; raise :class:`RecordError` (naming the sample) for a malformed one."""
    texts: dict[str, int] = {}  # each distinct text once (separators, system prompts repeat)
    text_of: list[int] = []
    token: list[int] = []
    trained: list[bool] = []
    owner: list[int] = []
    is_text = np.zeros(len(samples), bool)
    bos_id, eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id  # slow attribute lookups: once per batch
    for i, sample in enumerate(samples):
        is_text[i] = "messages" not in sample
        try:
            pieces = _sample_pieces(sample, tokenizer, template, system, bos_id, eos_id)
        except RecordError as exc:
            raise RecordError(f"sample {i}: {exc.message}", exc.field) from None
        for piece, is_trained in pieces:
            if isinstance(piece, str):
                if not piece:
                    continue
                text_of.append(texts.setdefault(piece, len(texts)))
                token.append(0)
            else:
                text_of.append(-1)
                token.append(int(piece))
            trained.append(bool(is_trained))
            owner.append(i)
    return BatchPlan(
        len(samples), list(texts), np.asarray(text_of, np.int64), np.asarray(token, np.int64), np.asarray(trained, bool), np.asarray(owner, np.int64), is_text
    )


def _windows(sample_len: np.ndarray, chunked: np.ndarray, max_length: int, overlap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pieces each sample keeps: ``(sample, start, length)`` per piece. A sample is cut to its
    first ``max_length`` tokens, or, where ``chunked``, into windows of ``max_length`` that start
    every ``max_length - overlap`` tokens until its end."""
    stride = max_length - overlap
    count = np.ones(len(sample_len), np.int64)
    count[chunked] += -(-(sample_len[chunked] - max_length) // stride)  # ceil division
    sample = np.repeat(np.arange(len(sample_len)), count)
    start = (np.arange(len(sample)) - offsets(count)[:-1][sample]) * stride
    return sample, start, np.minimum(sample_len[sample] - start, max_length)


def assemble(plan: BatchPlan, encoded: list[list[int]], max_length: int, overlap: int = 0) -> EncodedBatch:
    """Lay the pieces' tokens out per sample, mask the untrained ones, cut chat samples to
    ``max_length`` and text samples into chunks of it (``overlap`` tokens shared by neighbours,
    trained only in the first), and leave out samples with no trained token; numpy throughout
    (no loop over tokens)."""
    if max_length < 1:
        raise FtcoreError(f"max_length must be at least 1, got {max_length}", where="data.max_length")
    if not 0 <= overlap < max_length:
        raise FtcoreError(f"the chunk overlap must be at least 0 and less than max_length {max_length}, got {overlap}", where="data.chunk_overlap")
    text_len = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    text_start = offsets(text_len)
    is_text = plan.text_of >= 0
    literal = plan.token[~is_text]
    source = np.concatenate([np.fromiter(chain.from_iterable(encoded), dtype=np.int64, count=int(text_start[-1])), literal])
    piece_len = np.ones(len(plan.text_of), dtype=np.int64)
    piece_len[is_text] = text_len[plan.text_of[is_text]]
    piece_src = np.empty(len(plan.text_of), dtype=np.int64)
    piece_src[is_text] = text_start[plan.text_of[is_text]]
    piece_src[~is_text] = text_start[-1] + np.arange(len(literal))
    piece_out = offsets(piece_len)[:-1]
    total = int(piece_len.sum())
    ids = source[np.repeat(piece_src - piece_out, piece_len) + np.arange(total)]
    token_trained = np.repeat(plan.trained, piece_len)
    sample_len = np.bincount(plan.owner, weights=piece_len, minlength=plan.num_samples).astype(np.int64)
    sample_start = offsets(sample_len)[:-1]
    long = sample_len > max_length
    chunked = long & (plan.is_text if len(plan.is_text) == plan.num_samples else False)
    owner, start, length = _windows(sample_len, chunked, max_length, overlap)
    # every kept token's index in ``ids``, window by window; overlap tokens (a window's first
    # ``overlap`` after the first window) are context, trained in the window before
    within = np.arange(int(length.sum())) - np.repeat(offsets(length)[:-1], length)
    take = np.repeat(sample_start[owner] + start, length) + within
    trained = token_trained[take] & ~((within < overlap) & np.repeat(start > 0, length))
    window_trained = np.bincount(np.repeat(np.arange(len(owner)), length)[trained], minlength=len(owner))
    keep_window = window_trained > 0
    keep = np.repeat(keep_window, length)
    kept_samples = np.bincount(owner[keep_window], minlength=plan.num_samples) > 0
    return EncodedBatch(
        tokens=ids[take][keep].astype(np.int32),
        labels=np.where(trained, ids[take], IGNORE_INDEX)[keep].astype(np.int32),
        lengths=length[keep_window],
        indices=owner[keep_window],
        truncated=int((long & ~chunked).sum()),
        dropped=int((~kept_samples).sum()),
        chunked=int(chunked.sum()),
        chunks=int(np.isin(owner[keep_window], np.flatnonzero(chunked)).sum()),
    )


def encode_batch(
    samples: Sequence[dict[str, Any]],
    tokenizer: Any,
    template: PromptTemplate | None,
    max_length: int,
    system: str | None = None,
    chunk_overlap: int = 0,
) -> EncodedBatch:
    """Token ids and labels for a batch of canonical samples.

    Chat samples (``messages``) render by ``template``: labels are ``IGNORE_INDEX`` on
    BOS, system, user and template text; assistant outputs plus ``suffix`` are trained,
    and when ``template.suffix_as_eos`` is false an EOS token follows each output (trained
    with it). ``template.bos``: ``first`` puts ``tokenizer.bos_token_id`` at the start,
    ``every_turn`` before every turn, ``none`` nowhere (nor when the tokenizer has no
    BOS). Text samples (``text``) are pre-training data: BOS (if the tokenizer has one) +
    text + EOS (if it has one), every token trained, no template. Every distinct text piece
    of the batch is tokenised once, in one tokenizer call. Chat samples longer than
    ``max_length`` are cut (counted in ``truncated``); longer text samples become several
    samples of up to ``max_length`` tokens, the next starting where one ends (or
    ``chunk_overlap`` tokens before, as untrained context), so no text is lost (counted in
    ``chunked`` and ``chunks``); samples left with no trained token are left out (counted
    in ``dropped``); ``indices`` maps kept samples back to ``samples`` (a chunked one's once
    per chunk).
    """
    plan = plan_batch(samples, tokenizer, template, system)
    return assemble(plan, tokenize(tokenizer, plan.texts), max_length, chunk_overlap)
