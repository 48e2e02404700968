"""Export a trained LLaVA model to transformers' ``LlavaForConditionalGeneration`` layout.

The LLM must load as a standard ``XForCausalLM`` (``.model`` + ``.lm_head``), as InternLM2 does
through the ``internlm2`` builder (it becomes Llama). Adapters are merged; the vocabulary grows
by the ``<image>`` token (its embedding row is a placeholder, replaced by image features).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftcore.api import DTYPES, FtcoreError

from .data import IMAGE_TOKEN


def to_hf_llava(llm_path: str | Path, llava_dir: str | Path, visual_encoder_path: str | Path, out_dir: str | Path, *,
                parts: Any, llm_builder: str | None = None, dtype: str = "fp32", max_shard_size: str = "2GB") -> Path:
    """Write ``out_dir`` loadable with ``LlavaForConditionalGeneration.from_pretrained`` (+ processor files).

    Returns ``out_dir``. ``parts``: the registered parts (the LLM's builder); ``dtype`` is
    ``fp32``, ``bf16`` or ``fp16``.
    """
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from .chat import load_llava

    chat = load_llava(llm_path, llava_dir, visual_encoder_path, parts=parts, llm_builder=llm_builder, device="cpu", dtype="fp32")
    model, tokenizer = chat.model, chat.tokenizer
    llm = model.llm
    if not (hasattr(llm, "model") and hasattr(llm, "lm_head")) or not hasattr(llm.config, "to_dict"):
        raise FtcoreError(f"the LLM ({type(llm).__name__}) is not a standard causal LM with .model and .lm_head, so it has no LlavaForConditionalGeneration layout")
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
    if model.projector.config["depth"] != 2:
        raise FtcoreError("LlavaForConditionalGeneration has a 2-layer projector; this one has depth {}".format(model.projector.config["depth"]))
    hf = LlavaForConditionalGeneration(config)
    hf.model.language_model.load_state_dict(llm.model.state_dict())
    hf.lm_head.load_state_dict(llm.lm_head.state_dict())
    hf.model.vision_tower.load_state_dict(model.visual_encoder.state_dict())
    proj = model.projector.model
    hf.model.multi_modal_projector.linear_1.load_state_dict(proj[0].state_dict())
    hf.model.multi_modal_projector.linear_2.load_state_dict(proj[2].state_dict())
    hf.to(getattr(torch, DTYPES[dtype]))
    out = Path(out_dir)
    hf.save_pretrained(str(out), max_shard_size=max_shard_size, safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    chat.processor.save_pretrained(str(out))
    _write_processor(out, tokenizer, chat.processor, vcfg.patch_size)
    return out


def _write_processor(out: Path, tokenizer: Any, image_processor: Any, patch_size: int) -> None:
    """A ``LlavaProcessor`` config so ``AutoProcessor`` works (best effort: needs a compatible tokenizer)."""
    try:
        from transformers import LlavaProcessor

        LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size, vision_feature_select_strategy="default",
                       image_token=IMAGE_TOKEN, num_additional_image_tokens=1).save_pretrained(str(out))
    except Exception as exc:  # the model and tokenizer are exported either way
        (out / "processor_note.json").write_text(json.dumps({"processor_not_written": str(exc)}))
