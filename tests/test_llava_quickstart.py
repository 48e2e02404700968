"""LLaVA end to end for a user (issue #21 item 5), through the real CLI on the tiny models the
``llava_quickstart`` recipe makes: it trains and evaluate_chat answers about images; the closing hint's
commands run; ``ftcore llava export`` gives a checkpoint that plain transformers answers with exactly as
``ftcore chat --llava`` does (and ``ftcore merge`` on a llava checkpoint names that command); ``chat --llava``
takes the vision tower from the checkpoint and answers without an image; stage 1 is logged as what it trains;
``ftcore data repeat``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from helpers import run_cli

pytest.importorskip("PIL")

PROMPT = "What is in the image?"
CAPTIONS = {"red_circle.png": "a red circle", "blue_square.png": "a blue square", "green_triangle.png": "a green triangle", "yellow_bar.png": "a yellow bar"}


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """One `ftcore run --recipe llava_quickstart` in a fresh folder: (folder, work dir, the run's output)."""
    root = tmp_path_factory.mktemp("llava-quickstart")
    proc = run_cli("run", "--recipe", "llava_quickstart", cwd=root, check=True)
    return root, root / "work_dirs" / "llava_quickstart", proc.stdout


def hinted(stdout: str, command: str) -> list[str]:
    """The arguments of the closing hint's ``ftcore COMMAND ...`` line."""
    line = next(l.strip() for l in stdout.splitlines() if l.strip().startswith(f"ftcore {command} "))
    return shlex.split(line)[1:]


def test_the_quickstart_trains_and_evaluate_chat_answers_about_its_images(quickstart) -> None:
    root, work_dir, out = quickstart
    losses = [json.loads(l)["loss"] for l in (work_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    assert len(losses) == 40 and losses[-1] < losses[0] / 4, losses
    assert "trainable (projector, lora on the LLM, LoRA r 16 on the vision tower)" in out
    for name in ("red_circle.png", "yellow_bar.png"):  # the recipe's two image prompts, after training
        assert f"eval (after training) {PROMPT!r} (image ./work_dirs/llava_quickstart/images/{name}) -> {CAPTIONS[name]!r}" in out, out
    after = json.loads((work_dir / "eval" / "step-40.json").read_text())
    assert [(a["image"].split("/")[-1], a["answer"]) for a in after["answers"]] == [("red_circle.png", "a red circle"), ("yellow_bar.png", "a yellow bar")]
    before = json.loads((work_dir / "eval" / "before.json").read_text())
    assert all(a["answer"] != CAPTIONS[a["image"].split("/")[-1]] for a in before["answers"])  # the random model did not know


def test_the_closing_hint_chats_about_an_image_with_the_trained_checkpoint(quickstart) -> None:
    root, work_dir, out = quickstart
    assert "checkpoint: work_dirs/llava_quickstart/checkpoint-40" in out and "--adapter" not in out
    args = hinted(out, "chat")
    assert args[args.index("--llava") + 1] == "work_dirs/llava_quickstart/checkpoint-40"
    assert "--visual-encoder" not in args  # the vision tower the checkpoint's recipe.yaml records
    image = Path(args[args.index("--image") + 1])
    assert (root / image).is_file()
    answer = run_cli(*args, "--prompt", PROMPT, "--temperature", "0", cwd=root, check=True).stdout.strip().splitlines()[-1]
    assert answer == CAPTIONS[image.name]


def test_the_export_answers_through_plain_transformers_with_ftcore_chats_greedy_tokens(quickstart) -> None:
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from ftcore.api import installed_parts, stop_token_ids
    from ftcore_llava.chat import load_llava

    root, work_dir, out = quickstart
    export = hinted(out, "llava")
    assert export[:2] == ["llava", "export"]
    run_cli(*export, cwd=root, check=True)
    hf_dir = root / export[3]
    assert run_cli(*export, cwd=root).returncode != 0  # OUT exists: refused without --force
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]

    processor = AutoProcessor.from_pretrained(str(hf_dir))
    model = LlavaForConditionalGeneration.from_pretrained(str(hf_dir)).eval()
    chat = load_llava(work_dir / "tiny-llm", work_dir / "checkpoint-40", work_dir / "tiny-clip", parts=installed_parts(), device="cpu")
    stops = stop_token_ids(chat.tokenizer, chat.template)
    for name in CAPTIONS:
        image = work_dir / "images" / name
        conversation = [{"role": "user", "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": PROMPT}]}]
        inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
        ids, extra = chat.prompt([{"role": "user", "content": PROMPT, "images": [image.read_bytes()]}])
        assert inputs["input_ids"][0].tolist() == ids  # BOS once, the template, one <image> slot per patch
        assert ids[0] == chat.tokenizer.bos_token_id and ids[1] != chat.tokenizer.bos_token_id
        torch.testing.assert_close(inputs["pixel_values"], extra["pixel_values"], rtol=0, atol=0)  # padded to square, as in training
        with torch.no_grad():
            theirs = model.generate(**inputs, max_new_tokens=16, do_sample=False)[0, len(ids):].tolist()
            ours = chat.model.generate(torch.tensor([ids]), pixel_values=extra["pixel_values"], max_new_tokens=16, do_sample=False, eos_token_id=stops)[0, len(ids):].tolist()
        assert theirs == ours and theirs[-1] in stops, (name, theirs, ours)  # the exported generation_config stops at <|im_end|>
        assert processor.decode(theirs, skip_special_tokens=True) == CAPTIONS[name]
    cli = run_cli("chat", str(work_dir / "tiny-llm"), "--llava", str(work_dir / "checkpoint-40"), "--visual-encoder", str(work_dir / "tiny-clip"),
                  "--image", str(image), "--prompt", PROMPT, "--temperature", "0", check=True)
    assert cli.stdout.strip().splitlines()[-1] == processor.decode(theirs, skip_special_tokens=True)  # the last picture's answer, as a user sees it


