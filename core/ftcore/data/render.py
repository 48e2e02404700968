"""Text rendering for ``ftcore data show``: a sample's tokens as trained/masked runs, and length statistics as a histogram."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import IGNORE


def token_segments(tokenizer: Any, ids: Sequence[int], trained: Sequence[bool]) -> list[tuple[str, bool]]:
    """A sample's tokens as ``(text, trained)`` runs, decoded with special tokens shown.

    Each run is the decoded prefix up to its end minus the decoded prefix before it, so a
    character split over two runs and a decoder that treats the first token specially
    still read right.
    """
    runs: list[tuple[int, int, bool]] = []
    start = 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or trained[k] != trained[start]:
            runs.append((start, k, bool(trained[start])))
            start = k

    def decode(part: Sequence[int]) -> str:
        return tokenizer.decode(list(part), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    out: list[tuple[str, bool]] = []
    before = ""
    for lo, hi, is_trained in runs:
        upto = decode(ids[:hi])
        text = upto[len(before) :] if upto.startswith(before) else decode(ids[lo:hi])
        out.append((text, is_trained))
        before = upto
    return out


def plain_console(out: Any) -> bool:
    """True when the console shows no colours (not a terminal, or NO_COLOR)."""
    return out.color_system is None or out.no_color


#: Marks trained text when the output has no colours (piped to a file or another program).
MARKS = ("⟦", "⟧")


def legend(out: Any) -> tuple[str, bool]:
    """The line that explains how trained and masked text look, and whether it is rich markup."""
    if plain_console(out):
        return f"legend: {MARKS[0]}trained{MARKS[1]}, everything else is masked (labels {IGNORE})", False
    return f"legend: [green]trained[/green] [dim]masked (labels {IGNORE})[/dim]", True


def render_segments(out: Any, segments: Sequence[tuple[str, bool]]) -> Any:
    from rich.text import Text

    text = Text()
    plain = plain_console(out)
    for piece, is_trained in segments:
        if plain and is_trained:
            text.append(f"{MARKS[0]}{piece}{MARKS[1]}")
        else:
            text.append(piece, style="green" if is_trained else "dim")  # Text: never parsed as markup
    return text


def histogram(values: Sequence[int], bins: int = 10, width: int = 40) -> list[str]:
    """Lines of a text histogram with unicode bars: ``  lo -   hi │████▌ count``."""
    import numpy as np

    values = np.asarray(values)
    if not len(values):
        return []
    lo, hi = int(values.min()), int(values.max())
    bins = max(1, min(bins, hi - lo + 1))
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi + 1))
    top = max(1, int(counts.max()))
    partial = " ▏▎▍▌▋▊▉"
    digits = len(str(hi))
    lines = []
    for count, left, right in zip(counts.tolist(), edges[:-1], edges[1:]):
        eighths = round(count / top * width * 8)
        bar = "█" * (eighths // 8) + (partial[eighths % 8] if eighths % 8 else "")
        if count and not bar:
            bar = "▏"
        a, b = int(np.ceil(left)), int(np.ceil(right)) - 1
        lines.append(f"  {a:>{digits}} - {b:>{digits}} │{bar:<{width}} {count}")
    return lines


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    import numpy as np

    values = np.asarray(lengths)
    return {
        "min": int(values.min()),
        "median": float(np.median(values)),
        "mean": float(values.mean()),
        "p95": float(np.percentile(values, 95)),
        "max": int(values.max()),
    }


def fmt_num(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
