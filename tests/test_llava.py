"""The llava plugin: the data format and image errors, batches with images, and the two LLaVA stages
end to end through the CLI (tiny CLIP + tiny LLM made locally), then chat and the transformers export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from ftcore_llava.quickstart import draw_shape
from helpers import run_cli

pytest.importorskip("PIL")

SHAPES = {  # image file -> (colour, shape, caption)
    "red_circle.png": ((230, 30, 30), "circle", "red circle"),
    "blue_square.png": ((30, 60, 230), "square", "blue square"),
    "green_triangle.png": ((30, 200, 60), "triangle", "green triangle"),
    "white_bar.png": ((250, 250, 250), "bar", "white bar"),
}
PROMPT = "What is in the image?"


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    from ftcore_llava.tiny import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> Path:
    """A tiny random Llama whose tokenizer knows the captions' words (a few tokens per caption)."""
    from ftcore.models.tiny import make_tiny_causal_lm, make_tokenizer

    root = tmp_path_factory.mktemp("models")
    captions = [c for _, _, c in SHAPES.values()] + [PROMPT, "Render a clear and concise summary of the photo."]
    make_tokenizer(root / "tok", extra_corpus=captions * 8)
    return make_tiny_causal_lm(root / "tiny-llm", tokenizer_dir=root / "tok")


@pytest.fixture(scope="session")
def llava_data(tmp_path_factory) -> Path:
    """images/ with coloured shapes, pretrain.json (captions) and finetune.jsonl (questions + a text-only record)."""
    root = tmp_path_factory.mktemp("llava-data")
    (root / "images" / "shapes").mkdir(parents=True)
    for name, (colour, shape, _) in SHAPES.items():
        draw_shape(root / "images" / "shapes" / name, colour, shape)
    pretrain = [
        {"id": f"p{i}-{name}", "image": f"shapes/{name}", "conversations": [{"from": "human", "value": "<image>\nRender a clear and concise summary of the photo."}, {"from": "gpt", "value": caption}]}
        for i in range(2) for name, (_, _, caption) in SHAPES.items()
    ]
    (root / "pretrain.json").write_text(json.dumps(pretrain))
    finetune = [
        {"id": f"f{i}-{name}", "image": f"shapes/{name}", "conversations": [{"from": "human", "value": f"{PROMPT}<image>"}, {"from": "gpt", "value": caption}]}
        for i in range(2) for name, (_, _, caption) in SHAPES.items()
    ]
    finetune.append({"id": "text-only", "conversations": [{"from": "human", "value": "Who are you?"}, {"from": "gpt", "value": "I am an AI assistant."}]})
    (root / "finetune.jsonl").write_text("".join(json.dumps(r) + "\n" for r in finetune))
    return root


# --------------------------------------------------------------------------- the format


def test_format_moves_the_image_tag_to_the_front_and_keeps_text_only_records(llava_data) -> None:
    from ftcore_llava.data import convert, image_folder

    record = {"id": "a1", "image": "shapes/red_circle.png", "conversations": [
        {"from": "human", "value": "Look: <image> what colour?"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "And the shape?"}, {"from": "gpt", "value": "circle"}]}
    with image_folder(llava_data / "images"):
        out = convert(record)
    assert out["image"] == "shapes/red_circle.png" and out["id"] == "a1"
    assert out["messages"][0] == {"role": "user", "content": "<image>\nLook: what colour?"}
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user", "assistant"]
    text = convert({"id": "t", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]})
    assert "image" not in text and text["messages"][0]["content"] == "hi"
    # an image without a tag goes to the front of the first human turn
    with image_folder(llava_data / "images"):
        untagged = convert({"image": "shapes/red_circle.png", "conversations": [{"from": "human", "value": "describe"}, {"from": "gpt", "value": "x"}]})
    assert untagged["messages"][0]["content"] == "<image>\ndescribe"


