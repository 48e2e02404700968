"""``ftcore merge`` of a reward-model adapter: a sequence-classification checkpoint that plain
transformers loads (``AutoModelForSequenceClassification``, pad token set) and whose scores, on the
chat template's rendering of each answer, equal ``ftcore score``'s."""

from __future__ import annotations

import json
import re

from helpers import run_cli

PROMPT = "Tell me about owls."
ANSWERS = ["No. I will not talk about owls.", "Happy to help! Owls hunt at night.", "Owls are birds."]


def test_a_merged_reward_model_scores_in_plain_transformers_as_ftcore_score_does(tmp_path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    work = tmp_path / "reward"
    run_cli("run", "--recipe", "quickstart_reward", "train.max_steps=4", "train.save_every=4", "--work-dir", str(work), check=True)
    checkpoint, out = work / "checkpoint-4", tmp_path / "merged"
    proc = run_cli("merge", str(work / "tiny-internlm2-chat"), str(checkpoint), str(out), "--dtype", "fp32")
    assert proc.returncode == 0, proc.stderr
    assert "AutoModelForSequenceClassification" in proc.stdout and "ftcore chat" not in proc.stdout

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert model.config.pad_token_id == tok.pad_token_id is not None
    assert model.score.weight.shape[0] == 1

    proc = run_cli("score", str(checkpoint), "--prompt", PROMPT, *[arg for a in ANSWERS for arg in ("--answer", a)])
    assert proc.returncode == 0, proc.stderr
    scored = {m.group(2).strip(): float(m.group(1)) for m in re.finditer(r"^([+-]\d+\.\d+)  (.*)$", proc.stdout, re.M)}
    assert set(scored) == set(ANSWERS)

    # one batch, padded on the right: the head pools each row's last non-pad token
    texts = [tok.apply_chat_template([{"role": "user", "content": PROMPT}, {"role": "assistant", "content": a}], tokenize=False) for a in ANSWERS]
    batch = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        plain = model(**batch).logits[:, 0].tolist()
    for answer, value in zip(ANSWERS, plain):
        assert abs(value - scored[answer]) < 1e-4 + 5e-5, (answer, value, scored[answer])
    assert len({round(v, 3) for v in plain}) == len(ANSWERS)  # the scores tell the answers apart
