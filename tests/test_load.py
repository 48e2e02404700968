"""Loading records from every supported file type, with file:line locations and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftcore.data.apply import FormatReport, apply_format
from ftcore.data.files import FILE_TYPES, WRITABLE, write_records
from ftcore.data.formats import RecordError
from ftcore.data.load import load_records, load_samples
from ftcore.errors import FtcoreError
from ftcore_formats.formats import FORMATS

F = {f.name: f for f in FORMATS}
ALPACA = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(4)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def error(paths, **kw) -> str:
    with pytest.raises(FtcoreError) as info:
        load_records(paths, **kw)
    return str(info.value)


# -- each file type -----------------------------------------------------------------------


def test_jsonl_records_know_their_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    records = load_records(str(path))
    assert records == [{"a": 1}, {"a": 2}]
    assert records.where(1) == f"{path}:3"


def test_json_list_records_know_line_and_index(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ALPACA[:3], indent=2), encoding="utf-8")
    records = load_records(path)
    assert records == ALPACA[:3]
    assert records.where(0) == f"{path}:2 (item [0])"
    assert records.where(2) == f"{path}:12 (item [2])"


def test_json_dict_of_lists_is_an_error_with_hint(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"train": ALPACA, "test": ALPACA}), encoding="utf-8")
    text = error(path)
    assert "object of lists" in text and "train, test" in text and "hint:" in text


def test_csv_rows_know_their_line_and_empty_cells_are_none(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('instruction,input,output\nq1,,a1\n"multi\nline",x,a2\n', encoding="utf-8")
    records = load_records(path)
    assert records[0] == {"instruction": "q1", "input": None, "output": "a1"}
    assert records[1]["instruction"] == "multi\nline"
    assert records.where(1) == f"{path}:3"


def test_tsv(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("text\tid\nhello\t1\n", encoding="utf-8")
    assert load_records(path) == [{"text": "hello", "id": "1"}]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ALPACA), path)
    records = load_records(path)
    assert records == ALPACA
    assert records.where(3) == f"{path}:row 4"


def test_xlsx_written_with_openpyxl(tmp_path):
    import openpyxl

    path = tmp_path / "d.xlsx"
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["question", "answer"])
    sheet.append(["What is 6*7?", 42])
    sheet.append([None, None])  # blank rows are skipped
    sheet.append(["Capital of France?", "Paris"])
    book.save(path)
    records = load_records(path)
    assert records == [{"question": "What is 6*7?", "answer": "42"}, {"question": "Capital of France?", "answer": "Paris"}]
    assert records.where(1) == f"{path}:row 4"


def test_save_to_disk_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_list(ALPACA).save_to_disk(str(tmp_path / "saved"))
    records = load_records(tmp_path / "saved")
    assert records == ALPACA
    DatasetDict({"train": Dataset.from_list(ALPACA)}).save_to_disk(str(tmp_path / "dd"))
    text = error(tmp_path / "dd")
    assert "splits train" in text and str(tmp_path / "dd" / "train") in text


def test_several_files_are_concatenated_with_their_own_locations(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ALPACA[:2])
    b = tmp_path / "b.json"
    b.write_text(json.dumps(ALPACA[2:]), encoding="utf-8")
    records = load_records([a, str(b)])
    assert records == ALPACA
    assert records.where(1) == f"{a}:2" and records.where(2).startswith(f"{b}:1")


def test_max_samples_is_a_seeded_subset(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"i": i} for i in range(50)])
    one = load_records(path, max_samples=10, seed=1)
    assert len(one) == 10 and one == load_records(path, max_samples=10, seed=1)
    assert one != load_records(path, max_samples=10, seed=2)
    assert [r["i"] for r in one] == sorted(r["i"] for r in one)
    assert one.where(0) == f"{path}:{one[0]['i'] + 1}"
    assert len(load_records(path, max_samples=500)) == 50


def test_json_lines_in_a_json_file_are_read_with_their_lines(tmp_path):
    path = write_jsonl(tmp_path / "huatuo.json", ALPACA[:3])  # the Huatuo medical file is JSON Lines named .json
    records = load_records(path)
    assert records == ALPACA[:3]
    assert records.where(2) == f"{path}:3"  # a line, no list index
    path.write_text(json.dumps(ALPACA[0]) + "\n" + json.dumps(ALPACA[1]) + "\n" + '{"instruction": "q",, "output": "a"}\n', encoding="utf-8")
    text = error(path)
    assert f"{path}:3" in text and "malformed JSON on line 3" in text and '{"instruction": "q",, "output": "a"}' in text


def test_plain_text_becomes_pretrain_documents_by_paragraph_or_file(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes("First paragraph,\r\ntwo lines.\r\n\r\n\n  \nSecond.\n\nThird 第三段.\n".encode())
    records = load_records(path)
    assert records == [{"text": "First paragraph,\ntwo lines."}, {"text": "Second."}, {"text": "Third 第三段."}]
    assert [records.where(i) for i in range(3)] == [f"{path}:1", f"{path}:6", f"{path}:8"]
    whole = load_records(path, options={"text_split": "file"})
    assert whole == [{"text": "First paragraph,\ntwo lines.\n\n\n  \nSecond.\n\nThird 第三段."}] and whole.where(0) == f"{path}:1"
    (tmp_path / "empty.md").write_text("\n \n", encoding="utf-8")
    assert "no records" in error(tmp_path / "empty.md")
    (tmp_path / "gbk.txt").write_bytes("ok\n\n你好\n".encode("gbk"))
    assert f"{tmp_path / 'gbk.txt'}:3" in error(tmp_path / "gbk.txt")


def test_a_folder_of_markdown_is_read_but_a_readme_beside_data_files_is_not(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nalpha\n", encoding="utf-8")
    (docs / "b.md").write_text("beta\n", encoding="utf-8")
    assert load_records(docs) == [{"text": "# A"}, {"text": "alpha"}, {"text": "beta"}]
    assert load_records(docs, options={"text_split": "file"}) == [{"text": "# A\n\nalpha"}, {"text": "beta"}]
    data = tmp_path / "dataset"
    data.mkdir()
    write_jsonl(data / "train.jsonl", ALPACA[:2])
    (data / "README.md").write_text("# About this dataset\n", encoding="utf-8")
    assert load_records(data) == ALPACA[:2]


def _workbook(path: Path) -> Path:
    import openpyxl

    book = openpyxl.Workbook()
    notes = book.active
    notes.title = "Notes"
    notes.append(["note", "date"])
    notes.append(["made by hand", "2024-01-01"])
    qa = book.create_sheet("QA")
    qa.append(["question", "answer"])
    qa.append(["What is 6*7?", 42])
    book.save(path)
    return path


def test_xlsx_sheet_by_name_or_index_and_a_missing_one_lists_the_sheets(tmp_path):
    path = _workbook(tmp_path / "book.xlsx")
    assert load_records(path) == [{"note": "made by hand", "date": "2024-01-01"}]  # the first sheet by default
    qa = [{"question": "What is 6*7?", "answer": "42"}]
    assert load_records(path, options={"sheet": "QA"}) == qa
    assert load_records(path, options={"sheet": 1}) == load_records(path, options={"sheet": "1"}) == qa
    text = error(path, options={"sheet": "Answers"})
    assert "no sheet 'Answers'" in text and "sheet 0 'Notes' (columns: note, date); sheet 1 'QA' (columns: question, answer)" in text
    text = error(write_jsonl(tmp_path / "d.jsonl", ALPACA), options={"sheet": "QA"})
    assert "no data file is an .xlsx workbook" in text


def test_a_format_that_misses_a_column_of_a_workbook_names_its_sheets(tmp_path):
    path = _workbook(tmp_path / "book.xlsx")
    with pytest.raises(FtcoreError) as info:
        load_samples(path, "alpaca", FORMATS)
    text = str(info.value)
    assert "missing field 'instruction'" in text
    assert "sheet 0 'Notes' (columns: note, date); sheet 1 'QA' (columns: question, answer)" in text and "data.sheet" in text


# -- bad input ---------------------------------------------------------------------------


def test_malformed_jsonl_line_reports_file_line_and_snippet(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3,, "b": "snippet-here"}\n', encoding="utf-8")
    text = error(path)
    assert f"{path}:3" in text and '{"a": 3,, "b": "snippet-here"}' in text and "column 9" in text


def test_malformed_json_file_reports_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"a": 1},\n  {"a": 2\n]\n', encoding="utf-8")
    assert f"{path}:4" in error(path)


def test_non_object_line_is_an_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    assert f"{path}:2" in error(path) and "array" in error(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_bad_encoding_names_line_and_byte(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    lines = {".jsonl": ['{"text": "ok"}', '{"text": "ok"}', '{"text": "你好"}'],
             ".json": ['[{"text": "ok"},', '{"text": "ok"},', '{"text": "你好"}]'],
             ".csv": ["text", "ok", "你好"]}[suffix]
    path.write_bytes("\n".join(lines).encode("gbk"))
    text = error(path)
    assert f"{path}:3" in text and "UTF-8" in text and "byte 0x" in text and "GBK" in text


def test_unknown_extension_lists_supported(tmp_path):
    path = tmp_path / "d.docx"
    path.write_text("hello", encoding="utf-8")
    text = error(path)
    assert "'.docx'" in text and ".jsonl" in text and ".xlsx" in text and ".txt" in text and "save_to_disk" in text


def test_the_file_table_drives_reading_writing_and_messages(tmp_path):
    (tmp_path / "d.ndjson").write_text('{"a": 1}\n', encoding="utf-8")  # a second suffix of the jsonl type
    assert load_records(tmp_path / "d.ndjson").where(0) == f"{tmp_path / 'd.ndjson'}:1"
    (tmp_path / "d.markdown").write_text("# notes", encoding="utf-8")
    text = error(tmp_path / "d.markdown")
    assert "rename it to .md" in text
    assert all(suffix in text for t in FILE_TYPES for suffix in t.suffixes)
    assert WRITABLE == tuple(t.suffixes[0] for t in FILE_TYPES if t.write is not None)
    for name in ("d.ndjson", "d.txt", "d.md"):  # written only under a type's first suffix; plain text is read only
        with pytest.raises(FtcoreError) as info:
            write_records(tmp_path / "out" / name, [{"a": 1}])
        assert all(suffix in str(info.value) for suffix in WRITABLE)


@pytest.mark.parametrize("content", ["", "\n\n", "[]", "instruction,output\n"])
def test_empty_dataset_is_an_error(tmp_path, content):
    path = tmp_path / ("d.csv" if "," in content else "d.json" if content == "[]" else "d.jsonl")
    path.write_text(content, encoding="utf-8")
    assert "no records" in error(path) or "no rows" in error(path)


def test_missing_file_suggests_a_close_name(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ALPACA)
    text = error(tmp_path / "trian.jsonl")
    assert "not found" in text and "train.jsonl" in text


# -- apply_format -----------------------------------------------------------------------


def test_apply_format_raise_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ALPACA[0], {"instruction": "q"}, ALPACA[1]])
    with pytest.raises(RecordError) as info:
        apply_format(load_records(path), F["alpaca"])
    assert info.value.field == "output" and info.value.where == f"{path}:2"
    assert f"{path}:2" in str(info.value) and "'output'" in str(info.value) and "on_error" in str(info.value)


def test_apply_format_skip_reports_count_and_locations(tmp_path):
    bad = {"instruction": "q"}
    nooutput = {"instruction": "q", "output": "<nooutput>"}
    path = write_jsonl(tmp_path / "d.jsonl", [ALPACA[0], bad, nooutput, bad, ALPACA[1]])
    samples, report = apply_format(load_records(path), F["alpaca"], on_error="skip")
    assert isinstance(report, FormatReport)
    assert (report.total, report.kept, report.dropped, report.skipped) == (5, 2, 1, 2)
    assert report.dropped_at == [f"{path}:3"]
    assert report.problems[0].startswith(f"{path}:2") and report.problems[1].startswith(f"{path}:4")
    assert samples.where(1) == f"{path}:5"
    assert "2 malformed" in report.summary()


def test_apply_format_with_no_samples_left_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "q"}] * 3)
    with pytest.raises(FtcoreError, match="no samples left"):
        apply_format(load_records(path), F["alpaca"], on_error="skip")
    with pytest.raises(FtcoreError, match="on_error"):
        apply_format(load_records(path), F["alpaca"], on_error="ignore")


def test_load_samples_detects_the_format(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ALPACA)
    samples, report = load_samples(path, "auto", F)
    assert report.format == "alpaca" and len(samples) == 4
    assert samples[0]["messages"][1] == {"role": "assistant", "content": "a0"}
