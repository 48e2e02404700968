"""`ftcore data show` and `ftcore data check` as real subprocesses, plus the helpers behind them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers import run_cli

ALPACA = [
    {"instruction": "What is the capital of France? [red]not markup[/red]", "input": "", "output": "Paris is the capital."},
    {"instruction": "Say hi", "input": "", "output": "Hello there, friend!"},
    {"instruction": "Stay silent", "input": "", "output": "<nooutput>"},
]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def write_recipe(tmp_path: Path, model: Path, data: Path, fmt: str = "alpaca") -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"model: {{builder: hf, path: {model}}}\n"
        f"data: {{path: {data}, format: {fmt}, template: internlm2_chat, max_length: 64, shuffle: false}}\n",
        encoding="utf-8",
    )
    return path


def test_show_prints_trained_and_masked_text_and_statistics(tmp_path, tiny_llama):
    recipe = write_recipe(tmp_path, tiny_llama, write_jsonl(tmp_path / "d.jsonl", ALPACA))
    proc = run_cli("data", "show", "--recipe", str(recipe), "-n", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # Not a terminal: no colours, so the trained text is marked; prompts are masked, answers trained.
    assert "\x1b[" not in out
    assert "⟦Paris is the capital.<|im_end|>⟧" in out
    assert "⟦Hello there, friend!<|im_end|>⟧" in out
    assert "<|im_start|>user\nWhat is the capital of France? [red]not markup[/red]<|im_end|>\n<|im_start|>assistant\n⟦" in out
    assert "⟦<|im_start|>" not in out and "⟦<s>" not in out
    assert re.search(r"sample 1 of 2: \d+ tokens, \d+ trained", out)
    stats = re.search(r"sample length \(tokens, after truncation\): min (\d+)  median [\d.]+  mean [\d.]+  p95 [\d.]+  max (\d+)", out)
    assert stats and int(stats[1]) < int(stats[2])
    assert re.search(r"^\s+\d+ - +\d+ │█+\s+1$", out, re.M)  # histogram rows: range, unicode bar, count
    assert "dropped by the format: 1" in out and "truncated to max_length 64: 0" in out
    assert re.search(r"packing efficiency \d+\.\d%", out)


def test_check_reports_every_bad_record_with_file_line_and_field(tmp_path, tiny_llama):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            good,
            {"messages": [{"role": "assistant", "content": "I speak first"}, {"role": "user", "content": "hm"}]},
            {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "five"}]},
            good,
            {"messages": "not a list"},
        ],
    )
    proc = run_cli("data", "check", "--recipe", str(write_recipe(tmp_path, tiny_llama, data, "openai")), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    problems = [line for line in proc.stdout.splitlines() if line.startswith("  - ")]
    assert len(problems) == 3, proc.stdout
    # In file order, each with its line and field; the first is caught by the template, not the format.
    assert f"{data}:2: cannot encode the sample" in problems[0] and "starts with an assistant message" in problems[0]
    assert f"{data}:3: " in problems[1] and "[field: messages[0].content]" in problems[1]
    assert f"{data}:5: " in problems[2] and "[field: messages]" in problems[2]
    assert "3 record(s) with problems" in proc.stdout and "samples 2," in proc.stdout


def test_check_passes_a_clean_file_and_prints_counts(tmp_path, tiny_llama):
    data = write_jsonl(tmp_path / "d.jsonl", ALPACA)
    proc = run_cli("data", "check", "-r", str(write_recipe(tmp_path, tiny_llama, data)), "data.max_length=20", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "records 3, format alpaca" in out
    assert f"dropped by the format on purpose (e.g. <nooutput>): 1 ({data}:3)" in out
    counts = re.search(r"samples (\d+), tokens (\d+) \((\d+) trained\)", out)
    # Both samples are cut to 20 tokens; the long question leaves no answer token, so that sample goes.
    assert counts and counts[1] == "1" and counts[2] == "20" and 0 < int(counts[3]) < 20
    assert "truncated to max_length 20: 2; dropped with no trained token: 1" in out
    assert "every record is fine" not in out  # tokens were lost: said as a warning, still exit 0
    assert "2 sample(s) lose tokens past max_length and 1 are dropped" in out


def test_check_stops_at_an_unreadable_file_with_exit_1(tmp_path, tiny_llama):
    data = write_jsonl(tmp_path / "d.jsonl", [ALPACA[0], "{broken"])
    proc = run_cli("data", "check", "-r", str(write_recipe(tmp_path, tiny_llama, data)), cwd=tmp_path)
    assert proc.returncode == 1
    assert f"{data}:2: malformed JSON" in proc.stdout


# -- helpers, in process -------------------------------------------------------------------


def test_token_segments_split_trained_runs(tiny_llama):
    from transformers import AutoTokenizer

    from ftcore.data.render import token_segments

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    prompt = tok("Who are you?", add_special_tokens=False)["input_ids"]
    answer = tok(" I am Zed.", add_special_tokens=False)["input_ids"]
    ids = [tok.bos_token_id, *prompt, *answer, tok.eos_token_id]
    trained = [False] * (1 + len(prompt)) + [True] * (len(answer) + 1)
    assert token_segments(tok, ids, trained) == [("<s>Who are you?", False), (" I am Zed.</s>", True)]


def test_render_colours_trained_text_green_and_masked_dim_on_a_terminal():
    from rich.console import Console

    from ftcore.data.render import render_segments

    out = Console(force_terminal=True, color_system="standard", width=200)
    with out.capture() as cap:
        out.print(render_segments(out, [("<s>[b]Q[/b] ", False), ("A.</s>", True)]))
    assert cap.get() == "\x1b[2m<s>[b]Q[/b] \x1b[0m\x1b[32mA.</s>\x1b[0m\n"  # markup in data stays literal


def test_histogram_and_length_stats():
    from ftcore.data.render import histogram, length_stats

    lengths = [10] * 8 + [20] * 4 + [30]
    lines = histogram(lengths, bins=3, width=8)
    assert lines == ["  10 - 16 │████████ 8", "  17 - 23 │████     4", "  24 - 30 │█        1"]
    assert length_stats(lengths) == {"min": 10, "median": 10.0, "mean": pytest.approx(190 / 13), "p95": pytest.approx(24.0), "max": 30}


def test_encode_all_collects_every_bad_sample_and_keeps_the_rest_aligned(monkeypatch, tiny_llama):
    from transformers import AutoTokenizer

    from ftcore.data import pipeline
    from ftcore.data.records import RecordList
    from ftcore.data.template import PromptTemplate

    monkeypatch.setattr(pipeline, "ENCODE_CHUNK", 4)
    good = lambda k: {"messages": [{"role": "user", "content": f"q{k}"}, {"role": "assistant", "content": f"a{k}"}], "image": k}  # noqa: E731
    bad = {"messages": [{"role": "assistant", "content": "first"}], "image": "bad"}
    samples = [good(0), bad, good(2), good(3), good(4), bad, bad, good(7), good(8)]
    records = RecordList(samples, [(0, line, 0) for line in range(1, 10)], [("d.jsonl", "jsonl")])
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    problems: list = []
    report = pipeline.DataReport()
    encoded, extras = pipeline.encode_all(records, tok, PromptTemplate("t"), {"max_length": 64, "system": None}, report, problems=problems)
    ids, labels = encoded.as_lists()
    assert [p.where for p in problems] == ["d.jsonl:2", "d.jsonl:6", "d.jsonl:7"]
    assert extras["image"] == [0, 2, 3, 4, 7, 8]
    assert len(ids) == len(labels) == 6
    assert tok.decode(ids[4], skip_special_tokens=True) == "q7a7"
    with pytest.raises(Exception, match="starts with an assistant message"):
        pipeline.encode_all(records, tok, PromptTemplate("t"), {"max_length": 64, "system": None}, pipeline.DataReport())
    # the usual path (tokenising in a worker thread, chunk by chunk) keeps samples and extras aligned too
    goods = RecordList([good(k) for k in range(11)], [(0, line, 0) for line in range(1, 12)], [("d.jsonl", "jsonl")])
    encoded, extras = pipeline.encode_all(goods, tok, PromptTemplate("t"), {"max_length": 64, "system": None}, pipeline.DataReport())
    assert extras["image"] == list(range(11))
    assert [tok.decode(x, skip_special_tokens=True) for x in encoded.as_lists()[0]] == [f"q{k}a{k}" for k in range(11)]
