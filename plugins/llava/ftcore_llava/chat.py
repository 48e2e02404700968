"""Chatting with a trained LLaVA model about an image: one answer, a stream of text, or an interactive loop.

``llava_dir`` is what a llava run wrote: a ``checkpoint-N`` folder (``llm_adapter/``,
``visual_encoder_adapter/``, ``projector/``, the tokenizer and ``recipe.yaml``) or the run's
work dir (its latest checkpoint is used). The LLM builder, chat template, system prompt and
image settings come from the checkpoint's ``recipe.yaml`` unless given.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ftcore.api import FtcoreError

from .data import IMAGE_TOKEN, load_image_processor, pixel_values

SAMPLING = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty")


def resolve_llava_dir(llava_dir: str | Path) -> Path:
    """A checkpoint folder holding ``projector/``: ``llava_dir`` itself or its latest checkpoint."""
    from ftcore.api import latest_checkpoint

    p = Path(llava_dir).expanduser()
    if (p / "projector").is_dir():
        return p
    latest = latest_checkpoint(p) if p.is_dir() else None
    if latest is not None and (latest / "projector").is_dir():
        return latest
    raise FtcoreError(f"{str(llava_dir)!r} is not a llava checkpoint (no projector/ folder)", hint="pass a checkpoint-N folder of a llava run, or the run's work dir")


def _recipe(folder: Path) -> dict[str, Any]:
    import yaml

    path = folder / "recipe.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def _llm_builder_name(llm_path: str | Path) -> str:
    import json

    cfg = json.loads((Path(llm_path) / "config.json").read_text()) if (Path(llm_path) / "config.json").is_file() else {}
    return "internlm2" if cfg.get("model_type") == "internlm2" else "hf"


@dataclass
class LlavaChat:
    """A loaded LLaVA model (adapters merged) with its tokenizer, image processor and template."""

    model: Any
    tokenizer: Any
    processor: Any
    template: Any
    system: str | None = None
    pad_to_square: bool = True
    history: list[dict[str, Any]] = field(default_factory=list)
    image: Path | None = None

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def _inputs(self, image_path: str | Path | None, prompt: str, history: list[dict[str, Any]]) -> tuple[Any, Any]:
        import numpy as np
        import torch

        from ftcore.api import prompt_ids

        from .model import expand_image_tokens

        first = not history
        content = f"{IMAGE_TOKEN}\n{prompt}" if first and image_path is not None else prompt
        messages = [*history, {"role": "user", "content": content}]
        ids = prompt_ids(self.tokenizer, self.template, messages, self.system)
        pixels = None
        if image_path is not None:
            arr = np.asarray(ids)
            ids = expand_image_tokens(arr, arr.copy(), np.arange(len(arr)), self.model.image_token_id, self.model.num_image_tokens)[0].tolist()
            pixels = pixel_values([Path(image_path)], self.processor, self.pad_to_square).to(self.device)
        return torch.tensor([ids], device=self.device), pixels

    def _generate_kwargs(self, sampling: dict[str, Any]) -> dict[str, Any]:
        from ftcore.api import stop_token_ids

        unknown = set(sampling) - set(SAMPLING)
        if unknown:
            raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))} (known: {', '.join(SAMPLING)})")
        temperature = float(sampling.get("temperature", 0.0))
        kwargs: dict[str, Any] = {"max_new_tokens": int(sampling.get("max_new_tokens", 128)), "do_sample": temperature > 0,
                                  "repetition_penalty": float(sampling.get("repetition_penalty", 1.0)), "use_cache": True}
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=float(sampling.get("top_p", 1.0)), top_k=int(sampling.get("top_k", 0)))
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        eos = stop_token_ids(self.tokenizer, self.template)
        kwargs["eos_token_id"] = eos or None
        kwargs["pad_token_id"] = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
        return kwargs

    def _clean(self, text: str) -> str:
        for word in getattr(self.template, "stop_words", ()) or ():
            if word and word in text:
                text = text[: text.index(word)]
        return text.strip()

    def stream(self, image_path: str | Path | None, prompt: str, history: list[dict[str, Any]] | None = None, **sampling: Any) -> Iterator[str]:
        """The answer as it is generated, piece by piece (stop words cut off at the end)."""
        import torch
        from transformers import TextIteratorStreamer

        ids, pixels = self._inputs(image_path, prompt, history or [])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=False, skip_special_tokens=True)
        kwargs = self._generate_kwargs(sampling)
        errors: list[BaseException] = []

        def work() -> None:
            try:
                with torch.no_grad():
                    self.model.generate(ids, pixel_values=pixels, streamer=streamer, **kwargs)
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        text = ""
        words = [w for w in (getattr(self.template, "stop_words", ()) or ()) if w]
        for piece in streamer:  # llm.generate from embeddings streams only the new tokens
            text += piece
            if any(w in text for w in words):
                yield piece[: max(0, len(piece) - (len(text) - min(text.index(w) for w in words if w in text)))]
                break
            yield piece
        thread.join()
        if errors:
            raise errors[0]

    def answer(self, image_path: str | Path | None, prompt: str, history: list[dict[str, Any]] | None = None, **sampling: Any) -> str:
        """The whole answer (greedy when ``temperature`` is 0)."""
        ids, pixels = self._inputs(image_path, prompt, history or [])
        out = self.model.generate(ids, pixel_values=pixels, **self._generate_kwargs(sampling))
        return self._clean(self.tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True))

    def ask(self, prompt: str, image_path: str | Path | None = None, stream: Callable[[str], None] | None = None, **sampling: Any) -> str:
        """A multi-turn conversation about one image: the first call (or a new ``image_path``) starts it."""
        if image_path is not None and Path(image_path) != self.image:
            self.image, self.history = Path(image_path), []
        if stream is None:
            text = self.answer(self.image, prompt, self.history, **sampling)
        else:
            pieces = []
            for piece in self.stream(self.image, prompt, self.history, **sampling):
                stream(piece)
                pieces.append(piece)
            text = self._clean("".join(pieces))
        content = f"{IMAGE_TOKEN}\n{prompt}" if not self.history and self.image is not None else prompt
        self.history += [{"role": "user", "content": content}, {"role": "assistant", "content": text}]
        return text


def load_llava(llm_path: str | Path, llava_dir: str | Path, visual_encoder_path: str | Path, *, llm_builder: str | None = None,
               template: str | None = None, system: str | None = None, device: str = "auto", dtype: str | None = None) -> LlavaChat:
    """The LLM from ``llm_path`` with the run's LLM adapter merged, the vision tower with its adapter merged, the projector."""
    import torch
    from peft import PeftModel
    from transformers import CLIPVisionModel

    from ftcore.app import App

    from .builder import LLM_ADAPTER, LLM_FULL, PROJECTOR, VISION_ADAPTER, VISION_FULL
    from .model import LlavaModel, Projector

    folder = resolve_llava_dir(llava_dir)
    recipe = _recipe(folder)
    model_cfg, data_cfg = recipe.get("model", {}), recipe.get("data", {})
    parts = App().parts
    builder = parts.models.get(llm_builder or model_cfg.get("llm_builder") or _llm_builder_name(llm_path))
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    torch_dtype = getattr(torch, {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype or "", "")) if dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)

    if (folder / "tokenizer_config.json").is_file():  # the run saved its tokenizer (with <image>) in each checkpoint
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    else:
        tokenizer = builder.load_tokenizer(str(llm_path))
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        from tokenizers import AddedToken

        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    llm = builder.load_model(str(llm_path), dtype=torch_dtype)
    if (folder / LLM_ADAPTER).is_dir():
        llm = PeftModel.from_pretrained(llm, str(folder / LLM_ADAPTER)).merge_and_unload()
    elif (folder / LLM_FULL).is_dir():
        llm = builder.load_model(str(folder / LLM_FULL), dtype=torch_dtype)
    vision_src = folder / VISION_FULL if (folder / VISION_FULL).is_dir() else Path(visual_encoder_path)
    vision = CLIPVisionModel.from_pretrained(str(vision_src), dtype=torch_dtype)
    if (folder / VISION_ADAPTER).is_dir():
        vision = PeftModel.from_pretrained(vision, str(folder / VISION_ADAPTER)).merge_and_unload()
    projector = Projector(vision.config.hidden_size, llm.config.hidden_size, depth=int(model_cfg.get("projector_depth", 2)))
    projector.load_weights(folder / PROJECTOR)
    model = LlavaModel(llm, vision, projector.to(torch_dtype), tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), select_layer=int(model_cfg.get("visual_select_layer", -2)))
    model.to(dev).eval()
    template_name = template or data_cfg.get("template")
    if not template_name:
        raise FtcoreError(f"{folder} does not say which chat template it was trained with (no recipe.yaml)", hint="pass template=NAME")
    tmpl = parts.templates.get(template_name)
    return LlavaChat(model, tokenizer, load_image_processor(visual_encoder_path), tmpl, system if system is not None else data_cfg.get("system"),
                     bool(model_cfg.get("pad_image_to_square", True)))


