"""Activation memory without a GPU: the bytes autograd keeps per token for backward, per training setting.

Runs on the CPU. A small random Llama (the hidden size, MLP width and layers given) with LoRA on every
projection is prepared as ``ftcore run`` prepares it (loss head, varlen attention, the levers asked for), and one
forward under bf16 autocast is run inside ``torch.autograd.graph.saved_tensors_hooks``: every distinct storage
saved for backward is counted once. Activation memory scales with these bytes on a GPU too (the compiled kernels
differ, what they keep is the same), so memory levers can be compared here before a GPU measures their speed.

    python benchmarks/saved_activations.py                                  # eager, compile, fused, budgets
    python benchmarks/saved_activations.py --hidden 512 --intermediate 2048 --settings compile,compile+budget90
"""

from __future__ import annotations

import argparse


def saved_bytes_per_token(setting: str, args: argparse.Namespace) -> float:
    import torch
    import torch._functorch.config as functorch_config
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftcore.models.plan import prepare_for_training
    from ftcore.models.varlen import register
    from ftcore.recipe import Recipe, validate
    from ftcore.train.objective import loss_sum

    mods = set(setting.split("+"))
    budget = next((int(m[6:]) for m in mods if m.startswith("budget")), 100)
    torch._dynamo.reset()
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                         num_attention_heads=args.hidden // 64, num_key_value_heads=max(1, args.hidden // 128), vocab_size=args.vocab)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.config._attn_implementation = register()
    recipe = Recipe({"model": {"builder": "hf", "path": "unused", "gradient_checkpointing": "gc" in mods, "compile": "compile" in mods,
                               "fused_lora": "fused" in mods, "compile_memory_budget": budget / 100},
                     "adapter": {"kind": "lora", "r": args.r, "alpha": args.r, "dropout": 0.0}, "data": {"path": "unused"}, "train": {}}, "saved_activations")
    validate(recipe)
    plan = prepare_for_training(model, recipe["model"], recipe["adapter"])
    ids = torch.randint(0, args.vocab, (1, args.tokens))
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(args.tokens)[None]}
    for _ in range(3):  # compiled layers settle (compile, then recompile for dynamic shapes) before the count
        kept: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
            loss, n = loss_sum(plan.model, batch, plan)
        (loss / n).backward()
    functorch_config.activation_memory_budget = 1.0
    return sum(kept.values()) / args.tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default="eager,fused,compile,compile+fused,compile+budget90,compile+budget50,gc",
                   help="comma separated; each: eager, or +-joined compile, fused (model.fused_lora), gc (checkpointing), budgetNN")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--tokens", type=int, default=512)
    args = p.parse_args()
    print(f"Llama h={args.hidden} I={args.intermediate} x{args.layers} layers, LoRA r={args.r}, {args.tokens} tokens, bf16 autocast on the CPU")
    first = None
    for setting in args.settings.split(","):
        b = saved_bytes_per_token(setting, args)
        first = first or b
        print(f"  {setting:24s} {b:10,.0f} bytes/token saved for backward  ({b / first:.2f}x the first)", flush=True)


if __name__ == "__main__":
    main()
