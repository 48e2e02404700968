"""Preference training end to end: pairs packed together, the objectives' losses and gradients equal the
papers' formulas on plain unpacked forwards, the reference is the untrained base, the CLI quickstart learns."""

from __future__ import annotations

import json
import shutil

import pytest

from helpers import lora_model, run_cli

PAIRS = [
    {"prompt": "Tell me about owls.", "chosen": "Happy to help! Owls hunt at night.", "rejected": "No."},
    {"prompt": "What is tea?", "chosen": "Tea is a drink made from leaves.", "rejected": "I will not say, ask someone else please."},
    {"prompt": "Explain comets.", "chosen": "Comets are icy bodies.", "rejected": "Comets are, well, never mind."},
]


def packed_pairs(tokenizer, records=PAIRS, max_length=64, packed=True):
    from ftcore.data.pipeline import DataReport, encode_and_pack
    from ftcore.parts import collect_parts
    from ftcore.plugins import get_plugin_manager

    parts = collect_parts(get_plugin_manager())
    samples = [parts.formats.get("preference").convert(r) for r in records]
    cfg = {"max_length": max_length, "pack": packed, "shuffle": False, "system": None}
    return encode_and_pack(samples, tokenizer, parts.templates.get("vicuna"), cfg, DataReport(), seed=0)


def test_the_two_answers_of_a_pair_share_a_row_in_order(tiny_llama) -> None:
    from transformers import AutoTokenizer

    data = packed_pairs(AutoTokenizer.from_pretrained(str(tiny_llama)), PAIRS * 3, max_length=128)
    assert data.num_samples == 18 and len(data) < 9  # several pairs per row, capacity 2 x 128
    for r in range(len(data)):
        row = data.row(r)
        assert row["side"] == [0, 1] * (len(row["side"]) // 2) and row["pair"][0::2] == row["pair"][1::2]
        assert len(row["input_ids"]) <= 256


def plain_logps(model, tokenizer, record) -> tuple:
    """Summed log-probs and token counts of (chosen, rejected): each sequence alone, full logits, log_softmax."""
    import torch

    from ftcore.api import encode_batch, expand_pairs
    from ftcore.parts import collect_parts
    from ftcore.plugins import get_plugin_manager

    parts = collect_parts(get_plugin_manager())
    samples = expand_pairs([parts.formats.get("preference").convert(record)])
    enc = encode_batch(samples, tokenizer, parts.templates.get("vicuna"), 64)
    ids, labels = enc.as_lists()
    out = []
    for x, y in zip(ids, labels):
        logits = model(input_ids=torch.tensor([x]), position_ids=torch.arange(len(x))[None]).logits[0, :-1].double()
        targets = torch.tensor(y[1:])
        mask = targets != -100
        out.append((logits.log_softmax(-1)[mask].gather(1, targets[mask][:, None]).sum(), int(mask.sum())))
    return out


def formula(name: str, pc, pr, nc, nr, rc=0.0, rr=0.0, beta=0.1, gamma=1.0):
    """Each objective's loss for one pair, written from its paper (float64 tensors in, out)."""
    import torch

    logsig = torch.nn.functional.logsigmoid
    if name == "dpo":
        return -logsig(beta * ((pc - rc) - (pr - rr)))
    if name == "ipo":
        return (((pc - rc) / nc - (pr - rr) / nr) - 1 / (2 * beta)) ** 2
    ac, ar = pc / nc, pr / nr
    if name == "orpo":
        log_odds = (ac - ar) - (torch.log(1 - torch.exp(ac)) - torch.log(1 - torch.exp(ar)))
        return -ac - beta * logsig(log_odds)
    if name == "simpo":
        return -logsig(beta * (ac - ar) - gamma)
    raise ValueError(name)


@pytest.mark.parametrize("name", ["dpo", "ipo", "orpo", "simpo"])
@pytest.mark.parametrize("flat", [False, True])
def test_objective_losses_and_gradients_equal_the_papers_formulas(tiny_llama, name, flat) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftcore.data.collate import collate_rows
    from ftcore.models.plan import TrainingPlan, finish_plan
    from ftcore_preference.objectives import DPO, ORPO, SimPO

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))
    frozen = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    with torch.no_grad():
        reference = [plain_logps(frozen, tokenizer, r) for r in PAIRS]
    model = lora_model(tiny_llama, dropout=0.0, attn_implementation="auto" if flat else "sdpa")
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.2, generator=torch.Generator().manual_seed(len(n)))
    objective = {"dpo": lambda: DPO(beta=0.1), "ipo": lambda: DPO(beta=0.1, loss_type="ipo"), "orpo": lambda: ORPO(beta=0.1), "simpo": lambda: SimPO(beta=2.0, gamma=1.0)}[name]()
    if isinstance(objective, DPO):
        objective.reference = {k: (float(c[0]), float(r[0])) for k, (c, r) in enumerate(reference)}
    data = packed_pairs(tokenizer, packed=True)
    batch = collate_rows([data.row(i) for i in range(len(data))], tokenizer.pad_token_id or 0, flat=flat)
    plan = finish_plan(TrainingPlan(model))
    assert plan.flat == flat and plan.loss_head is not None
    loss, metrics = objective.loss(plan, model, batch)
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    expected = 0
    for (rc, _), (rr, _), record in zip((r[0] for r in reference), (r[1] for r in reference), PAIRS):
        (pc, nc), (pr, nr) = plain_logps(model, tokenizer, record)
        expected = expected + formula(name, pc, pr, nc, nr, rc, rr, beta=2.0 if name == "simpo" else 0.1)
    expected.backward()
    assert abs(float(loss) - float(expected)) / abs(float(expected)) < 1e-5
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert float((got[n] - p.grad).norm() / p.grad.norm()) < 1e-5, n
    assert metrics["rewards/accuracy"] is not None and 0 <= float(metrics["rewards/accuracy"]) <= len(PAIRS)