def answer_with_image(llm_path: str | Path, llava_dir: str | Path, visual_encoder_path: str | Path, image_path: str | Path, prompt: str, **sampling: Any) -> str:
    """The trained model's answer to ``prompt`` about the image at ``image_path``.

    ``sampling``: ``max_new_tokens`` (128), ``temperature`` (0: greedy), ``top_p``, ``top_k``,
    ``repetition_penalty``; loading options ``llm_builder``, ``template``, ``system``,
    ``device`` and ``dtype`` are accepted too.
    """
    load_keys = ("llm_builder", "template", "system", "device", "dtype")
    chat = load_llava(llm_path, llava_dir, visual_encoder_path, **{k: sampling.pop(k) for k in load_keys if k in sampling})
    return chat.answer(image_path, prompt, **sampling)


def stream_with_image(llm_path: str | Path, llava_dir: str | Path, visual_encoder_path: str | Path, image_path: str | Path, prompt: str, **sampling: Any) -> Iterator[str]:
    """Like :func:`answer_with_image`, yielding the answer piece by piece as it is generated."""
    load_keys = ("llm_builder", "template", "system", "device", "dtype")
    chat = load_llava(llm_path, llava_dir, visual_encoder_path, **{k: sampling.pop(k) for k in load_keys if k in sampling})
    yield from chat.stream(image_path, prompt, **sampling)


def interactive(chat: LlavaChat, image_path: str | Path, *, read: Callable[[str], str] = input, write: Callable[[str], None] | None = None, **sampling: Any) -> None:
    """A terminal conversation about one image: answers stream as they are generated.

    Commands: ``/image PATH`` switches to another image (a new conversation), ``/reset``
    forgets the conversation, ``/exit`` (or end of input) stops.
    """
    import sys

    out = write or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    image: Path = Path(image_path)
    chat.image, chat.history = image, []
    while True:
        try:
            line = read(">>> ").strip()
        except (EOFError, KeyboardInterrupt):
            out("\n")
            return
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            chat.history = []
            continue
        if line.startswith("/image "):
            image = Path(line.split(None, 1)[1])
            chat.image, chat.history = image, []
            continue
        chat.ask(line, image, stream=out, **sampling)
        out("\n")