def test_merge_refuses_a_llava_checkpoint_naming_the_export_command_that_writes_it(quickstart, tmp_path) -> None:
    root, work_dir, _ = quickstart
    llm, checkpoint = "work_dirs/llava_quickstart/tiny-llm", "work_dirs/llava_quickstart/checkpoint-40"
    out = tmp_path / "merged out"

    def refused(base: str, folder: str) -> list[str]:
        proc = run_cli("merge", base, folder, str(out), cwd=root)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and "adapter_config.json" not in proc.stderr, proc.stderr
        assert f"{folder!r} is a llava checkpoint (its recipe.yaml says model.builder: llava), not one LoRA adapter: ftcore merge cannot merge it" in proc.stderr, proc.stderr
        assert "loading" not in proc.stdout and not out.exists()  # refused before anything loads
        return shlex.split(proc.stderr.split("write it as a standalone model with: ", 1)[1].strip())

    assert refused(llm, "work_dirs/llava_quickstart") == ["ftcore", "llava", "export", "work_dirs/llava_quickstart", str(out)]  # the work dir too
    assert refused(str(work_dir / "tiny-clip"), checkpoint)[-2:] == ["--llm", str(work_dir / "tiny-clip")]  # another BASE than the recorded LLM
    export = refused(llm, checkpoint)
    assert export == ["ftcore", "llava", "export", checkpoint, str(out)]
    run_cli(*export[1:], cwd=root, check=True)  # the named command does it
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlavaForConditionalGeneration"]


def test_chat_llava_takes_the_vision_tower_from_the_checkpoint_and_answers_without_an_image(quickstart, tmp_path) -> None:
    import shutil

    root, work_dir, _ = quickstart
    llm = str(work_dir / "tiny-llm")
    proc = run_cli("chat", llm, "--llava", str(work_dir / "checkpoint-40"), "--prompt", "Who are you?", check=True)  # no --visual-encoder, no --image
    assert proc.stdout.strip().splitlines()[-1] == "I am an assistant that describes pictures."  # the text-only record
    assert "note: no --image: the answer comes from the text alone" in proc.stderr, proc.stderr

    copy = tmp_path / "checkpoint-40"
    shutil.copytree(work_dir / "checkpoint-40", copy, ignore=shutil.ignore_patterns("optimizer.pt"))
    recipe = yaml.safe_load((copy / "recipe.yaml").read_text())
    for recorded, expected in ((None, f"{copy} does not say which vision tower it was trained with (no model.visual_encoder in its recipe.yaml)"),
                               (str(tmp_path / "moved-clip"), f"the vision tower folder {str(tmp_path / 'moved-clip')!r} (model.visual_encoder in {copy / 'recipe.yaml'}) does not exist")):
        recipe["model"]["visual_encoder"] = recorded
        (copy / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        for command in (("chat", llm, "--llava", str(copy), "--prompt", PROMPT), ("serve", llm, "--llava", str(copy), "--port", "0")):
            proc = run_cli(*command)
            assert proc.returncode == 2 and expected in proc.stderr and "--visual-encoder PATH" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc = run_cli("chat", llm, "--llava", str(copy), "--visual-encoder", str(work_dir / "images"), "--prompt", PROMPT)
    assert proc.returncode == 2 and f"the vision tower folder {str(work_dir / 'images')!r} has no config.json" in proc.stderr, proc.stderr
    image = work_dir / "images" / "blue_square.png"
    proc = run_cli("chat", llm, "--llava", str(copy), "--visual-encoder", str(work_dir / "tiny-clip"), "--image", str(image), "--prompt", PROMPT, check=True)
    assert proc.stdout.strip().splitlines()[-1] == CAPTIONS[image.name] and "note: no --image" not in proc.stderr


def test_stage_one_is_logged_as_the_projector_training_not_lora(quickstart, tmp_path) -> None:
    root, work_dir, _ = quickstart
    model = {"path": work_dir / "tiny-llm", "visual_encoder": work_dir / "tiny-clip", "image_folder": work_dir / "images"}
    proc = run_cli("run", "--recipe", "llava_quickstart", "--work-dir", str(tmp_path / "stage1"), "model.llm_lora=false", "model.visual_encoder_lora=null",
                   *(f"model.{k}={v}" for k, v in model.items()), f"data.path={work_dir / 'data' / 'shapes.json'}", "train.max_steps=2", "hooks=[dataset_info]",
                   cwd=root, check=True)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("model: "))
    assert "trainable (projector; LLM and vision tower frozen)" in line and "lora" not in line.lower(), line
    assert sorted(p.name for p in (tmp_path / "stage1" / "checkpoint-2").iterdir() if p.is_dir()) == ["projector"]


