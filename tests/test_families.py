"""Model families (Qwen2.5, Qwen3, Llama 3, Mistral, Gemma 2/3, Phi-3/4) on tiny checkpoints of their real config classes and chat templates:
train, pack with isolation, chat and merge through the CLI; each speed lever gives the same loss and gradients or refuses clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import adapter_step, lora_model, run_cli

FAMILIES = ["qwen2_5", "qwen3", "llama3", "mistral", "gemma2", "gemma3", "phi3", "phi4"]


@pytest.fixture(scope="session")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from ftcore_families.tiny import make_family_model

    root = tmp_path_factory.mktemp("families")
    return {name: make_family_model(name, root / name) for name in FAMILIES}


def test_every_family_has_lora_and_qlora_recipes_in_ftcore_list() -> None:
    listed = {r["name"]: r for r in json.loads(run_cli("list", "recipes", "--json", check=True).stdout)}
    for family in FAMILIES:
        for kind in ("lora", "qlora"):
            assert listed[f"{family}_{kind}"]["plugin"].startswith("families"), listed.get(f"{family}_{kind}")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_template_renders_as_the_models_own_jinja_and_trains_only_answers(family, family_models) -> None:
    from transformers import AutoTokenizer

    from ftcore.data.encode import encode_batch
    from ftcore.parts import collect_parts
    from ftcore.plugins import get_plugin_manager
    from ftcore_families.tiny import FAMILIES as SPECS

    tok = AutoTokenizer.from_pretrained(str(family_models[family]))
    template = collect_parts(get_plugin_manager()).templates.get(SPECS[family].template)
    turns = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Zed."}]
    if family not in ("qwen3", "phi3"):  # their templates render earlier answers unlike the last one: one exchange
        turns += [{"role": "user", "content": "And?"}, {"role": "assistant", "content": "Nothing more."}]
    enc = encode_batch([{"messages": turns}], tok, template, 512)
    assert enc.tokens.tolist() == tok.apply_chat_template(turns, tokenize=True, return_dict=False)
    trained = tok.decode([t for t, lab in zip(enc.tokens.tolist(), enc.labels.tolist()) if lab != -100])
    assert "I am Zed." in trained and "Who are you" not in trained and "And?" not in trained


def _recipe(tmp_path: Path, model: Path, family: str, data: Path, **model_cfg) -> Path:
    from ftcore_families.tiny import FAMILIES as SPECS

    recipe = {
        "extends": f"{family}_lora",
        "model": {"path": str(model), "gradient_checkpointing": True, **model_cfg},
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"path": str(data), "format": "openai", "template": SPECS[family].template, "max_length": 64, "pack": True},
        "train": {"max_steps": 3, "lr": 5.0e-3, "micro_batch": 2, "grad_accum": 1, "save_every": 0, "epochs": 1},
        "hooks": [],
        "work_dir": str(tmp_path / "wd"),
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_packed_merges_and_chats_through_the_cli(family, family_models, tmp_path, self_cognition_file) -> None:
    model = family_models[family]
    gemma2 = {"chunked_loss": False} if family == "gemma2" else {}
    proc = run_cli("run", "--recipe", str(_recipe(tmp_path, model, family, self_cognition_file, **gemma2)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ckpt = tmp_path / "wd" / "checkpoint-3"
    assert (ckpt / "adapter_model.safetensors").is_file()
    merged = tmp_path / "merged"
    proc = run_cli("merge", str(model), str(ckpt), str(merged))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(merged)).chat_template == AutoTokenizer.from_pretrained(str(model)).chat_template
    proc = run_cli("chat", str(merged), "--prompt", "Who are you?", "--max-new-tokens", "4")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def test_gemma2_refuses_the_chunked_loss_head_with_the_key_to_change(family_models, tmp_path, self_cognition_file) -> None:
    proc = run_cli("run", "--recipe", str(_recipe(tmp_path, family_models["gemma2"], "gemma2", self_cognition_file, chunked_loss=True)))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "final_logit_softcapping=30.0" in proc.stderr and "model.chunked_loss=false" in proc.stderr


#: the levers together (gradient checkpointing with offloaded activations and the replay skip, the
#: chunked loss head, fused LoRA), and embedding offload alone, each against the same model without them
LEVERS = {
    "checkpointing, offload, replay skip, loss head, fused lora": {"gradient_checkpointing": True, "offload_activations": True, "chunked_loss": True, "fused_lora": True},
    "embedding offload": {"offload_embeddings": True},
}
#: (family, lever) -> what its refusal says
REFUSED = {
    ("gemma2", "embedding offload"): "not Gemma2TextScaledWordEmbedding",  # Gemma scales the embeddings it looks up
    ("gemma3", "embedding offload"): "not Gemma3TextScaledWordEmbedding",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_speed_levers_give_the_same_loss_and_gradients_or_refuse(family, family_models) -> None:
    import torch

    from ftcore.errors import FtcoreError

    base = {"gradient_checkpointing": False, "chunked_loss": False, "attn_implementation": "auto"}
    ref_loss, ref_grads = adapter_step(lora_model(family_models[family], dropout=0.0, **base))
    for lever, cfg in LEVERS.items():
        if family == "gemma2":  # its refusal of the loss head is tested through the CLI
            cfg = {**cfg, "chunked_loss": False}
        try:
            loss, grads = adapter_step(lora_model(family_models[family], dropout=0.0, **{**base, **cfg}))
        except FtcoreError as exc:
            assert REFUSED.get((family, lever), "-") in str(exc), (lever, exc)
            continue
        assert (family, lever) not in REFUSED, lever
        assert loss == pytest.approx(ref_loss, rel=1e-4), lever
        for name, grad in ref_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-3, atol=1e-5, msg=lambda m: f"{lever} {name}: {m}")


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "qwen2_5"])
def test_packed_samples_attend_only_to_themselves_with_softcap_and_sliding_windows(family, family_models) -> None:
    """Two samples packed in one row (varlen attention, position_ids restarting) give each sample's logits
    exactly as the model's eager attention does on it alone, windows longer than a sample included."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftcore.models.varlen import register

    path = str(family_models[family])
    eager = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
    packed = AutoModelForCausalLM.from_pretrained(path, attn_implementation=register(), dtype=torch.float32).eval()
    a, b = torch.randint(3, 200, (1, 40), generator=torch.Generator().manual_seed(3)), torch.randint(3, 200, (1, 17), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        row = packed(input_ids=torch.cat([a, b], 1), position_ids=torch.cat([torch.arange(40), torch.arange(17)])[None], use_cache=False).logits
        alone = [eager(input_ids=x, use_cache=False).logits for x in (a, b)]
    torch.testing.assert_close(row, torch.cat(alone, 1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_qlora_quantizes_each_familys_base_and_trains_its_adapter(family, family_models) -> None:
    """QLoRA per family (bitsandbytes' 4-bit on the CPU): the base's linear weights are NF4, the step's
    loss is finite and every LoRA matrix gets a gradient."""
    pytest.importorskip("bitsandbytes")
    import math

    model = lora_model(family_models[family], quantization="nf4", dropout=0.0, gradient_checkpointing=False,
                       attn_implementation="auto", chunked_loss=family != "gemma2")
    assert any(type(p).__name__ == "Params4bit" for p in model.parameters())
    loss, grads = adapter_step(model)
    assert math.isfinite(loss) and grads and all(float(g.abs().sum()) > 0 for g in grads.values())
