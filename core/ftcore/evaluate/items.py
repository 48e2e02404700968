"""Eval files to items, checked before any weights load: multiple-choice questions
(:func:`read_choice_items`) and question/answer pairs in any SFT format (:func:`read_qa_items`).

Both read through the data pipeline's loaders (``load_records``: any file type, folders, globs;
malformed JSON and the like are reported there with file:line), and every item remembers where
it came from, so a bad item is reported as ``file:line: field: what is wrong`` (every bad item
at once, the first few shown).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import FtcoreError, Problem, ValidationError

#: how many bad items an error lists
SHOWN = 10
LETTERS = string.ascii_uppercase


@dataclass
class ChoiceItem:
    """A multiple-choice question: the prompt, the choices, the index of the right one."""

    question: str
    choices: list[str]
    answer: int
    subject: str
    where: str
    system: str | None = None


@dataclass
class QAItem:
    """A conversation to answer (ending with the user's turn) and the reference answer."""

    messages: list[dict[str, Any]]
    reference: str
    where: str


def _raise(problems: list[Problem], path: Sequence[str] | str, what: str) -> None:
    if not problems:
        return
    shown = problems[:SHOWN]
    if len(problems) > SHOWN:
        shown.append(Problem("", f"... and {len(problems) - SHOWN} more"))
    files = [path] if isinstance(path, str) else list(path)
    raise ValidationError(problems=shown, source=f"{what} {', '.join(map(str, files))}")


def _text(value: Any) -> str | None:
    """A question or choice as text: strings, and numbers as written; None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    return value if isinstance(value, str) else None


def _choices(record: dict[str, Any]) -> tuple[list[str] | None, str]:
    """The choices of ``record``: its ``choices`` list, else its columns A, B, C, ... (the
    layout of C-Eval and CMMLU files); the field to blame when they are wrong."""
    if "choices" in record:
        raw = record["choices"]
        if not isinstance(raw, list):
            return None, "choices"
        return [_text(c) for c in raw], "choices"  # type: ignore[misc]
    letters = []
    for letter in LETTERS:
        if letter not in record:
            break
        letters.append(letter)
    return ([_text(record[l]) for l in letters] if letters else None), "choices"  # type: ignore[misc]


def _answer(value: Any, choices: list[str]) -> int | str:
    """The index of the right choice from an index (0-based), a letter (A = the first) or the
    choice's own text; else what is wrong, as text."""
    n = len(choices)
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value < n else f"index {value} is out of range: there are {n} choices (0..{n - 1})"
    if isinstance(value, float) and value.is_integer():
        return _answer(int(value), choices)
    if isinstance(value, str):
        text = value.strip()
        if len(text) == 1 and text.upper() in LETTERS:
            i = LETTERS.index(text.upper())
            return i if i < n else f"letter {text!r} is out of range: there are {n} choices (A..{LETTERS[n - 1]})"
        if choices.count(value) == 1:
            return choices.index(value)
        return f"{value!r} is neither a letter (A..{LETTERS[n - 1]}) nor one of the choices"
    return f"must be the index of the right choice (0-based), its letter or its text, got {type(value).__name__}"


def _lower_keys(record: Any) -> Any:
    """``Question``/``Answer`` (CMMLU's columns) read as ``question``/``answer``; letter columns stay."""
    if not isinstance(record, dict):
        return record
    return {(k.lower() if isinstance(k, str) and len(k) > 1 and k.lower() not in record else k): v for k, v in record.items()}


def with_letters(item: ChoiceItem) -> ChoiceItem:
    """The item as MMLU and C-Eval ask it: the choices listed under the question as ``A. ...``,
    the answer one of the letters."""
    listed = "\n".join(f"{LETTERS[k]}. {c}" for k, c in enumerate(item.choices))
    return ChoiceItem(f"{item.question}\n{listed}", list(LETTERS[: len(item.choices)]), item.answer, item.subject, item.where, item.system)


def read_choice_items(paths: str | Sequence[str], limit: int | None = None) -> list[ChoiceItem]:
    """Multiple-choice items from ``paths``: records with ``question``, ``choices`` (a list, or
    columns ``A``, ``B``, ... as in C-Eval and CMMLU files), ``answer`` (index, letter or text)
    and optionally ``subject`` (default: the file's name when several files are read, else
    ``all``) and ``system``; field names in any case (``Question``)."""
    from ..data.load import load_records

    records = load_records(paths)
    several = len(records.files) > 1
    items: list[ChoiceItem] = []
    problems: list[Problem] = []
    for i, raw in enumerate(records):
        where = records.where(i)
        record = _lower_keys(raw)

        def bad(field: str, message: str) -> None:
            problems.append(Problem(field, message, location=where))

        if not isinstance(record, dict):
            bad("", f"a multiple-choice item must be a mapping with question, choices and answer, got {type(record).__name__}")
            continue
        question = _text(record.get("question"))
        if not question or not question.strip():
            bad("question", "missing or empty" if record.get("question") in (None, "") else f"must be text, got {type(record['question']).__name__}")
        choices, field = _choices(record)
        if choices is None:
            bad(field, "missing: give choices as a list (or columns A, B, C, ...)" if "choices" not in record else f"must be a list of texts, got {type(record['choices']).__name__}")
        elif len(choices) < 2:
            bad(field, f"needs at least 2 choices, got {len(choices)}")
        elif any(c is None or not c.strip() for c in choices):
            k = next(k for k, c in enumerate(choices) if c is None or not c.strip())
            bad(f"{field}[{k}]" if "choices" in record else LETTERS[k], "every choice must be non-empty text")
        if "answer" not in record:
            bad("answer", "missing: give the index (0-based), letter or text of the right choice")
        elif choices is not None and len(choices) >= 2:
            answer = _answer(record["answer"], choices)  # type: ignore[arg-type]
            if isinstance(answer, str):
                bad("answer", answer)
        system = record.get("system")
        if system is not None and not isinstance(system, str):
            bad("system", f"must be text, got {type(system).__name__}")
        if problems and problems[-1].location == where:
            continue
        subject = record.get("subject")
        if subject is None or subject == "":
            subject = Path(records.files[records.origins[i][0]][0]).stem if several and records.origins else "all"
        items.append(ChoiceItem(question, choices, answer, str(subject), where, system))  # type: ignore[arg-type]
        if limit is not None and len(items) >= limit and not problems:
            break
    _raise(problems, [f for f, _ in records.files], "the multiple-choice file")
    return items[:limit] if limit is not None else items


def read_qa_items(paths: str | Sequence[str], formats: Any, format_name: str = "auto", limit: int | None = None) -> tuple[list[QAItem], str]:
    """Question/answer items from a dataset in any registered SFT format (detected, or
    ``format_name``): each sample's last assistant message is the reference, the conversation
    before it the prompt. Returns the items and the format's name."""
    from ..data.apply import apply_format, detect_format
    from ..data.load import load_records

    records = load_records(paths)
    name = detect_format(records, formats, setting="--format") if format_name in (None, "auto") else format_name
    fmt = formats.get(name)  # an unknown name: "did you mean"
    samples, _report = apply_format(records, fmt, "raise", skip_hint="fixing the record")
    items: list[QAItem] = []
    problems: list[Problem] = []
    for i, sample in enumerate(samples):
        where = samples.where(i)
        messages = sample.get("messages")
        if not isinstance(messages, list):
            problems.append(Problem("", f"format {name!r} made a sample without messages (plain text?): there is no question and answer to score", location=where))
            continue
        last = messages[-1] if messages else None
        if not isinstance(last, dict) or last.get("role") != "assistant" or not isinstance(last.get("content"), str):
            problems.append(Problem("messages", "the conversation must end with the assistant's answer (the reference)", location=where))
            continue
        prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:-1] if isinstance(m, dict)]
        if not any(m["role"] == "user" for m in prompt):
            problems.append(Problem("messages", "the conversation has no user turn before the answer", location=where))
            continue
        items.append(QAItem(prompt, last["content"], where))
        if limit is not None and len(items) >= limit and not problems:
            break
    _raise(problems, [f for f, _ in records.files], "the question/answer file")
    if not items:
        raise FtcoreError("no question/answer items to score", where=", ".join(f for f, _ in records.files))
    return items[:limit] if limit is not None else items, name
