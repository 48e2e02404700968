"""Generation metrics: ROUGE-1/2/L (Google's ``rouge-score``), BLEU-4 (``sacrebleu``) and exact match.

Chinese (and Japanese kana) is scored at the character level: every Han character is a token
of its own, as sacrebleu's ``zh`` tokenizer and the CLUE/C-Eval style of scoring do, so no word
segmenter (and no segmenter's dictionary) decides the score. Other text is split into words
(letters and digits; punctuation dropped, lower-cased), which for plain English is exactly
rouge-score's default tokenizer without stemming. BLEU is sacrebleu's corpus BLEU with its
``13a`` tokenizer, or ``zh`` when any text holds Chinese; the signature in ``results.json``
says which. ROUGE is each answer's F-measure, averaged; BLEU per answer is sacrebleu's
sentence BLEU (exponential smoothing). Every score is on a 0-100 scale.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from ..errors import FtcoreError

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
#: a Han character or kana (one token each), else a run of letters and digits (punctuation is no token)
_TOKEN = re.compile(f"[{_HAN}\u3040-\u30ff]|[^\\W_{_HAN}\u3040-\u30ff]+")
_CHINESE = re.compile(f"[{_HAN}]")
#: what the metrics need, and the extra that installs it
NEEDS = {"rouge_score": "rouge-score", "sacrebleu": "sacrebleu"}
ROUGE = ("rouge1", "rouge2", "rougeL")


def tokens(text: str) -> list[str]:
    """The tokens ROUGE counts: each Han character or kana alone, other text as lower-cased
    runs of letters and digits (punctuation, CJK punctuation too, is no token)."""
    return _TOKEN.findall(text.lower())


def has_chinese(texts: Sequence[str]) -> bool:
    return any(_CHINESE.search(t) for t in texts)


def check_metric_libraries() -> None:
    """Raise a clear error when the metric libraries (the ``eval`` extra) are missing."""
    import importlib

    missing = []
    for module, package in NEEDS.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise FtcoreError(f"scoring generations needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed",
                          hint="pip install 'ftcore[eval]'")


class _Tokenizer:
    """rouge-score's tokenizer interface over :func:`tokens`."""

    def tokenize(self, text: str) -> list[str]:
        return tokens(text)


def normalize_answer(text: str) -> str:
    """What exact match compares: the text with runs of whitespace made one space, stripped."""
    return " ".join(text.split())


def score_answers(predictions: Sequence[str], references: Sequence[str]) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Corpus scores and per-answer scores of ``predictions`` against ``references`` (0-100)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError("one prediction per reference")
    scorer = rouge_scorer.RougeScorer(list(ROUGE), use_stemmer=False, tokenizer=_Tokenizer())
    tokenize = "zh" if has_chinese(list(references) + list(predictions)) else "13a"
    sentence = sacrebleu.BLEU(tokenize=tokenize, effective_order=True)
    per_item = []
    for pred, ref in zip(predictions, references):
        rouge = scorer.score(ref, pred)
        row = {name: 100 * rouge[name].fmeasure for name in ROUGE}
        row["bleu"] = sentence.sentence_score(pred, [ref]).score
        row["exact_match"] = 100.0 * (normalize_answer(pred) == normalize_answer(ref))
        per_item.append(row)
    corpus = sacrebleu.BLEU(tokenize=tokenize)
    bleu = corpus.corpus_score(list(predictions), [list(references)])
    n = max(len(per_item), 1)
    scores: dict[str, Any] = {name: sum(r[name] for r in per_item) / n for name in ROUGE}
    scores["bleu"] = bleu.score
    scores["exact_match"] = sum(r["exact_match"] for r in per_item) / n
    scores["n"] = len(per_item)
    scores["bleu_signature"] = str(corpus.get_signature())
    return scores, per_item
