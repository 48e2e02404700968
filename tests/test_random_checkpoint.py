"""Random checkpoints written already quantized (the 70B-shaped benchmark checkpoint, in miniature): they load in
plain transformers as 4-bit layers without a quantization pass, and FSDP-QLoRA loaded in CPU memory trains on them
through the CLI on two processes (gloo) as one process does."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import run_cli
from test_fsdp import assert_same_run
from test_train import make_recipe

pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def quantized_checkpoint(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, LlamaConfig

    from ftcore.models.random_checkpoint import write_random_checkpoint
    from ftcore.models.tiny import make_tokenizer

    path = make_tokenizer(tmp_path_factory.mktemp("random-nf4"))
    tok = AutoTokenizer.from_pretrained(str(path))
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         initializer_range=0.15)
    return write_random_checkpoint(config, path, shard_bytes=50_000, dtype="float32")  # several shards, as a large model has; fp32 as CPU runs train


def test_it_loads_as_4bit_layers_drawn_as_asked(quantized_checkpoint: Path) -> None:
    import bitsandbytes as bnb
    import torch
    from bitsandbytes.functional import dequantize_4bit
    from transformers import AutoModelForCausalLM

    assert (quantized_checkpoint / "model.safetensors.index.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(str(quantized_checkpoint), device_map={"": "cpu"})
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7  # every projection of both layers, the head not
    weight = layers[0].weight
    drawn = dequantize_4bit(weight.data, weight.quant_state).float()
    assert drawn.shape == (64, 64) and weight.dtype == torch.float32 and 0.13 < float(drawn.std()) < 0.17  # initializer_range, through NF4
    assert float(model.model.norm.weight.float().mean()) == 1.0


@pytest.mark.slow
def test_fsdp_qlora_loaded_in_cpu_memory_trains_on_it_as_one_process_does(tmp_path, quantized_checkpoint, self_cognition_file) -> None:
    runs = {}
    for name, strategy, processes in (("one", {"name": "single"}, 1), ("two", {"name": "fsdp", "load_in_cpu_memory": True}, 2)):
        (tmp_path / name).mkdir()
        recipe = make_recipe(tmp_path / name, quantized_checkpoint, self_cognition_file, adapter={"kind": "qlora", "dropout": 0.0}, strategy=strategy,
                             train={"max_steps": 3, "micro_batch": 2 // processes, "grad_accum": 2, "save_every": 3})
        run_cli("run", "--recipe", str(recipe), *(["--nproc-per-node", "2"] if processes > 1 else []), check=True)
        runs[name] = tmp_path / name / "wd"
    assert_same_run(runs["two"], runs["one"], "adapter_model.safetensors")


def test_unquantized_it_is_a_plain_checkpoint(tmp_path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from ftcore.models.random_checkpoint import write_random_checkpoint

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, vocab_size=128)
    model = AutoModelForCausalLM.from_pretrained(str(write_random_checkpoint(config, tmp_path, quantize=False)))
    assert model.dtype == torch.bfloat16 and getattr(model.config, "quantization_config", None) is None
    assert 0.015 < float(model.model.layers[0].mlp.up_proj.weight.float().std()) < 0.025  # initializer_range 0.02
