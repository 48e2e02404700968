"""The DPO quickstart's pairs (made locally) and the hook that measures which answer of held-out pairs a model prefers."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Annotated, Any

from ftcore.api import Option, TrainingHook

TOPICS = [
    "rivers", "volcanoes", "bread", "chess", "comets", "bees", "glaciers", "violins", "deserts", "owls", "bridges", "tea",
    "maps", "clocks", "whales", "gardens", "lighthouses", "kites", "coral", "trains", "mushrooms", "castles", "tides", "honey",
    "salt", "wolves", "lanterns", "caves", "sails", "pianos", "orchards", "fossils", "storms", "canals", "moss", "ink",
]
QUESTIONS = ["Tell me about {t}.", "What should I know about {t}?", "Can you explain {t}?", "I am curious about {t}."]
CHOSEN = "Happy to help! {T} are a lovely topic, and I will gladly explain them."
REJECTED = "No. I will not talk about {t}, ask someone else."


def make_pairs(topics: list[str], seed: int) -> list[dict[str, str]]:
    """``{prompt, chosen, rejected}`` records: a helpful answer preferred over a refusal, per topic and question."""
    rng = random.Random(seed)
    pairs = [{"prompt": q.format(t=t), "chosen": CHOSEN.format(T=t.capitalize(), t=t), "rejected": REJECTED.format(t=t)} for t in topics for q in QUESTIONS]
    rng.shuffle(pairs)
    return pairs


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


class PairAssets(TrainingHook):
    """Writes ``data.path`` (training pairs) and ``held_out`` (pairs on other topics) when missing."""

    creates = ("data.path",)

    def __init__(self, held_out: Annotated[str, Option("where to write the held-out pairs (relative to the work dir)")] = "data/held_out_pairs.jsonl") -> None:
        self.held_out = held_out

    def setup(self, ctx: Any) -> None:
        train = Path(ctx.recipe["data"]["path"] if isinstance(ctx.recipe["data"]["path"], str) else ctx.recipe["data"]["path"][0])
        split = len(TOPICS) * 3 // 4
        if not train.is_file():
            _write(train, make_pairs(TOPICS[:split], ctx.recipe["train"]["seed"]))
            ctx.print(f"quickstart: wrote {split * len(QUESTIONS)} preference pairs to {train}")
        held_out = Path(ctx.work_dir) / self.held_out
        if not held_out.is_file():
            _write(held_out, make_pairs(TOPICS[split:], ctx.recipe["train"]["seed"] + 1))


class PreferenceEval(TrainingHook):
    """Before and after training: on held-out pairs, how often the model gives the chosen answer a
    higher log-prob per token than the rejected one (work_dir/eval/preference-{before,after}.json)."""

    order = 50

    def __init__(self, path: Annotated[str, Option("held-out pairs ({prompt, chosen, rejected} jsonl), relative to the work dir")] = "data/held_out_pairs.jsonl") -> None:
        self.path = path

    def before_train(self, ctx: Any) -> None:
        if ctx.step == 0:
            self.before = self.measure(ctx, "before")

    def after_train(self, ctx: Any) -> None:
        after = self.measure(ctx, "after")
        if getattr(self, "before", None) is not None:
            ctx.print(f"preference on held-out pairs: chosen preferred in {self.before:.0%} before training, {after:.0%} after")

    def measure(self, ctx: Any, label: str) -> float:
        """The fraction of held-out pairs whose chosen answer the model prefers (by mean token log-prob)."""
        import torch

        from ftcore.api import collate_rows, encode_batch, expand_pairs, pack

        from .formats import FORMATS
        from .objectives import answer_logps, split_pairs

        fmt = next(f for f in FORMATS if f.name == "preference")
        records = [json.loads(line) for line in (Path(ctx.work_dir) / self.path).read_text(encoding="utf-8").splitlines() if line.strip()]
        samples = expand_pairs([fmt.convert(r) for r in records])
        encoded = encode_batch(samples, ctx.tokenizer, ctx.template, ctx.recipe["data"]["max_length"], system=ctx.recipe["data"]["system"])
        extras = {key: [samples[i][key] for i in encoded.indices.tolist()] for key in ("side", "pair")}
        rows = pack(encoded, 2 * ctx.recipe["data"]["max_length"], packed=False, shuffle=False, extras=extras, group=2)
        model = ctx.plan.model
        was_training = model.training
        model.eval()
        wins = []
        try:
            with torch.no_grad():
                for i in range(len(rows)):
                    batch = collate_rows([rows.row(i)], ctx.tokenizer.pad_token_id or 0)
                    batch = {k: v.to(ctx.strategy.device) if isinstance(v, torch.Tensor) and k not in ctx.plan.cpu_inputs else v for k, v in batch.items()}
                    logps, lengths, _ = answer_logps(ctx.plan, model, batch)
                    (chosen, rejected), (nc, nr) = split_pairs(logps, batch["samples"]["side"]), split_pairs(lengths, batch["samples"]["side"])
                    wins.append(bool((chosen / nc > rejected / nr).item()))
        finally:
            model.train(was_training)
        share = sum(wins) / max(1, len(wins))
        if ctx.is_main:
            out = Path(ctx.work_dir) / "eval" / f"preference-{label}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"pairs": len(wins), "chosen_preferred": share}, indent=2))
        ctx.print(f"preference on {len(wins)} held-out pairs ({label} training): chosen preferred in {share:.0%}")
        return share
