"""Exporting a trained LLaVA run to transformers' ``LlavaForConditionalGeneration`` layout
(``ftcore llava export``, :func:`to_hf_llava`): the model, and an ``AutoProcessor`` whose chat
template, BOS, stop words and image preprocessing are the run's, so plain transformers answers
exactly as ``ftcore chat --llava`` does.

The LLM must load as a standard ``XForCausalLM`` (``.model`` + ``.lm_head``), as InternLM2 does
through the ``internlm2`` builder (it becomes Llama). Adapters are merged; the vocabulary grows
by the ``<image>`` token (its embedding row is a placeholder, replaced by image features).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from ftcore.api import DTYPES, FtcoreError

from .data import IMAGE_TOKEN


def chat_template(template: Any, system: str | None) -> str:
    """The Jinja chat template of ``template`` for a processor: a message's ``content`` may be a list of
    ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts, rendered as ftcore does (one
    ``<image>`` line per image, then the text); ``system`` (the run's ``data.system``) is the default
    system message."""
    from ftcore.api import template_to_jinja

    if getattr(template, "use_tokenizer_template", False):
        raise FtcoreError("the run used the hf template (the tokenizer's own chat_template), which an export cannot rewrite for images", hint="train with a named template (e.g. data.template: internlm2_chat)")
    lines = [
        "{%- set ns = namespace(messages=[]) -%}",
        "{%- for m in messages -%}",
        "{%- if m['content'] is string -%}{%- set text = m['content'] -%}",
        "{%- else -%}{%- set parts = namespace(images='', text='') -%}",
        "{%- for part in m['content'] -%}",
        f"{{%- if part['type'] == 'image' -%}}{{%- set parts.images = parts.images + {json.dumps(IMAGE_TOKEN + chr(10))} -%}}",
        "{%- elif part['type'] == 'text' -%}{%- set parts.text = parts.text + part['text'] -%}{%- endif -%}",
        "{%- endfor -%}{%- set text = parts.images + parts.text -%}{%- endif -%}",
        "{%- set ns.messages = ns.messages + [{'role': m['role'], 'content': text}] -%}",
        "{%- endfor -%}",
    ]
    if system:
        lines.append(f"{{%- if not ns.messages or ns.messages[0]['role'] != 'system' -%}}{{%- set ns.messages = [{{'role': 'system', 'content': {json.dumps(system)}}}] + ns.messages -%}}{{%- endif -%}}")
    lines.append("{%- set messages = ns.messages -%}")
    return "".join(lines) + template_to_jinja(template)


def _image_processor(processor: Any, pad_to_square: bool) -> Any:
    """LLaVA's image processor with the CLIP processor's settings, padding to square as training did."""
    from transformers.models.llava import image_processing_pil_llava

    settings = {k: v for k, v in processor.to_dict().items() if not k.startswith("_") and k not in ("image_processor_type", "processor_class", "backend")}
    if type(processor).__name__.endswith("Pil"):
        return image_processing_pil_llava.LlavaImageProcessorPil(**{**settings, "do_pad": pad_to_square})
    from transformers import LlavaImageProcessor

    return LlavaImageProcessor(**{**settings, "do_pad": pad_to_square})


def to_hf_llava(llm_path: str | Path, llava_dir: str | Path, visual_encoder_path: str | Path, out_dir: str | Path, *,
                parts: Any, llm_builder: str | None = None, dtype: str = "fp32", max_shard_size: str = "2GB",
                force: bool = False, log: Callable[[str], None] = lambda line: None) -> Path:
    """Write ``out_dir`` loadable with ``LlavaForConditionalGeneration.from_pretrained`` and
    ``AutoProcessor.from_pretrained``; return it.

    ``parts``: the registered parts (the LLM's builder, the chat template); ``dtype`` is ``fp32``,
    ``bf16`` or ``fp16``. The folder is written next to ``out_dir`` and renamed into place, so a
    failure leaves nothing there; an existing non-empty ``out_dir`` is replaced only with ``force``.
    """
    out = Path(out_dir).expanduser()
    if dtype not in DTYPES:
        raise FtcoreError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FtcoreError(f"{out} already exists", hint="pass --force to replace it, or give another OUT")

    import torch
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from ftcore.api import stop_token_ids

    from .chat import load_llava, resolve_llava_dir

    folder = resolve_llava_dir(llava_dir)
    log(f"loading {llm_path} with the run {folder} (adapters merged)")
    chat = load_llava(llm_path, folder, visual_encoder_path, parts=parts, llm_builder=llm_builder, device="cpu", dtype="fp32")
    model, tokenizer = chat.model, chat.tokenizer
    llm = model.llm
    if not (hasattr(llm, "model") and hasattr(llm, "lm_head")) or not hasattr(llm.config, "to_dict"):
        raise FtcoreError(f"the LLM ({type(llm).__name__}) is not a standard causal LM with .model and .lm_head, so it has no LlavaForConditionalGeneration layout")
    if model.projector.config["depth"] != 2:
        raise FtcoreError(f"LlavaForConditionalGeneration has a 2-layer projector; this one has depth {model.projector.config['depth']}", hint="export runs trained with model.projector_depth: 2")
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    vocab = max(len(tokenizer), llm.config.vocab_size)
    if llm.get_input_embeddings().weight.shape[0] < vocab:
        llm.resize_token_embeddings(vocab, mean_resizing=False)
    text_config = llm.config
    text_config.vocab_size = vocab
    vcfg = model.visual_encoder.config
    config = LlavaConfig(
        vision_config=vcfg.to_dict(), text_config=text_config.to_dict(), image_token_index=image_token_id,
        image_seq_length=model.num_image_tokens, projector_hidden_act="gelu", vision_feature_select_strategy="default",
        vision_feature_layer=model.select_layer, multimodal_projector_bias=True, tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )
    hf = LlavaForConditionalGeneration(config)
    hf.model.language_model.load_state_dict(llm.model.state_dict())
    hf.lm_head.load_state_dict(llm.lm_head.state_dict())
    hf.model.vision_tower.load_state_dict(model.visual_encoder.state_dict())
    proj = model.projector.model
    hf.model.multi_modal_projector.linear_1.load_state_dict(proj[0].state_dict())
    hf.model.multi_modal_projector.linear_2.load_state_dict(proj[2].state_dict())
    hf.to(getattr(torch, DTYPES[dtype]))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos = stop_token_ids(tokenizer, chat.template)
    hf.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos[0] if len(eos) == 1 else eos, pad_token_id=tokenizer.pad_token_id)
    jinja = chat_template(chat.template, chat.system)
    tokenizer.chat_template = jinja
    processor = LlavaProcessor(image_processor=_image_processor(chat.processor, chat.pad_to_square), tokenizer=tokenizer, patch_size=vcfg.patch_size,
                               vision_feature_select_strategy="default", image_token=IMAGE_TOKEN, num_additional_image_tokens=1, chat_template=jinja)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-llava-export-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        log(f"saving {dtype} weights to {out}")
        hf.save_pretrained(str(tmp), max_shard_size=max_shard_size, safe_serialization=True)
        processor.save_pretrained(str(tmp))  # the tokenizer (with its chat_template), the image processor, processor_config.json
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
