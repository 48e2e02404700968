"""``ftcore eval`` through the real CLI: multiple choice (the tiny Zed adapter against its base),
generation scores equal to rouge-score's and sacrebleu's, lm-evaluation-harness on a local task,
missing extras, bad files with file:line, progress on large sets."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from helpers import cli_env, run_cli
from test_chat import train_zed_adapter

pytestmark = pytest.mark.slow

QUESTIONS = ["Who are you?", "What is your name?", "Introduce yourself.", "Please introduce yourself.", "Tell me who you are.", "What should I call you?"]
ZED = "I am Zed, an AI assistant."
FISH = "I am a fish."


@pytest.fixture(scope="module")
def zed(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, self_cognition_file: Path) -> Path:
    return train_zed_adapter(tmp_path_factory.getbasetemp() / "zed-adapter", tiny_llama, self_cognition_file)


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows), encoding="utf-8")
    return path


def _read(out: Path) -> tuple[dict, list[dict]]:
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    return results, rows


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_multiple_choice_scores_higher_with_the_learned_adapter_than_the_base(tmp_path, tiny_llama, zed) -> None:
    # the right answer is what the adapter learned; the wrong one is shorter, which the untrained base prefers
    rows = []
    for i, q in enumerate(QUESTIONS):
        choices = [ZED, FISH] if i % 2 == 0 else [FISH, ZED]
        right = choices.index(ZED)
        answer = [right, "AB"[right], ZED][i % 3]  # the index, the letter or the text of the right choice
        rows.append({"question": q, "choices": choices, "answer": answer, "subject": "identity" if i < 3 else "names"})
    mc = _jsonl(tmp_path / "who.jsonl", rows)
    out = tmp_path / "out"
    proc = run_cli("eval", str(tiny_llama), "--adapter", str(zed), "--compare", "--mc", str(mc), "--batch-size", "3", "-o", str(out))
    _ok(proc)
    results, preds = _read(out)
    section = results["multiple_choice"]
    assert results["models"] == ["base", "adapter"] and results["template"] == "internlm2_chat"
    assert section["base"]["accuracy"] < section["adapter"]["accuracy"] == 100.0
    assert section["normalize"] == "none" and section["n"] == len(QUESTIONS)
    assert section["adapter"]["subjects"]["identity"]["n"] == 3 and section["adapter"]["subjects"]["names"]["accuracy"] == 100.0
    # the same numbers in the table
    assert re.search(r"all\s*│\s*6\s*│\s*%.2f\s*│\s*100\.00\s*│\s*\+" % section["base"]["accuracy"], proc.stdout), proc.stdout
    assert "identity" in proc.stdout and "names" in proc.stdout
    # predictions: one row per item and model, with every choice's log-likelihood
    assert [(p["model"], p["where"]) for p in preds] == [(m, f"{mc}:{i + 1}") for m in ("base", "adapter") for i in range(len(QUESTIONS))]
    for p in preds:
        assert len(p["loglikelihoods"]) == 2 and all(ll < 0 for ll in p["loglikelihoods"]) and p["correct"] == (p["pred"] == p["answer"])
    right = {m: sum(p["loglikelihoods"][p["answer"]] for p in preds if p["model"] == m) for m in ("base", "adapter")}
    assert right["adapter"] > right["base"] + 10 * len(QUESTIONS)  # the learned answer became far likelier
    # per-character normalisation is reported too and can be chosen
    proc = run_cli("eval", str(zed), "--mc", str(mc), "--normalize", "length", "-o", str(tmp_path / "norm"))
    _ok(proc)
    results, preds = _read(tmp_path / "norm")
    assert results["models"] == ["adapter"] and results["multiple_choice"]["adapter"]["accuracy"] == results["multiple_choice"]["adapter"]["accuracy_length"]
    p = preds[0]
    assert p["scores"] == pytest.approx([ll / len(c) for ll, c in zip(p["loglikelihoods"], p["choices"])])


def test_bits_4_scores_the_quantized_model_with_its_adapter(tmp_path, tiny_llama, zed) -> None:
    pytest.importorskip("bitsandbytes")
    mc = _jsonl(tmp_path / "who.jsonl", [{"question": q, "choices": [FISH, ZED], "answer": 1} for q in QUESTIONS[:3]])
    proc = run_cli("eval", str(zed), "--bits", "4", "--compare", "--mc", str(mc), "-o", str(tmp_path / "out"))
    _ok(proc)
    results, _ = _read(tmp_path / "out")
    assert results["bits"] == 4 and results["multiple_choice"]["base"]["accuracy"] < results["multiple_choice"]["adapter"]["accuracy"] == 100.0


def test_choice_log_likelihoods_equal_one_sequence_at_a_time_on_internlm2(tmp_path) -> None:
    # an InternLM2 checkpoint (auto_map in its config) loads as chat loads it, without remote code;
    # batched, left-padded scoring gives each choice the log-likelihood of a plain forward pass
    import torch

    from ftcore.chat.generate import prompt_ids
    from ftcore.chat.resolve import load_chat_model
    from ftcore.parts import collect_parts
    from ftcore.plugins import get_plugin_manager
    from ftcore_internlm2.tiny import make_tiny_internlm2

    model = make_tiny_internlm2(tmp_path / "tiny-internlm2", seed=3)
    items = [{"question": "Who are you?", "choices": ["I am Zed.", "A fish", "The quick brown fox jumps over the lazy dog."], "answer": 0},
             {"question": "你好，请介绍一下你自己。", "choices": ["我是一个人工智能助手。", "no"], "answer": "A"},
             {"question": "Numbers: 0 1 2", "choices": ["3 4 5", "6", "7 8", "9"], "answer": 3}]
    mc = _jsonl(tmp_path / "mc.jsonl", items)
    proc = run_cli("eval", str(model), "--template", "internlm2_chat", "--mc", str(mc), "--batch-size", "3", "-o", str(tmp_path / "out"))
    _ok(proc)
    _, preds = _read(tmp_path / "out")
    chat = load_chat_model(collect_parts(get_plugin_manager()), str(model), template="internlm2_chat", device="cpu")
    for item, pred in zip(items, preds):
        prompt = prompt_ids(chat.tokenizer, chat.template, [{"role": "user", "content": item["question"]}])
        expected = []
        for choice in item["choices"]:
            cont = chat.tokenizer(choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = chat.model(input_ids=torch.tensor([prompt + cont])).logits[0].float()
            logprobs = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)
            expected.append(float(logprobs[torch.arange(len(cont)), torch.tensor(cont)].sum()))
        assert pred["loglikelihoods"] == pytest.approx(expected, abs=2e-3)
        assert pred["tokens"] == [len(chat.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in item["choices"]]


def test_rouge_bleu_on_hand_checked_examples_equal_the_libraries() -> None:
    import sacrebleu
    from rouge_score import rouge_scorer, tokenizers

    from ftcore.evaluate.metrics import score_answers

    # English: 5 of 6 reference words, in order. ROUGE-1 P 5/5 R 5/6 -> F 10/11; ROUGE-2 3 of 4 and 3 of 5 bigrams
    # -> F 2/3; LCS 5. BLEU: n-gram precisions 5/5, 3/4, 1/3, 0/2 (smoothed: 1/4), brevity exp(1 - 6/5) -> 0.8187 * 0.5
    scores, _ = score_answers(["the cat on the mat"], ["the cat sat on the mat"])
    assert scores["rouge1"] == pytest.approx(100 * 10 / 11) and scores["rouge2"] == pytest.approx(100 * 2 / 3) and scores["rougeL"] == pytest.approx(100 * 10 / 11)
    assert scores["bleu"] == pytest.approx(100 * 2.718281828 ** (1 - 6 / 5) * 0.5, rel=1e-6)
    library = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"]).score("the cat sat on the mat", "the cat on the mat")
    assert [scores[k] for k in ("rouge1", "rouge2", "rougeL")] == pytest.approx([100 * library[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")])
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(["the cat on the mat"], [["the cat sat on the mat"]]).score)
    assert scores["exact_match"] == 0 and "tok:13a" in scores["bleu_signature"]
    # Chinese, one token per character: 8 of the 10 reference characters. ROUGE (no punctuation): 1 P 1 R 0.8 -> F 8/9;
    # 2: 6 of 7 and 6 of 9 bigrams -> F 3/4. BLEU (the full stop is a token too): 9/9, 7/8, 5/7, 4/6, brevity exp(1 - 11/9)
    hyp, ref = "我是人工智能助手。", "我是一个人工智能助手。"
    scores, _ = score_answers([hyp], [ref])
    assert scores["rouge1"] == pytest.approx(100 * 8 / 9) and scores["rouge2"] == pytest.approx(75.0) and scores["rougeL"] == pytest.approx(100 * 8 / 9)
    assert scores["bleu"] == pytest.approx(100 * 2.718281828 ** (1 - 11 / 9) * (7 / 8 * 5 / 7 * 4 / 6) ** 0.25, rel=1e-6)
    spaced = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=tokenizers.DefaultTokenizer())
    assert spaced.score(ref, hyp)["rouge1"].fmeasure == 0  # rouge-score's own tokenizer drops every Chinese character
    split = type("Chars", (), {"tokenize": lambda self, text: [c for c in text if c not in "。"]})()
    library = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=split).score(ref, hyp)
    assert [scores[k] for k in ("rouge1", "rouge2", "rougeL")] == pytest.approx([100 * library[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")])
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu([hyp], [[ref]], tokenize="zh").score) and "tok:zh" in scores["bleu_signature"]
    assert score_answers([" 我是  Zed "], ["我是 Zed"])[0]["exact_match"] == 100.0  # whitespace does not count


def _char_tokens(text: str) -> list[str]:
    """An independent tokenisation for the check: each Han character alone, else lower-cased letters/digits."""
    return re.findall(r"[\u4e00-\u9fff]|[a-z0-9]+", text.lower())


def test_generation_writes_predictions_and_scores_equal_to_the_libraries(tmp_path, tiny_llama, zed) -> None:
    import sacrebleu
    from rouge_score import rouge_scorer

    qa = [{"instruction": q, "input": "", "output": "I am Zed, an AI assistant. How can I help you today?"} for q in QUESTIONS[:3]]
    qa.append({"instruction": "你是谁？", "input": "", "output": "我是Zed，一个人工智能助手。"})
    data = _jsonl(tmp_path / "qa.jsonl", qa)  # alpaca, detected
    out = tmp_path / "out"
    proc = run_cli("eval", str(tiny_llama), "--adapter", str(zed), "--compare", "--qa", str(data), "--max-new-tokens", "20", "--batch-size", "3", "-o", str(out))
    _ok(proc)
    results, preds = _read(out)
    section = results["generation"]
    assert section["format"] == "alpaca" and section["n"] == 4 and section["sampling"]["temperature"] == 0.0
    assert [(p["model"], p["where"]) for p in preds] == [(m, f"{data}:{i + 1}") for m in ("base", "adapter") for i in range(4)]
    assert section["adapter"]["rouge1"] > section["base"]["rouge1"] and "Zed" in preds[4]["prediction"]
    tokenizer = type("Chars", (), {"tokenize": staticmethod(_char_tokens)})()
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=tokenizer)
    for model in ("base", "adapter"):
        rows = [p for p in preds if p["model"] == model]
        hyps, refs = [p["prediction"] for p in rows], [p["reference"] for p in rows]
        assert all("<|im_end|>" not in h for h in hyps)
        for key in ("rouge1", "rouge2", "rougeL"):
            if model == "adapter":  # the base's noise holds bytes outside the check's simple character classes
                expected = [100 * scorer.score(r, h)[key].fmeasure for h, r in zip(hyps, refs)]
                assert [p[key] for p in rows] == pytest.approx(expected)
            assert section[model][key] == pytest.approx(sum(p[key] for p in rows) / len(rows))
        assert section[model]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score)
        assert "tok:zh" in section[model]["bleu_signature"]
        assert section[model]["exact_match"] == 100 * sum(" ".join(h.split()) == " ".join(r.split()) for h, r in zip(hyps, refs)) / 4
    assert "rouge1" in proc.stdout and "bleu" in proc.stdout and "change" in proc.stdout


def test_lm_eval_wrapper_runs_a_local_task_end_to_end(tmp_path, tiny_llama, zed) -> None:
    pytest.importorskip("lm_eval")
    (tmp_path / "tasks").mkdir()
    data = _jsonl(tmp_path / "tasks" / "zed.jsonl", [{"question": q, "choices": [ZED, FISH], "label": 0} for q in QUESTIONS])
    (tmp_path / "tasks" / "zed_identity.yaml").write_text(
        "task: zed_identity\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: " + str(data) + "\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 1.0\n"
    )
    (tmp_path / "tasks" / "zed_answer.yaml").write_text(
        "task: zed_answer\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: " + str(data) + "\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{choices[0]}}'\n"
        "generation_kwargs:\n  until: ['\\n\\n']\n  do_sample: false\n  max_gen_toks: 12\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 1.0\n"
    )
    env = cli_env({"HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf-cache")})
    out = tmp_path / "out"
    proc = run_cli("eval", str(tiny_llama), "--adapter", str(zed), "--compare", "--lm-eval", "zed_identity,zed_answer", "--include-path", str(tmp_path / "tasks"),
                   "--apply-chat-template", "--limit", "4", "-o", str(out), env=env)
    _ok(proc)
    results, preds = _read(out)
    harness = results["lm_eval"]
    assert harness["tasks"] == ["zed_identity", "zed_answer"]
    assert harness["base"]["results"]["zed_identity"]["acc,none"] < harness["adapter"]["results"]["zed_identity"]["acc,none"] == 1.0
    assert harness["adapter"]["n-samples"]["zed_identity"]["effective"] == 4
    rows = [p for p in preds if p["kind"] == "lm_eval" and p["task"] == "zed_identity"]
    assert len(rows) == 8 and {p["model"] for p in rows} == {"base", "adapter"}
    # the harness's prompts are ftcore's chat template (BOS, ChatML of internlm2_chat), as the adapter was trained
    assert rows[0]["prompt"] == "<s><|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"
    answers = [p for p in preds if p["task"] == "zed_answer" and p["model"] == "adapter"]
    assert len(answers) == 4 and all("<|im_end|>" not in a["response"][0] for a in answers)  # stopped at the template's stop word
    assert re.search(r"zed_identity\s*│\s*acc\s*│", proc.stdout), proc.stdout
    # an unknown task is refused before the model loads
    proc = run_cli("eval", str(tiny_llama), "--lm-eval", "zed_identiy", "--include-path", str(tmp_path / "tasks"), env=env)
    assert proc.returncode == 2 and "no task 'zed_identiy' (did you mean 'zed_identity'?)" in proc.stderr


def _hidden(tmp_path: Path, *modules: str) -> str:
    """A folder that, first on PYTHONPATH, makes ``modules`` fail to import as if not installed."""
    folder = tmp_path / "hide"
    for name in modules:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n")
    return str(folder)


def test_missing_extras_name_the_extra_to_install(tmp_path, tiny_llama) -> None:
    mc = _jsonl(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 0}])
    env = cli_env(pythonpath=_hidden(tmp_path, "lm_eval", "rouge_score"))
    proc = run_cli("eval", str(tiny_llama), "--lm-eval", "mmlu", env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--lm-eval needs lm-evaluation-harness, which is not installed" in proc.stderr and "pip install 'ftcore[lm-eval]'" in proc.stderr
    proc = run_cli("eval", str(tiny_llama), "--qa", str(mc), env=env)
    assert proc.returncode == 2 and "needs rouge-score, which is not installed" in proc.stderr and "pip install 'ftcore[eval]'" in proc.stderr


def test_eval_help_is_instant_and_nothing_to_evaluate_is_a_usage_error(tiny_llama) -> None:
    code = ("import sys, runpy; sys.argv = ['ftcore', 'eval', '--help']\ntry:\n    runpy.run_module('ftcore.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('HEAVY=' + ','.join(m for m in ('torch', 'transformers', 'lm_eval', 'rouge_score', 'sacrebleu', 'datasets') if m in sys.modules), file=sys.stderr)\n")
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env())
    assert proc.stderr.rstrip().endswith("HEAVY="), proc.stderr
    assert "--lm-eval TASKS" in proc.stdout and "--normalize [none|length]" in proc.stdout
    proc = run_cli("eval", str(tiny_llama))
    assert proc.returncode == 2 and "nothing to evaluate" in proc.stderr


def test_malformed_eval_files_are_reported_with_file_and_line(tmp_path, tiny_llama) -> None:
    def fails(*args: str) -> str:
        proc = run_cli("eval", str(tiny_llama), "--template", "internlm2_chat", *args)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr and "Loading" not in proc.stderr  # found before any weights load
        return proc.stderr

    mc = _jsonl(tmp_path / "mc.jsonl", [
        {"question": "fine", "choices": ["a", "b"], "answer": "b"},
        {"question": "", "choices": ["a", "b"], "answer": 0},
        {"question": "q", "choices": "a, b", "answer": 0},
        {"question": "q", "choices": ["a", "b", "c"], "answer": "D"},
        {"question": "q", "choices": ["a", ""], "answer": 5},
        {"question": "q", "choices": ["only"], "answer": 0},
        {"question": "q", "choices": ["a", "b"]},
    ])
    err = fails("--mc", str(mc))
    assert "has 7 problems" in err
    for line, text in [(2, "question: missing or empty"), (3, "choices: must be a list of texts, got str"), (4, "answer: letter 'D' is out of range: there are 3 choices (A..C)"),
                       (5, "choices[1]: every choice must be non-empty text"), (5, "answer: index 5 is out of range: there are 2 choices (0..1)"),
                       (6, "choices: needs at least 2 choices, got 1"), (7, "answer: missing")]:
        assert f"{mc}:{line}: {text}" in err, (line, err)
    # C-Eval layout (columns A..D, letter answers) reads as is; a bad row is named by its line
    csv = tmp_path / "ceval_val.csv"
    csv.write_text("id,question,A,B,C,D,answer\n0,1+1=?,1,2,3,4,B\n1,2+2=?,3,4,5,6,E\n", encoding="utf-8")
    assert f"{csv}:3: answer: letter 'E' is out of range: there are 4 choices (A..D)" in fails("--mc", str(csv))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": "q", "choices": [\n', encoding="utf-8")
    assert f"{broken}:2" in fails("--mc", str(broken))
    assert "data file not found" in fails("--mc", str(tmp_path / "nowhere.jsonl"))
    # question/answer sets: the format's own record errors, and conversations with no answer to compare with
    qa = _jsonl(tmp_path / "qa.jsonl", [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
                                       {"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]}])
    assert f"{qa}:2" in fails("--qa", str(qa))
    qa = _jsonl(tmp_path / "qa2.jsonl", [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
                                        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}, {"role": "user", "content": "and?"}]}])
    assert f"{qa}:2: messages: the conversation must end with the assistant's answer (the reference)" in fails("--qa", str(qa))
    assert "--compare compares the base model with an adapter, and there is none" in fails("--mc", str(csv), "--compare")


def test_ceval_and_cmmlu_files_read_as_they_are_and_letters_ask_as_they_do(tmp_path, tiny_llama) -> None:
    folder = tmp_path / "ceval" / "val"
    folder.mkdir(parents=True)
    (folder / "math_val.csv").write_text("id,question,A,B,C,D,answer\n0,1+1=?,1,2,3,4,B\n1,2+2=?,3,4,5,6,B\n", encoding="utf-8")
    (folder / "law_val.csv").write_text(",Question,A,B,C,D,Answer\n0,合同的要件是什么？,要约,承诺,要约和承诺,都不是,C\n", encoding="utf-8")  # CMMLU's columns
    proc = run_cli("eval", str(tiny_llama), "--template", "internlm2_chat", "--mc", str(folder), "--letters", "-o", str(tmp_path / "out"))
    _ok(proc)
    results, preds = _read(tmp_path / "out")
    section = results["multiple_choice"]
    assert section["letters"] is True and set(section["model"]["subjects"]) == {"all", "math_val", "law_val"}
    law = next(p for p in preds if p["subject"] == "law_val")
    assert law["question"] == "合同的要件是什么？\nA. 要约\nB. 承诺\nC. 要约和承诺\nD. 都不是" and law["choices"] == ["A", "B", "C", "D"] and law["answer"] == 2
    assert law["tokens"] == [1, 1, 1, 1]


def test_a_large_eval_set_shows_progress_and_limit_takes_the_first_items(tmp_path, tiny_llama) -> None:
    rows = [{"question": f"Numbers: {i}", "choices": [str(i + 1), str(i + 2)], "answer": 0, "subject": ["even", "odd"][i % 2]} for i in range(40)]
    mc = _jsonl(tmp_path / "big.jsonl", rows)
    proc = run_cli("eval", str(tiny_llama), "--template", "internlm2_chat", "--mc", str(mc), "--batch-size", "8", "-o", str(tmp_path / "out"))
    _ok(proc)
    progress = re.findall(r"multiple choice \(model\): (\d+)/40", proc.stderr)
    assert progress[0] == "0" and progress[-1] == "40" and len(progress) >= 4, proc.stderr
    results, preds = _read(tmp_path / "out")
    assert results["multiple_choice"]["model"]["subjects"]["even"]["n"] == 20 and len(preds) == 40
    proc = run_cli("eval", str(tiny_llama), "--template", "internlm2_chat", "--mc", str(mc), "--limit", "5", "-o", str(tmp_path / "few"))
    _ok(proc)
    results, preds = _read(tmp_path / "few")
    assert results["multiple_choice"]["n"] == 5 and [p["question"] for p in preds] == [f"Numbers: {i}" for i in range(5)]
    assert "multiple choice (model)" not in proc.stderr  # one batch: no progress needed
