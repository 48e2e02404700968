"""model.offload_activations: checkpointed layers keep their input in CPU memory, with the same gradients."""

from __future__ import annotations

import pytest


def _lora_loss_and_grads(tiny_llama, offload: bool, monkeypatch) -> tuple[float, dict, int]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ftcore.models import offload as offload_mod

    replays = []
    original = offload_mod._OffloadedCheckpoint.backward
    monkeypatch.setattr(offload_mod._OffloadedCheckpoint, "backward", staticmethod(lambda ctx, *g: replays.append(1) or original(ctx, *g)))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if offload:
        assert offload_mod.offload_checkpointed_inputs(model) == model.config.num_hidden_layers
    model = get_peft_model(model, LoraConfig(r=8, lora_dropout=0.3, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # B starts at zero; make every LoRA path carry gradient
    model.train()
    ids = torch.randint(3, 200, (2, 48), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)  # the dropout masks: the replay in backward must draw the same ones
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, len(replays)


def test_offloaded_checkpointing_gives_the_same_loss_and_gradients(tiny_llama, monkeypatch) -> None:
    loss, grads, replays = _lora_loss_and_grads(tiny_llama, False, monkeypatch)
    off_loss, off_grads, off_replays = _lora_loss_and_grads(tiny_llama, True, monkeypatch)
    assert replays == 0 and off_replays > 0  # every layer replayed from its CPU copy
    assert off_loss == loss
    assert grads.keys() == off_grads.keys() and len(grads) > 0
    for name, g in grads.items():
        assert ((off_grads[name] - g).norm() / g.norm().clamp_min(1e-12)) < 1e-6, name


def test_offload_without_checkpointing_is_a_clear_error(tiny_llama) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from ftcore.errors import FtcoreError
    from ftcore.models.plan import prepare_for_training

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    cfg = {"quantization": "none", "gradient_checkpointing": False, "offload_activations": True, "chunked_loss": False}
    adapter = {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "targets": "all-linear", "modules_to_save": None, "bias": "none"}
    with pytest.raises(FtcoreError, match="model.gradient_checkpointing=true") as err:
        prepare_for_training(model, cfg, adapter)
    assert err.value.where == "model.offload_activations"


def _prepared(tiny_llama, adapter_kind: str = "lora", **model_cfg):
    import torch
    from transformers import AutoModelForCausalLM

    from ftcore.models.plan import prepare_for_training

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    cfg = {"quantization": "none", "gradient_checkpointing": True, "offload_activations": False, "chunked_loss": False, **model_cfg}
    adapter = {"kind": adapter_kind, "r": 4, "alpha": 8, "dropout": 0.0, "targets": "all-linear", "modules_to_save": None, "bias": "none"}
    return prepare_for_training(model, cfg, adapter)


@pytest.mark.parametrize("offload_activations", [False, True])
def test_offloaded_embeddings_give_the_same_loss_and_gradients(tiny_llama, offload_activations) -> None:
    import torch

    results = []
    for offload in (False, True):
        plan = _prepared(tiny_llama, offload_embeddings=offload, offload_activations=offload_activations)
        model = plan.model
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(hash(name) % 1000))
        assert plan.cpu_inputs == (("input_ids",) if offload else ())
        embedding = model.get_input_embeddings()
        assert hasattr(embedding, "_ftcore_device") == offload and not embedding.weight.requires_grad
        ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(1))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append((float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (loss, grads), (off_loss, off_grads) = results
    assert off_loss == loss and grads.keys() == off_grads.keys() and grads
    for name, g in grads.items():
        assert torch.equal(off_grads[name], g), name


def test_offloaded_embeddings_refuse_what_they_cannot_do(tiny_llama) -> None:
    from ftcore.errors import FtcoreError

    with pytest.raises(FtcoreError, match="this run trains them") as err:
        _prepared(tiny_llama, adapter_kind="full", offload_embeddings=True)
    assert err.value.where == "model.offload_embeddings"


def test_offloaded_embeddings_refuse_tied_embeddings(tiny_llama) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from ftcore.errors import FtcoreError
    from ftcore.models.offload import offload_embeddings

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    model.get_output_embeddings().weight = model.get_input_embeddings().weight  # tied, as small models ship
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(FtcoreError, match="tied to the LM head") as err:
        offload_embeddings(model)
    assert err.value.where == "model.offload_embeddings"
    assert model.get_input_embeddings().weight.device.type == "cpu" and not hasattr(model.get_input_embeddings(), "_ftcore_device")
