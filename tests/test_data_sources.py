"""Files as people have them, through the real CLI: JSON Lines named .json, a workbook's second sheet,
plain text for pre-training, a system message for every converted record, named system presets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import run_cli

MEDICAL = [
    {"instruction": "我头晕，怎么办？", "input": "", "output": "先坐下休息，补充水分。"},
    {"instruction": "What helps a sore throat?", "input": "", "output": "Warm fluids and rest."},
    {"instruction": "有什么感冒药？", "input": "", "output": "对症治疗即可。", "system": "你是一名药剂师。"},
]


def write_lines(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def ok(proc) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def failed(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


def workbook(path: Path, columns: tuple[str, str] = ("question", "answer")) -> Path:
    import openpyxl

    book = openpyxl.Workbook()
    notes = book.active
    notes.title = "README"
    notes.append(["about"])
    notes.append(["medical Q&A, exported by hand"])
    qa = book.create_sheet("QA")
    qa.append(list(columns))
    qa.append(["What is a fever?", "A body temperature above 38 °C."])
    qa.append(["发烧怎么办？", "多喝水，必要时就医。"])
    book.save(path)
    return path


def test_json_lines_in_a_json_file_convert_with_a_preset_system_message(tmp_path):
    src = write_lines(tmp_path / "huatuo.json", MEDICAL)  # JSON Lines under a .json name, as the Huatuo file is
    out = ok(run_cli("data", "convert", "huatuo.json", "out.jsonl", "--to", "openai", "--system", "medical", cwd=tmp_path))
    records = read_jsonl(tmp_path / "out.jsonl")
    assert len(records) == 3 and "(alpaca (detected), 3 records)" in out
    medical = "如果你是一名医生，请根据患者的描述回答医学问题。"
    assert [r["messages"][0] for r in records[:2]] == [{"role": "system", "content": medical}] * 2
    assert records[2]["messages"][0] == {"role": "system", "content": "你是一名药剂师。"}  # a record's own system message stays
    assert "system message added to 2 record(s) (1 kept their own)" in out
    src.write_text(src.read_text(encoding="utf-8") + '{"instruction": "broken",, "output": "x"}\n', encoding="utf-8")
    err = failed(run_cli("data", "convert", "huatuo.json", "again.jsonl", "--to", "openai", cwd=tmp_path))
    assert "huatuo.json:4" in err and "malformed JSON on line 4" in err


def test_system_text_is_put_into_every_converted_conversation(tmp_path):
    write_lines(tmp_path / "d.jsonl", MEDICAL[:2])
    ok(run_cli("data", "convert", "d.jsonl", "out.jsonl", "--to", "sharegpt", "--system", "You are a careful doctor.", cwd=tmp_path))
    assert all(r["conversations"][0] == {"from": "system", "value": "You are a careful doctor."} for r in read_jsonl(tmp_path / "out.jsonl"))
    (tmp_path / "t.jsonl").write_text('{"text": "plain text"}\n', encoding="utf-8")
    err = failed(run_cli("data", "convert", "t.jsonl", "t2.jsonl", "--to", "pretrain", "--system", "x", cwd=tmp_path))
    assert "plain text (pretrain)" in err


def test_the_second_sheet_of_a_workbook_converts(tmp_path):
    workbook(tmp_path / "medqa.xlsx")
    args = ("data", "convert", "medqa.xlsx", "out.jsonl", "--map", "question=instruction,answer=output", "--to", "openai")
    err = failed(run_cli(*args, cwd=tmp_path))  # the first sheet has no question column: the error shows every sheet
    assert "--map names column(s) the data does not have: question" in err
    assert "sheet 0 'README' (columns: about); sheet 1 'QA' (columns: question, answer)" in err and "--sheet=NAME|INDEX" in err
    for sheet in ("QA", "1"):
        ok(run_cli(*args, "--sheet", sheet, "--force", cwd=tmp_path))
        records = read_jsonl(tmp_path / "out.jsonl")
        assert [r["messages"][0]["content"] for r in records] == ["What is a fever?", "发烧怎么办？"]
        assert records[1]["messages"][1] == {"role": "assistant", "content": "多喝水，必要时就医。"}
    err = failed(run_cli(*args, "--sheet", "Answers", "--force", cwd=tmp_path))
    assert "no sheet 'Answers'" in err and "sheet 1 'QA' (columns: question, answer)" in err


def test_a_recipe_reads_the_sheet_it_names(tmp_path, tiny_llama):
    workbook(tmp_path / "medqa.xlsx", ("instruction", "output"))
    recipe = {"model": {"builder": "hf", "path": str(tiny_llama)}, "data": {"path": "medqa.xlsx", "template": "internlm2_chat"}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    out = ok(run_cli("data", "check", "-r", "r.yaml", "data.sheet=QA", "data.format=alpaca", cwd=tmp_path))
    assert out.count("missing field") == 0 and "records 2" in out
    proc = run_cli("data", "check", "-r", "r.yaml", "data.format=alpaca", cwd=tmp_path)
    assert proc.returncode == 1 and "missing field 'instruction'" in proc.stdout
    assert "sheet 1 'QA' (columns: instruction, output); choose another with data.sheet=NAME|INDEX" in proc.stdout


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_tables_keep_converting(tmp_path, suffix):
    rows = [{"instruction": "q", "output": "a"}, {"instruction": "q2", "output": "a2"}]
    path = tmp_path / f"d{suffix}"
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        sep = "," if suffix == ".csv" else "\t"
        path.write_text(f"instruction{sep}output\nq{sep}a\nq2{sep}a2\n", encoding="utf-8")
    ok(run_cli("data", "convert", path.name, "out.jsonl", "--to", "alpaca", cwd=tmp_path))
    assert [(r["instruction"], r["output"]) for r in read_jsonl(tmp_path / "out.jsonl")] == [("q", "a"), ("q2", "a2")]


def test_plain_text_and_a_folder_of_markdown_convert_to_pretrain(tmp_path):
    (tmp_path / "book.txt").write_text("Chapter one.\nIt begins.\n\nChapter two.\n", encoding="utf-8")
    out = ok(run_cli("data", "convert", "book.txt", "book.jsonl", "--to", "pretrain", cwd=tmp_path))
    assert "(pretrain (detected), 2 records)" in out
    assert read_jsonl(tmp_path / "book.jsonl") == [{"text": "Chapter one.\nIt begins."}, {"text": "Chapter two."}]
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nalpha\n", encoding="utf-8")
    (docs / "b.md").write_text("beta\n", encoding="utf-8")
    ok(run_cli("data", "convert", "docs", "docs.jsonl", "--to", "pretrain", "--text-split", "file", cwd=tmp_path))
    assert read_jsonl(tmp_path / "docs.jsonl") == [{"text": "# A\n\nalpha"}, {"text": "beta"}]


def test_system_presets_are_listed_and_a_recipe_names_one(tmp_path, tiny_llama):
    help_text = ok(run_cli("data", "--help"))
    assert "System prompt presets" in help_text and "alpaca:" in help_text and "medical:" in help_text
    write_lines(tmp_path / "d.jsonl", MEDICAL[:2])
    recipe = {"model": {"builder": "hf", "path": str(tiny_llama)}, "data": {"path": "d.jsonl", "template": "internlm2_chat", "system": "alpaca"}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    shown = yaml.safe_load(ok(run_cli("show", "r.yaml", cwd=tmp_path)))
    assert shown["data"]["system"].startswith("Below is an instruction that describes a task.")
    shown = yaml.safe_load(ok(run_cli("show", "r.yaml", "data.system=Be brief.", cwd=tmp_path)))
    assert shown["data"]["system"] == "Be brief."  # anything but a preset's name is the prompt itself
    out = ok(run_cli("data", "show", "-r", "r.yaml", "-n", "1", cwd=tmp_path))
    assert "Below is an instruction that describes a task." in out