def test_missing_or_unreadable_image_names_the_record_and_path(llava_data, tmp_path) -> None:
    from ftcore.data.formats import RecordError
    from ftcore.data.load import apply_format
    from ftcore_llava.data import FORMAT, image_folder

    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    good = {"id": "ok", "image": "shapes/red_circle.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "red circle"}]}
    missing = {**good, "id": "rec-7", "image": "shapes/nope.png"}
    broken = {**good, "id": "rec-9", "image": str(tmp_path / "broken.png")}
    with image_folder(llava_data / "images"):
        with pytest.raises(RecordError) as err:
            FORMAT.convert(missing)
        assert "rec-7" in str(err.value) and "shapes/nope.png" in str(err.value) and err.value.field == "image"
        with pytest.raises(RecordError) as err:
            FORMAT.convert(broken)
        assert "rec-9" in str(err.value) and "broken.png" in str(err.value) and "cannot be read" in str(err.value)
        with pytest.raises(RecordError) as err:
            apply_format([good, missing], FORMAT)
        assert "rec-7" in str(err.value)
        samples, report = apply_format([good, missing, broken], FORMAT, on_error="skip")
    assert len(samples) == 1 and report.skipped == 2
    assert any("rec-7" in p for p in report.problems) and any("rec-9" in p for p in report.problems)


def test_a_run_reports_a_missing_image_or_skips_and_counts_it(tmp_path, tiny_llm, tiny_clip, llava_data) -> None:
    records = json.loads((llava_data / "pretrain.json").read_text())
    records.append({"id": "lost-1", "image": "shapes/lost.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]})
    data = tmp_path / "bad.json"
    data.write_text(json.dumps(records))
    recipe = write_recipe(tmp_path / "r.yaml", "llava_internlm2_pretrain", tiny_llm, tiny_clip, llava_data, data, tmp_path / "wd", steps=1)
    raised = run_cli("run", "--recipe", str(recipe))
    assert raised.returncode != 0 and "lost-1" in raised.stderr and "shapes/lost.png" in raised.stderr and "Traceback" not in raised.stderr, raised.stderr
    skipped = run_cli("run", "--recipe", str(recipe), "data.on_error=skip", "train.max_steps=1", check=True)
    assert "1 bad records skipped" in skipped.stdout and "lost-1" in skipped.stdout


# --------------------------------------------------------------------------- batches


def test_image_tokens_expand_to_patch_slots_with_ignored_labels_and_restarted_positions() -> None:
    from ftcore_llava.model import expand_image_tokens

    img = 99
    # two packed samples: [5, img, 6, 7] and [8, img, 9], then padding [0, 0]
    ids = np.array([5, img, 6, 7, 8, img, 9, 0, 0])
    labels = np.array([-100, -100, 6, 7, -100, -100, 9, -100, -100])
    pos = np.array([0, 1, 2, 3, 0, 1, 2, 0, 1])
    new_ids, new_labels, new_pos = expand_image_tokens(ids, labels, pos, img, 3)
    assert new_ids.tolist() == [5, img, img, img, 6, 7, 8, img, img, img, 9, 0, 0]
    assert new_labels.tolist() == [-100, -100, -100, -100, 6, 7, -100, -100, -100, -100, 9, -100, -100]
    assert new_pos.tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 0, 1]


# --------------------------------------------------------------------------- end to end


def write_recipe(path: Path, extends: str, llm: Path, clip: Path, root: Path, data: Path, work_dir: Path, steps: int, **sections) -> Path:
    recipe = {
        "extends": extends,
        "work_dir": str(work_dir),
        "model": {"llm_builder": "hf", "path": str(llm), "visual_encoder": str(clip), "image_folder": str(root / "images"), "gradient_checkpointing": False},
        "data": {"path": str(data), "max_length": 96},
        "train": {"max_steps": steps, "micro_batch": 4, "grad_accum": 1, "save_every": 0, "seed": 0, "warmup_ratio": 0.0},
        "hooks": ["dataset_info", "metrics_log"],
    }
    for section, values in sections.items():
        recipe.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(recipe))
    return path


def losses(work_dir: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (work_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]


@pytest.mark.slow
def test_pretrain_then_finetune_through_the_cli_then_chat_and_export(tmp_path, tiny_llm, tiny_clip, llava_data) -> None:
    pytest.importorskip("bitsandbytes")
    import torch
    from safetensors.torch import load_file

    # stage 1: only the projector trains on captions (4-bit LLM and CLIP frozen)
    pre = tmp_path / "pretrain"
    recipe1 = write_recipe(tmp_path / "pretrain.yaml", "llava_internlm2_pretrain", tiny_llm, tiny_clip, llava_data, llava_data / "pretrain.json", pre, steps=4)
    out1 = run_cli("run", "--recipe", str(recipe1), check=True)
    assert "nf4" in out1.stdout
    ckpt1 = pre / "checkpoint-4"
    assert sorted(p.name for p in ckpt1.iterdir() if p.is_dir()) == ["projector"]
    assert {"config.json", "model.safetensors"} <= {p.name for p in (ckpt1 / "projector").iterdir()}
    projector1 = load_file(str(ckpt1 / "projector" / "model.safetensors"))
    assert set(projector1) == {"model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias"}

    # stage 2: from the pretrained projector, QLoRA on the LLM and LoRA on the vision tower
    fin = tmp_path / "finetune"
    recipe2 = write_recipe(tmp_path / "finetune.yaml", "llava_internlm2_qlora", tiny_llm, tiny_clip, llava_data, llava_data / "finetune.jsonl", fin, steps=24,
                           model={"projector": str(pre)}, train={"lr": 2.0e-3, "save_every": 12})
    out2 = run_cli("run", "--recipe", str(recipe2), check=True)
    assert "nf4" in out2.stdout
    ckpt = fin / "checkpoint-24"
    assert {"llm_adapter", "visual_encoder_adapter", "projector"} <= {p.name for p in ckpt.iterdir() if p.is_dir()}
    llm_cfg = json.loads((ckpt / "llm_adapter" / "adapter_config.json").read_text())
    vis_cfg = json.loads((ckpt / "visual_encoder_adapter" / "adapter_config.json").read_text())
    assert (llm_cfg["r"], llm_cfg["lora_alpha"], vis_cfg["r"], vis_cfg["lora_alpha"]) == (512, 256, 64, 16)
    assert "lm_head" not in llm_cfg["target_modules"]
    assert any(v.abs().sum() > 0 for k, v in load_file(str(ckpt / "visual_encoder_adapter" / "adapter_model.safetensors")).items() if "lora_B" in k)
    loss = losses(fin)
    assert loss[-1] < loss[0] / 2, loss

    # resumable like any other run: a second process continues from the half-way checkpoint
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(fin / "checkpoint-12", resumed / "checkpoint-12")
    (resumed / "metrics.jsonl").write_text("".join(l + "\n" for l in (fin / "metrics.jsonl").read_text().splitlines()[:12]))
    recipe3 = write_recipe(tmp_path / "resume.yaml", "llava_internlm2_qlora", tiny_llm, tiny_clip, llava_data, llava_data / "finetune.jsonl", resumed, steps=24,
                           model={"projector": str(pre)}, train={"lr": 2.0e-3, "save_every": 12})
    out3 = run_cli("run", "--recipe", str(recipe3), "--resume", check=True)
    assert "at step 12/24" in out3.stdout
    assert losses(resumed)[12:] == pytest.approx(loss[12:], rel=1e-4)

    # chat: the model describes a training image
    from ftcore_llava.chat import answer_with_image, load_llava

    from ftcore.api import installed_parts

    parts = installed_parts()  # library code takes the registered parts from its caller
    for name, (_, _, caption) in SHAPES.items():
        answer = answer_with_image(tiny_llm, ckpt, tiny_clip, llava_data / "images" / "shapes" / name, PROMPT, parts=parts, max_new_tokens=16)
        assert answer == caption, (name, answer)
    # the same through the CLI a user types
    image = llava_data / "images" / "shapes" / next(iter(SHAPES))
    cli = run_cli("chat", str(tiny_llm), "--llava", str(ckpt), "--visual-encoder", str(tiny_clip), "--image", str(image),
                  "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "16", check=True)
    assert cli.stdout.strip().splitlines()[-1] == SHAPES[next(iter(SHAPES))][2]
    # ftcore serve --llava: OpenAI image_url parts (base64 data URLs), streamed and not
    import base64

    from test_serve import start_server

    server = start_server(str(tiny_llm), "--llava", str(ckpt), "--visual-encoder", str(tiny_clip), "--max-new-tokens", "16")
    try:
        for name, (_, _, caption) in list(SHAPES.items())[:2]:
            url = "data:image/png;base64," + base64.b64encode((llava_data / "images" / "shapes" / name).read_bytes()).decode()
            message = {"role": "user", "content": [{"type": "text", "text": PROMPT}, {"type": "image_url", "image_url": {"url": url}}]}
            for stream in (False, True):
                body = json.dumps({"messages": [message], "temperature": 0, "stream": stream}).encode()
                if stream:
                    import urllib.request

                    req = urllib.request.Request(server.url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
                    with urllib.request.urlopen(req, timeout=60) as resp:
                        events = [json.loads(l[6:]) for l in resp.read().decode().splitlines() if l.startswith("data: {")]
                    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
                else:
                    status, reply = server.request("/v1/chat/completions", body, key=None)
                    assert status == 200, reply
                    text = reply["choices"][0]["message"]["content"]
                assert text.strip() == caption, (name, stream, text)
        status, reply = server.request("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}]}).encode(), key=None)
        assert status == 400 and "base64" in reply["error"]["message"]
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=30)
    chat = load_llava(tiny_llm, fin, tiny_clip, parts=parts)  # the work dir: its latest checkpoint
    pieces = list(chat.stream(llava_data / "images" / "shapes" / "blue_square.png", PROMPT, max_new_tokens=16))
    assert "".join(pieces).strip() == "blue square" and len(pieces) > 1

    # export: transformers' LlavaForConditionalGeneration gives the same logits
    from ftcore_llava.export import to_hf_llava
    from transformers import LlavaForConditionalGeneration

    out = to_hf_llava(tiny_llm, ckpt, tiny_clip, tmp_path / "hf-llava", parts=parts)
    hf = LlavaForConditionalGeneration.from_pretrained(str(out)).eval()
    ids, pixels = chat._inputs(llava_data / "images" / "shapes" / "red_circle.png", PROMPT, [])
    with torch.no_grad():
        ours = chat.model(input_ids=ids, pixel_values=pixels).logits
        theirs = hf(input_ids=ids, pixel_values=pixels).logits
    vocab = ours.shape[-1]
    assert theirs.shape[-1] >= vocab
    torch.testing.assert_close(theirs[..., :vocab], ours, rtol=1e-4, atol=1e-4)