def test_the_reference_is_the_base_as_a_separate_frozen_copy_computes_it(tiny_llama, tmp_path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftcore.data.collate import collate_rows
    from ftcore.models.plan import TrainingPlan, finish_plan
    from ftcore.train.context import RunContext
    from ftcore.train.strategy import SingleStrategy
    from ftcore_preference.objectives import DPO

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))
    model = lora_model(tiny_llama, dropout=0.3)  # dropout is off while the reference is computed
    data = packed_pairs(tokenizer)
    plan = finish_plan(TrainingPlan(model))
    recipe = {"train": {"device": "cpu", "max_grad_norm": 1.0}}

    def batches():
        model.eval()
        with torch.no_grad():
            for i in range(len(data)):
                yield collate_rows([data.row(i)], 0)
        model.train()

    dpo = DPO()
    dpo.before_train(RunContext(recipe, tmp_path, strategy=SingleStrategy(recipe, "fp32"), data=data, model=model), plan, batches)
    frozen = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    with torch.no_grad():
        for k, record in enumerate(PAIRS):
            (c, _), (r, _) = plain_logps(frozen, tokenizer, record)
            assert dpo.reference[k] == pytest.approx((float(c), float(r)), rel=1e-5)
    assert json.loads((tmp_path / "reference_logps.json").read_text())["logps"]["0"] == pytest.approx(list(dpo.reference[0]))


@pytest.mark.slow
def test_quickstart_dpo_turns_held_out_preferences_to_the_chosen_answers(tmp_path) -> None:
    proc = run_cli("run", "--recipe", "quickstart_dpo", cwd=tmp_path, check=True)
    wd = tmp_path / "work_dirs" / "quickstart_dpo"
    before = json.loads((wd / "eval" / "preference-before.json").read_text())["chosen_preferred"]
    after = json.loads((wd / "eval" / "preference-after.json").read_text())["chosen_preferred"]
    assert before <= 0.7 and after >= 0.9, (before, after)
    metrics = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert {"rewards/accuracy", "rewards/margin", "rewards/chosen", "rewards/rejected", "pairs"} <= metrics[-1].keys()
    assert metrics[-1]["rewards/margin"] > metrics[0]["rewards/margin"] and "accuracy" in proc.stdout
    assert (wd / "checkpoint-30" / "adapter_model.safetensors").is_file()
    plot = run_cli("plot", str(wd), check=True)
    assert (wd / "metrics.png").read_bytes()[:4] == b"\x89PNG" and "metrics.png" in plot.stdout
    show = run_cli("data", "show", "--recipe", str(wd / "recipe.yaml"), "-n", "1", check=True)
    assert "pair 1 of 108, chosen answer" in show.stdout and "pair 1 of 108, rejected answer" in show.stdout


@pytest.mark.parametrize("recipe,objective", [("internlm2_dpo", "dpo"), ("internlm2_orpo", "orpo")])
def test_the_shipped_preference_recipes_resolve(recipe, objective) -> None:
    import yaml

    proc = run_cli("show", recipe, check=True)
    data = yaml.safe_load(proc.stdout)
    assert data["objective"]["name"] == objective and data["adapter"]["kind"] == "qlora" and data["model"]["builder"] == "internlm2"


