"""model.fp8_base: the frozen base's products in FP8 (e4m3, row scales), exact where FP8 holds the numbers, close to
the plain path otherwise, every frozen base layer converted, and the option refused where it cannot apply."""

from __future__ import annotations

import pytest
import torch
from helpers import adapter_step, load_sections, lora_model, run_cli

from ftcore.models.fp8 import E4M3, Fp8FrozenLinear, convert_frozen_linears


def _exact(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Values FP8 holds exactly (a few e4m3 numbers), each row scaled by its own power of two, with ±448 in each
    row so the row's scale is exactly that power of two."""
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0, 6.0, -1.0, -2.5, -4.0, 448.0])
    x = values[torch.randint(0, len(values) - 1, (rows, cols), generator=g)]
    x[:, 0] = 448.0
    return x * 2.0 ** torch.randint(-2, 3, (rows, 1), generator=g).float()


def test_products_are_exact_where_fp8_holds_the_numbers() -> None:
    w, x, g = _exact(32, 48, 0), _exact(24, 48, 1), _exact(24, 32, 2)
    layer = Fp8FrozenLinear(w, None)
    assert layer.weight_fp8.dtype == E4M3 and layer.weight_fp8.shape == (32, 48)
    xr = x.clone().requires_grad_(True)
    out = layer(xr)
    ref = x.double() @ w.double().t()
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=0)
    out.backward(g)
    torch.testing.assert_close(xr.grad.double(), g.double() @ w.double(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_products_match_the_plain_layer_within_fp8_rounding(dtype) -> None:
    torch.manual_seed(0)
    plain = torch.nn.Linear(64, 96, bias=True).to(dtype).requires_grad_(False)
    layer = Fp8FrozenLinear(plain.weight, plain.bias)
    x = torch.randn(3, 40, 64, dtype=dtype, requires_grad=True)
    x8 = x.detach().clone().requires_grad_(True)
    out, out8 = plain(x), layer(x8)
    assert out8.dtype == dtype and out8.shape == out.shape
    g = torch.randn_like(out)
    out.backward(g)
    out8.backward(g)
    for a, b in ((out8, out), (x8.grad, x.grad)):
        rel = float((a.detach().float() - b.float()).norm() / b.float().norm())
        assert 1e-4 < rel < 0.06  # FP8's rounding (3 mantissa bits), not an error in the layout or the scales
    assert not any(p.requires_grad for p in layer.parameters())


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_lora_model_trains_through_the_fp8_base(tiny_llama, quantization) -> None:
    plain = lora_model(tiny_llama, quantization, dropout=0.0)
    loss, grads = adapter_step(plain)
    model = lora_model(tiny_llama, quantization, dropout=0.0, fp8_base=True)
    layers = [m for m in model.modules() if isinstance(m, Fp8FrozenLinear)]
    config = model.config
    assert len(layers) == 7 * config.num_hidden_layers  # every base layer under peft's LoRA layers, not the head
    assert not isinstance(model.get_output_embeddings(), Fp8FrozenLinear)
    assert all(not hasattr(m, "weight") or m.weight is None for m in layers)  # the base's own weights are gone
    fp8_loss, fp8_grads = adapter_step(model)
    assert fp8_grads.keys() == grads.keys()
    assert abs(fp8_loss - loss) / loss < 0.02
    cosines = {name: float(torch.nn.functional.cosine_similarity(fp8_grads[name].flatten(), g.flatten(), dim=0)) for name, g in grads.items()}
    assert min(cosines.values()) > 0.9, cosines  # 64-wide rows: FP8's rounding averages out little (a wrong layout gives ~0)
    assert sum(cosines.values()) / len(cosines) > 0.96


def test_compiled_layers_call_the_fp8_products_as_they_are(tiny_llama) -> None:
    """model.compile over the FP8 base (the setting it is fast with): the eager loss and gradients."""
    loss, grads = adapter_step(lora_model(tiny_llama, dropout=0.0, fp8_base=True, gradient_checkpointing=False))
    compiled_loss, compiled_grads = adapter_step(lora_model(tiny_llama, dropout=0.0, fp8_base=True, gradient_checkpointing=False, compile=True))
    assert compiled_loss == pytest.approx(loss, rel=1e-5)
    for name, g in grads.items():
        assert float((compiled_grads[name] - g).norm() / g.norm().clamp_min(1e-12)) < 1e-4, name


def test_replay_skip_uses_the_fp8_layers(tiny_llama, monkeypatch) -> None:
    skipped = []
    original = Fp8FrozenLinear.backward_only
    monkeypatch.setattr(Fp8FrozenLinear, "backward_only", lambda self, x: skipped.append(1) or original(self, x))
    model = lora_model(tiny_llama, dropout=0.0, fp8_base=True, offload_activations=True)
    skipping = [m for m in model.modules() if isinstance(m, Fp8FrozenLinear) and hasattr(m, "_ftcore_forward")]
    assert len(skipping) == model.config.num_hidden_layers  # each layer's down projection
    loss, grads = adapter_step(model)
    assert len(skipped) == model.config.num_hidden_layers  # each replay left its down projection uncomputed
    ref_loss, ref_grads = adapter_step(lora_model(tiny_llama, dropout=0.0, fp8_base=True))
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-7)


def test_convert_skips_trained_and_odd_sized_layers() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 20), torch.nn.Linear(32, 32))
    model[0].requires_grad_(False)
    model[1].requires_grad_(False)
    assert convert_frozen_linears(model) == 1
    assert isinstance(model[0], Fp8FrozenLinear) and type(model[1]) is torch.nn.Linear and type(model[2]) is torch.nn.Linear


def test_fp8_base_is_refused_for_a_full_fine_tune(tmp_path) -> None:
    from ftcore.errors import FtcoreError

    with pytest.raises(FtcoreError) as err:
        load_sections(tmp_path, None, model={"builder": "hf", "path": "m", "fp8_base": True}, adapter={"kind": "full"})
    assert "model.fp8_base" in str(err.value) and "trains every weight" in str(err.value)


def test_quickstart_learns_with_the_fp8_base(tmp_path) -> None:
    proc = run_cli("run", "--recipe", "quickstart", "--work-dir", str(tmp_path / "q"), "model.fp8_base=true", "train.max_steps=15", cwd=tmp_path, check=True)
    out = proc.stdout + proc.stderr
    assert "fp8 base" in out
    import json

    losses = [json.loads(line)["loss"] for line in (tmp_path / "q" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses[-1] < 0.5 * losses[0]


def test_a_gpu_without_fp8_products_is_refused_with_what_to_do(monkeypatch) -> None:
    from ftcore.errors import FtcoreError
    from ftcore.models.fp8 import check_device

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(FtcoreError) as err:
        check_device(torch.device("cuda", 0))
    assert "A100" in str(err.value) and "8.9" in str(err.value) and err.value.where == "model.fp8_base"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    check_device(torch.device("cuda", 0))  # Hopper: fine
    check_device(torch.device("cpu"))  # the CPU runs the products too
