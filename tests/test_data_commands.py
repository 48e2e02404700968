"""`ftcore data convert|split|self-cognition` run as real subprocesses, plus their helpers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ftcore.data.convert import parse_map
from ftcore.data.formats import RecordError
from ftcore.data.self_cognition import ANSWERS, AUTHOR_ANSWERS, NAMED_OWNER_ANSWERS, ORIGIN_SENTENCES, OWNER_ANSWERS, QUESTIONS, self_cognition_records
from ftcore.errors import FtcoreError
from ftcore_formats.formats import alpaca_export, conversation_export
from helpers import cli_env, run_cli


def ftcore(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftcore.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60)


def failed(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- convert -----------------------------------------------------------------------------


def test_convert_xlsx_with_column_map_to_openai_jsonl(tmp_path):
    import openpyxl

    book = openpyxl.Workbook()
    book.active.append(["question", "answer", "id"])
    book.active.append(["What is 6*7?", 42, "a"])
    book.active.append(["Capital of France?", "Paris", "b"])
    book.save(tmp_path / "qa.xlsx")
    proc = ftcore("data", "convert", "qa.xlsx", "out.jsonl", "--map", "question=instruction,answer=output", "--to", "openai", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2 written" in proc.stdout and "alpaca" in proc.stdout
    records = read_jsonl(tmp_path / "out.jsonl")
    assert records[0] == {
        "messages": [{"role": "user", "content": "What is 6*7?"}, {"role": "assistant", "content": "42"}],
        "id": "a",
    }


def test_convert_csv_to_conversation_json_drops_nooutput(tmp_path):
    (tmp_path / "d.csv").write_text("instruction,input,output\nq1,,a1\nq2,ctx,a2\nq3,,<nooutput>\n", encoding="utf-8")
    proc = ftcore("data", "convert", "d.csv", "out.json", "--to", "conversation", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "dropped 1" in proc.stdout and "d.csv:4" in proc.stdout
    data = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert data == [{"conversation": [{"input": "q1", "output": "a1"}]}, {"conversation": [{"input": "q2\nctx", "output": "a2"}]}]


def test_failed_convert_leaves_no_file_and_names_the_record(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"instruction": "q", "output": "a"}\n{"instruction": "q2"}\n', encoding="utf-8")
    err = failed(ftcore("data", "convert", "d.jsonl", "out.jsonl", "--to", "openai", cwd=tmp_path))
    assert "d.jsonl:2" in err and "'output'" in err and "--on-error skip" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]
    proc = ftcore("data", "convert", "d.jsonl", "out.jsonl", "--to", "openai", "--on-error", "skip", cwd=tmp_path)
    assert proc.returncode == 0 and "skipped 1" in proc.stdout and "d.jsonl:2" in proc.stdout
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 1
    err = failed(ftcore("data", "convert", "d.jsonl", "out.jsonl", "--to", "openai", cwd=tmp_path))
    assert "already exists" in err and "--force" in err


def test_convert_errors_are_clear(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"instruction": "q", "output": "a"}\n{"oops": \n', encoding="utf-8")
    err = failed(ftcore("data", "convert", "d.jsonl", "out.jsonl", "--to", "openai", "--from", "alpacca", cwd=tmp_path))
    assert "did you mean 'alpaca'" in err
    err = failed(ftcore("data", "convert", "d.jsonl", "out.jsonl", "--to", "openai", cwd=tmp_path))
    assert "d.jsonl:2" in err and '{"oops":' in err
    err = failed(ftcore("data", "convert", "d.jsonl", "out.txt", "--to", "openai", cwd=tmp_path))
    assert ".jsonl" in err
    err = failed(ftcore("data", "convert", "missing.jsonl", "out.json", "--to", "openai", cwd=tmp_path))
    assert "not found" in err


def test_convert_to_lists_the_formats_that_can_be_written(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"instruction": "q", "output": "a"}\n', encoding="utf-8")
    for to, why in (("medical", "cannot write records"), ("sharegtp", "did you mean 'sharegpt'")):
        err = failed(ftcore("data", "convert", "d.jsonl", "out.jsonl", "--to", to, cwd=tmp_path))
        assert why in err and "formats that can be written: alpaca, conversation, oasst1, openai, pretrain, sharegpt" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


def test_convert_to_and_from_a_third_party_format(tmp_path, plugin_site):
    env = cli_env(pythonpath=str(plugin_site))
    chat = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    records = [{"messages": chat, "id": 1}, {"messages": [{"role": "system", "content": "s"}, *chat], "id": 2}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    proc = run_cli("data", "convert", "d.jsonl", "qa.jsonl", "--to", "example_qa", "--on-error", "skip", cwd=tmp_path, env=env, check=True)
    assert "1 written" in proc.stdout and "d.jsonl:2" in proc.stdout and "without a system message" in proc.stdout
    assert read_jsonl(tmp_path / "qa.jsonl") == [{"q": "2+2?", "a": "4", "id": 1}]
    run_cli("data", "convert", "qa.jsonl", "back.json", "--from", "example_qa", "--to", "openai", cwd=tmp_path, env=env, check=True)
    assert json.loads((tmp_path / "back.json").read_text(encoding="utf-8")) == [{"messages": chat}]


# -- split -------------------------------------------------------------------------------


def test_split_writes_train_and_test_deterministically(tmp_path):
    records = [{"text": f"t{i}"} for i in range(20)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    proc = ftcore("data", "split", "d.jsonl", "--test-ratio", "0.25", "--seed", "3", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    train, test = read_jsonl(tmp_path / "out" / "d_train.jsonl"), read_jsonl(tmp_path / "out" / "d_test.jsonl")
    assert len(train) == 15 and len(test) == 5
    assert sorted(train + test, key=lambda r: int(r["text"][1:])) == records
    proc = ftcore("data", "split", "d.jsonl", "--test-ratio", "0.25", "--seed", "3", "-o", "again", cwd=tmp_path)
    assert read_jsonl(tmp_path / "again" / "d_test.jsonl") == test
    err = failed(ftcore("data", "split", "d.jsonl", "--test-ratio", "0.25", "-o", "out", cwd=tmp_path))
    assert "already exists" in err


# -- self-cognition ------------------------------------------------------------------------


def test_self_cognition_command_writes_jsonl_and_json(tmp_path):
    args = ["data", "self-cognition", "--name", "Tiny Helper", "--author", "ACME", "--n", "40", "--seed", "5"]
    assert ftcore(*args, "-o", "sc.jsonl", cwd=tmp_path).returncode == 0
    assert ftcore(*args, "-o", "sc.json", cwd=tmp_path).returncode == 0
    lines = read_jsonl(tmp_path / "sc.jsonl")
    assert len(lines) == 40 and lines == json.loads((tmp_path / "sc.json").read_text(encoding="utf-8"))
    assert all(r["messages"][1]["content"].count("Tiny Helper") >= 1 for r in lines)
    assert any("ACME" in r["messages"][1]["content"] for r in lines)
    err = failed(ftcore("data", "self-cognition", "--name", "X", "-o", "sc.csv", cwd=tmp_path))
    assert ".jsonl" in err


def test_self_cognition_records_are_varied_and_deterministic():
    for lang in ("en", "zh"):
        assert len(set(QUESTIONS[lang])) >= 20 and len(set(ANSWERS[lang])) >= 10 and len(set(AUTHOR_ANSWERS[lang])) >= 10
        assert all("{name}" in a for a in ANSWERS[lang] + AUTHOR_ANSWERS[lang])
    records = self_cognition_records("Bob", 500, "both", 1)
    assert records == self_cognition_records("Bob", 500, "both", 1)
    assert records != self_cognition_records("Bob", 500, "both", 2)
    questions = {r["messages"][0]["content"] for r in records}
    assert questions & set(QUESTIONS["en"]) and questions & set(QUESTIONS["zh"])
    assert len(questions) >= 30
    en = self_cognition_records("Bob", 100, "en", 0)
    assert {r["messages"][0]["content"] for r in en} <= set(QUESTIONS["en"])
    assert all(r["messages"][1]["content"].count("Bob") for r in en)
    assert not any("Bob's assistant" in r["messages"][1]["content"] for r in en)  # --name is its own name
    with pytest.raises(FtcoreError):
        self_cognition_records(" ", 10, "en", 0)
    with pytest.raises(FtcoreError):
        self_cognition_records("Bob", 10, "fr", 0)


def test_self_cognition_owner_says_whose_assistant_it_is_with_its_origin_in_both_languages(tmp_path):
    for lang in ("en", "zh"):
        assert len(set(OWNER_ANSWERS[lang])) >= 8 and len(set(NAMED_OWNER_ANSWERS[lang])) >= 5 and len(set(ORIGIN_SENTENCES[lang])) >= 4
        assert all("{owner}" in a and "{name}" not in a for a in OWNER_ANSWERS[lang])
    origin = "InternLM (书生·浦语)"
    args = ["data", "self-cognition", "--owner", "Ada", "--origin", origin, "--n", "300", "--seed", "3", "-o", "sc.jsonl"]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pairs = [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in read_jsonl(tmp_path / "sc.jsonl")]
    zh = [a for q, a in pairs if q in QUESTIONS["zh"]]
    en = [a for q, a in pairs if q in QUESTIONS["en"]]
    assert len(zh) + len(en) == 300 and zh and en and all(origin in a for _, a in pairs)
    assert all(a.index("Ada") < a.index(origin) for _, a in pairs)  # the owner first, the real model after it
    assert any(a.startswith("我是Ada的小助手") for a in zh) and any(a.startswith("I am Ada's assistant") for a in en)
    assert not any(a.endswith(origin) for _, a in pairs)  # the origin in a sentence, not a name tacked on
    assert len(set(zh)) >= 20 and len(set(en)) >= 20  # varied phrasings
    records = self_cognition_records("Zed", 200, "both", 1, owner="Ada")
    assert all("Zed" in r["messages"][1]["content"] and "Ada" in r["messages"][1]["content"] for r in records)
    err = failed(run_cli("data", "self-cognition", "--owner", "Ada", "--author", "ACME", "-o", "x.jsonl", cwd=tmp_path))
    assert "--author goes with --name" in err
    err = failed(run_cli("data", "self-cognition", "-o", "x.jsonl", cwd=tmp_path))
    assert "--name" in err and "--owner" in err


# -- helpers and import hygiene ----------------------------------------------------------------


def test_target_writers_handle_multi_turn():
    sample = {"messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"},
    ], "id": 1}
    assert alpaca_export(sample) == {"instruction": "q2", "input": "", "output": "a2", "system": "s", "history": [["q1", "a1"]], "id": 1}
    assert conversation_export(sample)["conversation"] == [{"system": "s", "input": "q1", "output": "a1"}, {"input": "q2", "output": "a2"}]
    with pytest.raises(RecordError):
        alpaca_export({"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]})
    with pytest.raises(RecordError):
        conversation_export({"text": "plain"})


def test_parse_map():
    assert parse_map(["question=instruction,answer=output", "ctx=input"]) == {"question": "instruction", "answer": "output", "ctx": "input"}
    with pytest.raises(FtcoreError):
        parse_map(["question"])


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys\nfrom ftcore.cli import create_cli\n"
        "for args in (['--help'], ['data', '--help'], ['data', 'convert', '--help']):\n"
        "    try: create_cli().main(args, standalone_mode=False)\n"
        "    except SystemExit: pass\n"
        "print(sorted(m for m in ('datasets', 'torch', 'transformers', 'pyarrow', 'openpyxl') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".tsv", ".parquet", ".xlsx"])
def test_write_records_round_trips_through_load_records(tmp_path, suffix):
    from ftcore.data.files import write_records
    from ftcore.data.load import load_records

    records = [{"instruction": "q1", "output": "a1"}, {"instruction": "多语言", "output": "a2"}]
    path = write_records(tmp_path / f"d{suffix}", records)
    assert load_records(path) == records
    assert [p.name for p in tmp_path.iterdir()] == [f"d{suffix}"]


def test_write_records_failure_keeps_the_old_file_and_no_temp(tmp_path):
    from ftcore.data.files import write_records

    path = tmp_path / "d.parquet"
    write_records(path, [{"a": 1}])
    before = path.read_bytes()
    with pytest.raises(FtcoreError, match="Parquet"):
        write_records(path, [{"a": 1}, {"a": "text"}])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.parquet"]