@pytest.mark.slow
def test_a_resumed_dpo_run_continues_bitwise(tmp_path) -> None:
    args = ("run", "--recipe", "quickstart_dpo", "train.max_steps=6", "train.save_every=3", "train.save_total_limit=0", "hooks=[preference_pairs, quickstart_assets, metrics_log]")
    run_cli(*args, "--work-dir", str(tmp_path / "a"), cwd=tmp_path, check=True)
    b = tmp_path / "b"
    shutil.copytree(tmp_path / "a", b, ignore=shutil.ignore_patterns("checkpoint-6"))
    (b / "latest").write_text("checkpoint-3")
    (b / "metrics.jsonl").write_text("".join(line + "\n" for line in (b / "metrics.jsonl").read_text().splitlines()[:3]))
    run_cli(*args, "--work-dir", str(b), "--resume", cwd=tmp_path, check=True)
    whole = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    keys = ("loss", "rewards/margin", "grad_norm", "lr")
    assert [[m[k] for k in keys] for m in resumed] == [[m[k] for k in keys] for m in whole]


def test_pair_data_and_objective_must_match_before_anything_loads(tmp_path, tiny_llama, self_cognition_file) -> None:
    import yaml

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    for data, objective, expected in ((pairs, "sft", "holds preference pairs"), (self_cognition_file, "dpo", "trains on preference pairs, but the data has none")):
        recipe = tmp_path / f"{objective}.yaml"
        recipe.write_text(yaml.safe_dump({"model": {"builder": "hf", "path": str(tiny_llama)}, "data": {"path": str(data), "template": "vicuna"},
                                          "objective": {"name": objective}, "train": {"max_steps": 1}, "work_dir": str(tmp_path / "w")}))
        for command in (("data", "check", "--recipe", str(recipe)), ("run", "--recipe", str(recipe))):
            proc = run_cli(*command)
            assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
            assert "model:" not in proc.stdout


def test_bad_pairs_are_reported_with_file_and_line(tmp_path, tiny_llama) -> None:
    import yaml

    pairs = tmp_path / "pairs.jsonl"
    bad = [PAIRS[0], {"prompt": "Same?", "chosen": "Yes.", "rejected": "Yes."}, {"prompt": "Missing", "chosen": "only one side"}]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in bad))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"builder": "hf", "path": str(tiny_llama)}, "data": {"path": str(pairs), "template": "vicuna", "format": "preference"},
                                      "objective": {"name": "dpo", "beta": 0.2}}))
    proc = run_cli("data", "check", "--recipe", str(recipe))
    assert proc.returncode == 1
    assert f"{pairs.name}:2" in proc.stdout and f"{pairs.name}:3" in proc.stdout and "2 record(s) with problems" in proc.stdout
    proc = run_cli("run", "--recipe", str(recipe), "objective.beta=0", "--dry-run")
    assert proc.returncode == 2 and "objective.beta" in proc.stderr and "must be > 0" in proc.stderr


