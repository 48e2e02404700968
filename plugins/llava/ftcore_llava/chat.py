"""Chatting with a trained LLaVA model about an image: ``ftcore chat MODEL --llava DIR
[--visual-encoder PATH] [--image IMG]`` and ``ftcore serve MODEL --llava DIR [--visual-encoder PATH]``
(the :class:`LlavaBackend` this plugin adds to both commands; the vision tower defaults to the
checkpoint's), and from Python one answer, a stream of text, or an interactive loop.

``llava_dir`` is what a llava run wrote: a ``checkpoint-N`` folder (``llm_adapter/``,
``visual_encoder_adapter/``, ``projector/``, the tokenizer and ``recipe.yaml``) or the run's
work dir (its latest checkpoint is used). The LLM builder, chat template, system prompt and
image settings come from the checkpoint's ``recipe.yaml`` unless given. The registered parts
(builders, templates) come from the caller: ``parts=`` (``ftcore.api.installed_parts()`` in a
script).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from ftcore.api import DTYPES, ChatArgs, ChatBackend, ChatModel, FtcoreError, Generation, Sampling

from .data import IMAGE_TOKEN, load_image_processor, pixel_values

#: what the Python API answers with unless told otherwise (greedy, at most 128 tokens)
DEFAULT_SAMPLING = Sampling(max_new_tokens=128)


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


def read_recipe(folder: Path) -> dict[str, Any]:
    """The checkpoint's (or work dir's) recipe.yaml as a mapping; empty when there is none."""
    import yaml

    path = folder / "recipe.yaml"
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def recorded_folder(folder: Path, key: str, given: str | Path | None, what: str, option: str) -> str:
    """``given``, else the folder the checkpoint's ``recipe.yaml`` records as ``model.KEY`` (the LLM
    is ``path``, the vision tower ``visual_encoder``): a model folder (config.json), or a clear error
    naming ``option``, the flag that gives it."""
    value = given or (read_recipe(folder).get("model") or {}).get(key)
    if not value:
        raise FtcoreError(f"{folder} does not say which {what} it was trained with (no model.{key} in its recipe.yaml)", hint=f"pass {option} PATH")
    path = Path(value).expanduser()
    if not (path / "config.json").is_file():
        source = "" if given else f" (model.{key} in {folder / 'recipe.yaml'})"
        problem = "has no config.json" if path.is_dir() else "does not exist"
        raise FtcoreError(f"the {what} folder {str(value)!r}{source} {problem}", hint=f"pass {option} PATH to where it is now" if not given else f"give {option} a {what} folder (config.json)")
    return str(value)


def _llm_builder_name(llm_path: str | Path) -> str:
    import json

    cfg = json.loads((Path(llm_path) / "config.json").read_text()) if (Path(llm_path) / "config.json").is_file() else {}
    return "internlm2" if cfg.get("model_type") == "internlm2" else "hf"


@dataclass
class LlavaChat(ChatModel):
    """A loaded LLaVA model (adapters merged): a ``ChatModel`` whose conversation may carry one
    image (``messages[i]["images"]``: raw image bytes), so ``ftcore chat`` and ``ftcore serve``
    use it as any other; plus :meth:`answer`, :meth:`stream` and :meth:`ask` for Python."""

    processor: Any = None
    pad_to_square: bool = True
    accepts_images: bool = True
    #: the conversation :meth:`ask` keeps, and the image it is about
    history: list[dict[str, Any]] = field(default_factory=list)
    image: Path | None = None

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def prompt(self, messages: list[dict[str, Any]]) -> tuple[list[int], dict[str, Any]]:
        """The prompt's token ids (the image's ``<image>`` token expanded to one slot per patch)
        and the extra ``generate`` inputs (the image's ``pixel_values``)."""
        import numpy as np

        from ftcore.api import prompt_ids

        from .model import expand_image_tokens

        images = [image for m in messages for image in m.get("images", ())]
        if len(images) > 1:
            raise FtcoreError("one image per conversation is supported")
        plain = [{"role": m["role"], "content": f"{IMAGE_TOKEN}\n{m['content']}" if m.get("images") else m["content"]} for m in messages]
        ids = prompt_ids(self.tokenizer, self.template, plain, self.system)
        if not images:
            return ids, {}
        arr = np.asarray(ids)
        ids = expand_image_tokens(arr, arr.copy(), np.arange(len(arr)), self.model.image_token_id, self.model.num_image_tokens)[0].tolist()
        try:
            pixels = pixel_values([io.BytesIO(images[0])], self.processor, self.pad_to_square)
        except FtcoreError:
            raise FtcoreError("the image cannot be read: not an image file Pillow knows") from None
        return ids, {"pixel_values": pixels.to(self.device)}

    def generation(self, messages: list[dict[str, Any]], sampling: Sampling = Sampling()) -> Generation:
        ids, inputs = self.prompt(messages)
        return Generation(self.model, self.tokenizer, self.template, messages, sampling, system=self.system, ids=ids, inputs=inputs)

    def _messages(self, image_path: str | Path | None, prompt: str, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``history`` and the next user turn, which carries the image when it opens the conversation."""
        turn: dict[str, Any] = {"role": "user", "content": prompt}
        if not history and image_path is not None:
            turn["images"] = [Path(image_path).read_bytes()]
        return [*history, turn]

    def _inputs(self, image_path: str | Path | None, prompt: str, history: list[dict[str, Any]]) -> tuple[Any, Any]:
        """``(input_ids, pixel_values)`` tensors of the prompt, for calling the model directly."""
        import torch

        ids, inputs = self.prompt(self._messages(image_path, prompt, history))
        return torch.tensor([ids], device=self.device), inputs.get("pixel_values")

    def stream(self, image_path: str | Path | None, prompt: str, history: list[dict[str, Any]] | None = None, **sampling: Any) -> Iterator[str]:
        """The answer as it is generated, piece by piece (stop words cut off); ``sampling``: the
        fields of ``ftcore.api.Sampling`` (default: greedy, at most 128 tokens)."""
        yield from self.generation(self._messages(image_path, prompt, history or []), _sampling(sampling))

    def answer(self, image_path: str | Path | None, prompt: str, history: list[dict[str, Any]] | None = None, **sampling: Any) -> str:
        """The whole answer (greedy unless ``sampling`` says otherwise)."""
        return self.generation(self._messages(image_path, prompt, history or []), _sampling(sampling)).run()

    def ask(self, prompt: str, image_path: str | Path | None = None, stream: Callable[[str], None] | None = None, **sampling: Any) -> str:
        """A multi-turn conversation about one image: the first call (or a new ``image_path``) starts it."""
        if image_path is not None and Path(image_path) != self.image:
            self.image, self.history = Path(image_path), []
        messages = self._messages(self.image, prompt, self.history)
        generation = self.generation(messages, _sampling(sampling))
        for piece in generation:
            if stream is not None:
                stream(piece)
        self.history = [*messages, {"role": "assistant", "content": generation.text}]
        return generation.text


def _sampling(settings: dict[str, Any]) -> Sampling:
    """The Python API's keyword arguments (``max_new_tokens=..., temperature=...``) as a ``Sampling``."""
    return replace(DEFAULT_SAMPLING, **settings)  # an unknown name raises TypeError


def load_llava(llm_path: str | Path, llava_dir: str | Path, visual_encoder_path: str | Path, *, parts: Any, llm_builder: str | None = None,
               template: str | None = None, system: str | None = None, device: str = "auto", dtype: str | None = None) -> LlavaChat:
    """The LLM from ``llm_path`` with the run's LLM adapter merged, the vision tower with its adapter merged, the projector.

    ``parts``: the registered parts (the LLM's builder and the chat template are looked up in them).
    """
    import torch
    from peft import PeftModel
    from transformers import CLIPVisionModel

    from .builder import LLM_ADAPTER, LLM_FULL, PROJECTOR, VISION_ADAPTER, VISION_FULL
    from .model import LlavaModel, Projector

    folder = resolve_llava_dir(llava_dir)
    recipe = read_recipe(folder)
    model_cfg, data_cfg = recipe.get("model", {}), recipe.get("data", {})
    builder = parts.models.get(llm_builder or model_cfg.get("llm_builder") or _llm_builder_name(llm_path))
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    if dtype is not None and dtype not in DTYPES:
        raise FtcoreError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    torch_dtype = getattr(torch, DTYPES[dtype]) if dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)

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
    return LlavaChat(model=model, tokenizer=tokenizer, template=parts.templates.get(template_name), system=system if system is not None else data_cfg.get("system"),
                     name=Path(str(llava_dir)).name or folder.name, processor=load_image_processor(visual_encoder_path),
                     pad_to_square=bool(model_cfg.get("pad_image_to_square", True)))


LOAD_OPTIONS = ("llm_builder", "template", "system", "device", "dtype")


def answer_with_image(llm_path: str | Path, llava_dir: str | Path, visual_encoder_path: str | Path, image_path: str | Path, prompt: str, *,
                      parts: Any, **options: Any) -> str:
    """The trained model's answer to ``prompt`` about the image at ``image_path``.

    ``options``: the fields of ``ftcore.api.Sampling`` (``max_new_tokens`` 128, ``temperature``
    0: greedy, ``top_p``, ``top_k``, ``repetition_penalty``, ``stop``, ``seed``) and the loading
    options of :func:`load_llava` (``llm_builder``, ``template``, ``system``, ``device``, ``dtype``).
    """
    chat = load_llava(llm_path, llava_dir, visual_encoder_path, parts=parts, **{k: options.pop(k) for k in LOAD_OPTIONS if k in options})
    return chat.answer(image_path, prompt, **options)


def stream_with_image(llm_path: str | Path, llava_dir: str | Path, visual_encoder_path: str | Path, image_path: str | Path, prompt: str, *,
                      parts: Any, **options: Any) -> Iterator[str]:
    """Like :func:`answer_with_image`, yielding the answer piece by piece as it is generated."""
    chat = load_llava(llm_path, llava_dir, visual_encoder_path, parts=parts, **{k: options.pop(k) for k in LOAD_OPTIONS if k in options})
    yield from chat.stream(image_path, prompt, **options)


class LlavaBackend(ChatBackend):
    """``ftcore chat MODEL --llava DIR [--visual-encoder PATH] [--image IMG]`` and ``ftcore serve MODEL
    --llava DIR [--visual-encoder PATH]``: MODEL is the LLM a llava run trained on, DIR the run; the
    vision tower defaults to the one the checkpoint's ``recipe.yaml`` records."""

    name = "llava"
    help = "a LLaVA run's checkpoint (or work dir): MODEL is its LLM; chat about --image, or serve requests with image_url parts"

    def options(self) -> list[click.Parameter]:
        return [click.Option(["--visual-encoder"], type=click.Path(),
                             help="the CLIP vision tower folder (with --llava; default: model.visual_encoder of the checkpoint's recipe.yaml)")]

    def check(self, source: str, args: ChatArgs, options: dict[str, Any]) -> None:
        ignored = [flag for flag, value in (("--adapter", args.adapter), ("--bits", args.bits)) if value]
        if ignored:
            raise FtcoreError(f"{ignored[0]} does not apply with --llava", hint="the llava checkpoint holds the LLM's adapter: give the base LLM as MODEL")
        self.visual_encoder(source, options)

    @staticmethod
    def visual_encoder(source: str, options: dict[str, Any]) -> str:
        """``--visual-encoder``, else the vision tower the checkpoint's recipe.yaml records (checked)."""
        return recorded_folder(resolve_llava_dir(source), "visual_encoder", options.get("visual_encoder"), "vision tower", "--visual-encoder")

    def load(self, parts: Any, source: str, args: ChatArgs, options: dict[str, Any], warn: Callable[[str], None]) -> LlavaChat:
        return load_llava(args.model, source, self.visual_encoder(source, options), parts=parts, llm_builder=args.builder, template=args.template, system=args.system)
