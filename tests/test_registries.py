"""Adapter kinds, optimizers and learning-rate schedules are registries: listed with their owner,
chosen by name with "did you mean", and a plugin adds one in a few lines."""

from __future__ import annotations

import json

import pytest

from ftcore.api import LoRA
from ftcore.errors import ValidationError
from helpers import load_sections, parts_with, run_cli


def test_the_core_kinds_are_listed_with_their_owner() -> None:
    rows = json.loads(run_cli("list", "--json", check=True).stdout)
    owners = {(r["kind"], r["name"]): r for r in rows}
    for kind, names in {"adapters": ("lora", "qlora", "dora", "full"), "optimizers": ("adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"),
                        "schedules": ("cosine", "linear", "constant")}.items():
        for name in names:
            row = owners[(kind, name)]
            assert row["plugin"].startswith("core (ftcore ") and row["description"], row


@pytest.mark.parametrize("override,key,close", [
    ("adapter.kind=lorra", "adapter.kind", "'lora'"), ("train.optimizer=adamw8bit", "train.optimizer", "'adamw_8bit'"),
    ("train.schedule=cosin", "train.schedule", "'cosine'"),
])
def test_an_unknown_name_is_a_validation_error_with_did_you_mean(override, key, close, tmp_path) -> None:
    proc = run_cli("run", "--recipe", "quickstart", override, "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2 and key in proc.stderr and f"did you mean {close}" in proc.stderr, proc.stderr


class FourBitDoRA(LoRA):
    """DoRA on a 4-bit base, with a plugin option."""

    quantized_base = True

    def __init__(self, init_gaussian: bool = False) -> None:
        self.init_gaussian = init_gaussian

    def lora_config(self, model, adapter_cfg):
        return {**super().lora_config(model, adapter_cfg), "use_dora": True, "init_lora_weights": "gaussian" if self.init_gaussian else True}


def half_life(progress: float) -> float:
    """halves every tenth of the run"""
    return 0.5 ** (10 * progress)


@pytest.fixture(scope="module")
def parts():
    return parts_with("kinds", register_adapters=[("qdora", FourBitDoRA, "DoRA on a 4-bit base")],
                      register_schedules=[("half_life", half_life, "halves every tenth of the run")])


def test_what_an_adapter_kind_implies_comes_from_its_class(tmp_path, parts) -> None:
    assert load_sections(tmp_path, parts, adapter={"kind": "qlora"})["model"]["quantization"] == "nf4"
    recipe = load_sections(tmp_path, parts, adapter={"kind": "qdora", "init_gaussian": True})
    assert recipe["model"]["quantization"] == "nf4" and recipe["adapter"]["init_gaussian"] is True
    assert load_sections(tmp_path, parts, adapter={"kind": "qdora"}, model={"builder": "hf", "path": "m", "quantization": "int8"})["model"]["quantization"] == "int8"
    with pytest.raises(ValidationError, match="model.quantization: a quantized base cannot be fully fine-tuned"):
        load_sections(tmp_path, parts, adapter={"kind": "full"}, model={"builder": "hf", "path": "m", "quantization": "nf4"})
    with pytest.raises(ValidationError) as err:
        load_sections(tmp_path, parts, adapter={"kind": "lora", "init_gaussian": True})  # another kind's option
    assert [(p.path, p.message) for p in err.value.problems] == [("adapter.init_gaussian", "unknown key")]


def test_a_run_makes_the_registered_kind_with_its_options(tmp_path, parts) -> None:
    from ftcore.train.runner import make_adapter

    adapter = make_adapter(load_sections(tmp_path, parts, adapter={"kind": "qdora", "init_gaussian": True}), parts)
    assert isinstance(adapter, FourBitDoRA) and adapter.init_gaussian


def test_dora_trains_on_the_cpu_and_its_magnitudes_learn(tiny_llama) -> None:
    import torch

    from ftcore.models.adapters import DoRA
    from helpers import lora_model

    model = lora_model(tiny_llama, dropout=0.0, adapter=DoRA())
    magnitudes = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_magnitude_vector" in n}
    assert magnitudes and all(p.requires_grad for n, p in model.named_parameters() if "lora_magnitude_vector" in n)
    from ftcore.train.objective import loss_sum

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(3, 200, (2, 32), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(32).expand(2, -1)}
    losses = []
    for _ in range(8):
        loss, n = loss_sum(model, batch)
        (loss / n).backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss / n))
    assert losses[-1] < losses[0] - 0.5, losses
    assert any(not torch.equal(p, magnitudes[n]) for n, p in model.named_parameters() if n in magnitudes)


def test_a_plugin_schedule_drives_warmup_decay_and_resume(parts) -> None:
    import torch

    from ftcore.train.optim import build_scheduler

    decay = parts.schedules.get("half_life")
    cfg = {"warmup_ratio": 0.0, "schedule": "half_life", "min_lr_ratio": 0.0}
    params = [torch.nn.Parameter(torch.zeros(1))]
    fn = build_scheduler(torch.optim.SGD(params, lr=1.0), cfg, 100, decay=decay).lr_lambdas[0]
    assert [fn(s) for s in (0, 10, 20)] == pytest.approx([1.0, 0.5, 0.25])
    resumed = build_scheduler(torch.optim.SGD(params, lr=1.0), cfg, 200, resumed=(50, 100), decay=decay).lr_lambdas[0]
    assert resumed(50) == pytest.approx(fn(50)) and resumed(65) == pytest.approx(fn(50) / 2)  # on from where it was, over the new length
    with pytest.raises(Exception, match="not one of the core's schedules"):
        build_scheduler(torch.optim.SGD(params, lr=1.0), cfg, 100)  # outside a run, only the core's are found by name


def test_8bit_adamw_updates_like_bitsandbytes_without_waiting_for_the_device(monkeypatch) -> None:
    import bitsandbytes as bnb
    import bitsandbytes.optim.optimizer as bnb_optimizer
    import torch

    from ftcore.train.optim import OPTIMIZERS

    waits: list[str] = []
    monkeypatch.setattr(bnb_optimizer, "sync_gpu", lambda t: waits.append("wait"))
    cfg = {"lr": 1e-2, "weight_decay": 0.01, "betas": (0.9, 0.999)}
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5000)) for _ in range(3)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt, reference = OPTIMIZERS["adamw_8bit"](ours, cfg), bnb.optim.AdamW8bit(theirs, **cfg)
    assert isinstance(opt, bnb.optim.AdamW8bit)  # checkpoints and state dicts stay bitsandbytes'
    for _ in range(3):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn(5000)
            q.grad = p.grad.clone()
        opt.step()
        assert waits == []  # no per-parameter device sync
        reference.step()
        assert len(waits) == 3  # bitsandbytes' own step waits after every parameter
        waits.clear()
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs))  # the same update, bit for bit
    paged = OPTIMIZERS["paged_adamw_8bit"]([torch.nn.Parameter(torch.randn(4096))], cfg)
    paged.param_groups[0]["params"][0].grad = torch.randn(4096)
    paged.step()
    assert waits  # paged state keeps bitsandbytes' waits (its prefetches are asynchronous)