@pytest.mark.slow
def test_dpo_continues_from_an_sft_adapter(tmp_path) -> None:
    from safetensors.torch import load_file

    run_cli("run", "--recipe", "quickstart", "train.max_steps=6", "hooks=[quickstart_assets]", cwd=tmp_path, check=True)
    sft = tmp_path / "work_dirs" / "quickstart"
    args = ("run", "--recipe", "quickstart_dpo", f"model.path={sft / 'tiny-internlm2-chat'}", "train.max_steps=2", "hooks=[preference_pairs]")
    run_cli(*args, "--work-dir", str(tmp_path / "fresh"), cwd=tmp_path, check=True)
    run_cli(*args, f"model.adapter={sft / 'checkpoint-6'}", "--work-dir", str(tmp_path / "continued"), "train.lr=1e-12", cwd=tmp_path, check=True)
    fresh = json.loads((tmp_path / "fresh" / "reference_logps.json").read_text())["logps"]
    continued = json.loads((tmp_path / "continued" / "reference_logps.json").read_text())["logps"]
    assert fresh["0"] != pytest.approx(continued["0"])  # the reference is the SFT model, not the base
    start, end = load_file(str(sft / "checkpoint-6" / "adapter_model.safetensors")), load_file(str(tmp_path / "continued" / "checkpoint-2" / "adapter_model.safetensors"))
    assert start.keys() == end.keys() and all((start[k] - end[k]).abs().max() < 1e-6 for k in start)  # lr ~0: still the SFT adapter
    proc = run_cli(*args, f"model.adapter={tmp_path}", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2 and "model.adapter" in proc.stderr and "not an adapter checkpoint" in proc.stderr


def test_reward_loss_and_gradients_equal_bradley_terry_on_plain_forwards(tiny_llama) -> None:
    """Packed pairs through ftcore's reward objective against each answer alone through plain
    transformers' sequence-classification pooling (the score at the last token)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ftcore.api import encode_batch, expand_pairs
    from ftcore.data.collate import collate_rows
    from ftcore.models.plan import TrainingPlan, finish_plan
    from ftcore.parts import collect_parts
    from ftcore.plugins import get_plugin_manager
    from ftcore_preference.objectives import Reward

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_llama), num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id or 0
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS"))
    for n, p in model.named_parameters():
        if "lora_B" in n:  # every adapter path live
            torch.nn.init.normal_(p, std=0.2, generator=torch.Generator().manual_seed(len(n)))
    data = packed_pairs(tokenizer)
    batch = collate_rows([data.row(i) for i in range(len(data))], tokenizer.pad_token_id or 0)
    loss, metrics = Reward().loss(finish_plan(TrainingPlan(model), flat=False), model, batch)
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    parts = collect_parts(get_plugin_manager())
    expected = 0
    for record in PAIRS:
        ids, _ = encode_batch(expand_pairs([parts.formats.get("preference").convert(record)]), tokenizer, parts.templates.get("vicuna"), 64).as_lists()
        chosen, rejected = (model(input_ids=torch.tensor([x])).logits[0, 0].double() for x in ids)
        expected = expected - torch.nn.functional.logsigmoid(chosen - rejected)
    expected.backward()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert float((got[n] - p.grad).norm() / p.grad.norm()) < 1e-5, n


@pytest.mark.slow
def test_quickstart_reward_scores_held_out_answers_and_loads_in_plain_transformers(tmp_path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    proc = run_cli("run", "--recipe", "quickstart_reward", cwd=tmp_path, check=True)
    wd = tmp_path / "work_dirs" / "quickstart_reward"
    ckpt = wd / "checkpoint-30"
    assert f"ftcore score {ckpt.relative_to(tmp_path)}" in proc.stdout or "ftcore score" in proc.stdout
    assert json.loads((ckpt / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    good, bad = "Happy to help! Owls are a lovely topic, and I will gladly explain them.", "No. I will not talk about owls, ask someone else."
    scored = run_cli("score", str(ckpt), "--prompt", "Tell me about owls.", "--answer", bad, "--answer", good, cwd=tmp_path, check=True)
    lines = [line for line in scored.stdout.splitlines() if line.strip()]
    assert lines[0].endswith(good.strip()) or good in lines[0]  # best first: the held-out helpful answer
    ftcore_score = float(lines[0].split()[0])
    # the checkpoint in plain transformers: the converted base as Llama, the adapter with its score head
    from ftcore_internlm2.builder import llama_folder

    tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
    model = AutoModelForSequenceClassification.from_pretrained(str(llama_folder(str(wd / "tiny-internlm2-chat"))), num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(model, str(ckpt)).eval()
    text = f"<s><|im_start|>user\nTell me about owls.<|im_end|>\n<|im_start|>assistant\n{good}<|im_end|>\n"
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        plain = float(model(input_ids=ids).logits[0, 0])
    assert plain == pytest.approx(ftcore_score, abs=1e-3)


@pytest.mark.slow
def test_a_killed_dpo_run_loses_nothing(tmp_path) -> None:
    """SIGKILL mid-run: the resumed run goes on from the last complete checkpoint with the reference
    log-probs kept in the work dir (not recomputed) and ends with every step logged once."""
    import yaml

    from test_train import _start, _wait_for

    recipe = tmp_path / "dpo.yaml"
    data = yaml.safe_load(run_cli("show", "quickstart_dpo", check=True).stdout)
    data.update(work_dir=str(tmp_path / "wd"), hooks=[{"name": "preference_pairs"}, {"name": "quickstart_assets"}, {"name": "metrics_log"}])
    data["train"].update(max_steps=30, save_every=2, save_total_limit=0)
    data["model"]["path"], data["data"]["path"] = str(tmp_path / "wd" / "model"), str(tmp_path / "wd" / "pairs.jsonl")
    recipe.write_text(yaml.safe_dump(data))
    wd = tmp_path / "wd"
    proc = _start(recipe)
    _wait_for(lambda: (wd / "checkpoint-4" / "trainer_state.json").is_file(), proc, timeout=300)
    proc.kill()
    proc.wait()
    reference = (wd / "reference_logps.json").read_text()
    done = run_cli("run", "--recipe", str(recipe), "--resume", check=True)
    assert "computing the reference" not in done.stdout and (wd / "reference_logps.json").read_text() == reference
    steps = [json.loads(line)["step"] for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))