def test_evaluate_chat_image_prompts_are_checked(quickstart, tmp_path) -> None:
    root, work_dir, _ = quickstart
    base = {"extends": "quickstart", "work_dir": str(tmp_path / "wd"), "train": {"max_steps": 1}}
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({**base, "hooks": ["quickstart_assets", {"name": "evaluate_chat", "prompts": ["Who are you?", {"text": PROMPT, "image": "nope.png"}]}]}))
    proc = run_cli("run", "--recipe", str(missing), cwd=root)
    assert proc.returncode != 0 and "evaluate_chat prompts[1].image" in proc.stderr and "'nope.png' does not exist" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text(yaml.safe_dump({**base, "hooks": [{"name": "evaluate_chat", "prompts": [{"text": PROMPT, "imag": "x.png"}]}]}))
    proc = run_cli("run", "--recipe", str(bad_key), "--dry-run", cwd=root)
    assert proc.returncode != 0 and "hooks[0].prompts[0].imag" in proc.stderr and "did you mean 'image'" in proc.stderr, proc.stderr
    text_model = tmp_path / "text_model.yaml"
    image = work_dir / "images" / "red_circle.png"
    text_model.write_text(yaml.safe_dump({**base, "hooks": ["quickstart_assets", {"name": "evaluate_chat", "prompts": [{"text": PROMPT, "image": str(image)}]}]}))
    proc = run_cli("run", "--recipe", str(text_model), cwd=root)
    assert proc.returncode != 0 and "'internlm2' makes a model that takes no images" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_data_repeat_writes_the_records_n_times_in_order(quickstart, tmp_path) -> None:
    root, work_dir, _ = quickstart
    src = work_dir / "data" / "shapes.json"
    records = json.loads(src.read_text())
    out = run_cli("data", "repeat", str(src), str(tmp_path / "shapes_x5.jsonl"), "-n", "5", check=True).stdout
    written = [json.loads(l) for l in (tmp_path / "shapes_x5.jsonl").read_text().splitlines()]
    assert written == records * 5 and f"({len(records) * 5} records)" in out
    again = run_cli("data", "repeat", str(src), str(tmp_path / "shapes_x5.jsonl"), "-n", "2")
    assert again.returncode != 0 and "already exists" in again.stderr and "--force" in again.stderr
    same = run_cli("data", "repeat", str(src), str(src), "-n", "2", "--force")
    assert same.returncode != 0 and "OUT is IN" in same.stderr and json.loads(src.read_text()) == records
    # the repeated file trains as the original does (same image folder)
    check = run_cli("data", "check", "--recipe", "llava_quickstart", f"data.path={tmp_path / 'shapes_x5.jsonl'}", f"model.path={work_dir / 'tiny-llm'}",
                    f"model.visual_encoder={work_dir / 'tiny-clip'}", f"model.image_folder={work_dir / 'images'}", cwd=root)
    assert check.returncode == 0 and str(len(records) * 5) in check.stdout, check.stdout + check.stderr


def test_the_exported_chat_template_renders_image_parts_and_the_runs_system_prompt_as_ftcore_does(tmp_path) -> None:
    from tokenizers import AddedToken

    from ftcore.api import installed_parts, make_tokenizer, prompt_ids
    from ftcore_llava.export import chat_template
    from transformers import AutoTokenizer

    make_tokenizer(tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    template = installed_parts().templates.get("internlm2_chat")
    system = 'You describe "pictures".\n你好'
    jinja = chat_template(template, system)
    parts = [{"role": "user", "content": [{"type": "text", "text": PROMPT}, {"type": "image"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]},
             {"role": "user", "content": "And its colour?"}]
    plain = [{"role": "user", "content": f"<image>\n{PROMPT}"}, {"role": "assistant", "content": "a red circle"}, {"role": "user", "content": "And its colour?"}]
    for conversation, expected in ((parts, prompt_ids(tokenizer, template, plain, system)),
                                   ([{"role": "system", "content": "Be brief."}, *parts], prompt_ids(tokenizer, template, plain, "Be brief."))):
        text = tokenizer.apply_chat_template(conversation, chat_template=jinja, add_generation_prompt=True, tokenize=False)
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == expected, text
    no_system = tokenizer.apply_chat_template(parts, chat_template=chat_template(template, None), add_generation_prompt=True, tokenize=False)
    assert tokenizer(no_system, add_special_tokens=False)["input_ids"] == prompt_ids(tokenizer, template, plain, None) and "system" not in no_system
