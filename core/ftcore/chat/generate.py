"""Loading a model (with an optional adapter) for chat, and generating answers with a chat
template's prompt and stop words: all at once (:func:`generate_answer`) or streamed
(:class:`Generation`). ``ftcore chat``, ``ftcore serve``, ``ftcore merge`` and the
``evaluate_chat`` training hook share it.

An adapter folder (a training checkpoint) says what it was trained with: its
``recipe.yaml`` names the builder, base model, template and system prompt, and PEFT's
``adapter_config.json`` names the base model (``base_model_name_or_path``).
"""

from __future__ import annotations

import json
import queue
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..errors import FtcoreError

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


# --------------------------------------------------------------------------- adapters


@dataclass
class AdapterInfo:
    """What an adapter folder says about how it was trained."""

    path: Path
    #: ``base_model_name_or_path`` of adapter_config.json
    base: str | None = None
    #: model.builder / model.path / model.trust_remote_code of recipe.yaml (when present)
    builder: str | None = None
    model_path: str | None = None
    trust_remote_code: bool = False
    #: data.template / data.system of recipe.yaml (when present)
    template: str | None = None
    system: str | None = None
    has_recipe: bool = False

    @property
    def weights(self) -> Path:
        return next(self.path / n for n in ADAPTER_WEIGHTS if (self.path / n).is_file())


def read_adapter(path: str | Path) -> AdapterInfo:
    """Read an adapter folder, or say clearly what is missing from it."""
    p = Path(path).expanduser()
    hint = "give a checkpoint folder of a LoRA/QLoRA run (work_dir/checkpoint-N), which holds adapter_config.json and adapter_model.safetensors"
    if not p.is_dir():
        raise FtcoreError(f"adapter folder {str(path)!r} does not exist", hint=hint)
    config = p / "adapter_config.json"
    if not config.is_file():
        extra = " (it holds a full model, which needs no adapter: use it as MODEL)" if (p / "config.json").is_file() else ""
        raise FtcoreError(f"adapter folder {str(path)!r} has no adapter_config.json{extra}", hint=hint)
    if not any((p / n).is_file() for n in ADAPTER_WEIGHTS):
        raise FtcoreError(f"adapter folder {str(path)!r} has no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})", hint=hint)
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FtcoreError(f"cannot read adapter_config.json: {exc}", where=str(config)) from None
    info = AdapterInfo(path=p, base=cfg.get("base_model_name_or_path") or None)
    recipe = p / "recipe.yaml"
    if recipe.is_file():
        import yaml

        try:
            data = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise FtcoreError(f"cannot read the adapter's recipe: {exc}", where=str(recipe)) from None
        model = data.get("model") or {}
        dataset = data.get("data") or {}
        info.has_recipe = True
        info.builder = model.get("builder")
        info.model_path = model.get("path")
        info.trust_remote_code = bool(model.get("trust_remote_code", False))
        info.template = dataset.get("template")
        info.system = dataset.get("system")
    return info


def is_adapter_dir(path: str | Path) -> bool:
    p = Path(path).expanduser()
    return (p / "adapter_config.json").is_file() and not (p / "config.json").is_file()


def base_of(info: AdapterInfo) -> str:
    """The base model an adapter was trained on (recipe model.path, else adapter_config's)."""
    for candidate in (info.model_path, info.base):
        if candidate and Path(candidate).expanduser().is_dir():
            return str(candidate)
    raise FtcoreError(
        f"cannot tell which base model the adapter in {info.path} belongs to "
        f"(recipe model.path: {info.model_path!r}, adapter_config base_model_name_or_path: {info.base!r})",
        hint="name the base model folder explicitly: ftcore chat BASE --adapter ADAPTER",
    )


def attach_adapter(model: Any, info: AdapterInfo) -> Any:
    """``model`` wrapped in the adapter (PEFT), checking that every saved weight found its place."""
    from peft import PeftModel, get_peft_model_state_dict

    hint = f"the adapter must be loaded onto the base model it was trained on (adapter_config.json says {info.base!r})"
    try:
        peft_model = PeftModel.from_pretrained(model, str(info.path), is_trainable=False)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise FtcoreError(f"the adapter in {info.path} does not fit this base model: {detail[:600]}", hint=hint) from None
    saved = set(_saved_keys(info.weights))
    expected = set(get_peft_model_state_dict(peft_model).keys())
    unexpected, missing = sorted(saved - expected), sorted(expected - saved)
    if unexpected or missing:
        parts = []
        if unexpected:
            parts.append(f"{len(unexpected)} adapter weight(s) have no place in this model (e.g. {unexpected[0]})")
        if missing:
            parts.append(f"{len(missing)} adapter weight(s) this model expects are not in the adapter (e.g. {missing[0]})")
        raise FtcoreError(f"the adapter in {info.path} does not fit this base model: {'; '.join(parts)}", hint=hint)
    return peft_model


def _saved_keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    import torch

    return list(torch.load(str(path), map_location="cpu", weights_only=True).keys())


# --------------------------------------------------------------------------- choosing parts


def model_config(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads((Path(path).expanduser() / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def builder_name(parts: Any, name: str | None, model_path: str | Path, adapter: AdapterInfo | None = None) -> str:
    """The builder to load with: ``--builder``, else the adapter's recipe's, else one named
    after the checkpoint's ``model_type`` (e.g. ``internlm2``), else ``hf``. Checked, not loaded."""
    if not name and adapter is not None and adapter.builder:
        name = adapter.builder
    if not name:
        model_type = model_config(model_path).get("model_type")
        name = model_type if model_type and model_type in parts.models else "hf"
    parts.models.part(name)  # an unknown name: an error with "did you mean"
    return name


def resolve_builder(parts: Any, name: str | None, model_path: str | Path, adapter: AdapterInfo | None = None) -> tuple[str, Any]:
    """(name, builder object) as :func:`builder_name` chooses."""
    chosen = builder_name(parts, name, model_path, adapter)
    return chosen, parts.models.get(chosen)


def resolve_template(
    parts: Any,
    name: str | None,
    adapter: AdapterInfo | None,
    tokenizer: Any,
    warn: Callable[[str], None] = lambda message: None,
) -> Any:
    """The chat template: ``--template`` when given (warning when the adapter was trained with
    another), else the adapter's training template, else the tokenizer's own chat_template
    (``hf``); otherwise an error asking for ``--template``."""
    trained = adapter.template if adapter is not None else None
    if name:
        if trained and trained != name:
            warn(f"warning: the adapter was trained with template {trained!r}, but --template is {name!r}; answers may be poor")
        return parts.templates.get(name)
    if trained:
        return parts.templates.get(trained)
    if getattr(tokenizer, "chat_template", None):
        return parts.templates.get("hf")
    raise FtcoreError(
        "cannot tell which chat template to use: the model's tokenizer has no chat_template and no adapter recipe names one",
        hint="pass --template NAME (see `ftcore list templates`)",
    )


def pick_device(requested: str = "auto") -> Any:
    import torch

    if requested != "auto":
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class ChatModel:
    """A model ready to answer: tokenizer, model (with adapter), template, system prompt."""

    model: Any
    tokenizer: Any
    template: Any
    system: str | None = None
    name: str = "model"
    #: serialises generation: one model, one answer at a time
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: whether requests may carry images (``messages[i]["images"]``: raw image bytes)
    accepts_images: bool = False

    def generation(self, messages: list[dict[str, Any]], **settings: Any) -> "Generation":
        settings.setdefault("system", self.system)
        return Generation(self.model, self.tokenizer, self.template, messages, **settings)


@dataclass
class ChatPlan:
    """What ``load_chat_model`` will load, checked before anything heavy is imported."""

    model_path: str
    adapter: AdapterInfo | None
    builder: str
    template: str | None
    system: str | None
    bits: int | None = None


def plan_chat(
    parts: Any,
    model_path: str,
    *,
    adapter: str | None = None,
    builder: str | None = None,
    template: str | None = None,
    system: str | None = None,
    bits: int | None = None,
) -> ChatPlan:
    """Check the model folder, adapter files, builder and template names (cheap; no torch).

    MODEL may itself be an adapter folder: its base then comes from its recipe or adapter_config.
    """
    info = None
    if adapter is None and is_adapter_dir(model_path):
        info = read_adapter(model_path)
        model_path = base_of(info)
    elif adapter is not None:
        info = read_adapter(adapter)
    p = Path(model_path).expanduser()
    if not (p / "config.json").is_file():
        raise FtcoreError(
            f"model folder {model_path!r} {'has no config.json' if p.is_dir() else 'does not exist'}",
            hint="give a local checkpoint folder (config.json, *.safetensors, tokenizer files), or an adapter checkpoint folder",
        )
    chosen = builder_name(parts, builder, model_path, info)
    for name in (template, info.template if info is not None else None):
        if name:
            parts.templates.part(name)
    if system is None and info is not None:
        system = info.system
    return ChatPlan(model_path=str(model_path), adapter=info, builder=chosen, template=template, system=system, bits=bits)


def load_chat_model(
    parts: Any,
    model_path: str | ChatPlan,
    *,
    adapter: str | None = None,
    builder: str | None = None,
    template: str | None = None,
    system: str | None = None,
    bits: int | None = None,
    device: str = "auto",
    warn: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> ChatModel:
    """Load MODEL (and ``adapter``) through the registered builder, ready to chat
    (``model_path`` may be a :class:`ChatPlan` made by :func:`plan_chat`)."""
    import torch

    from ..models.loading import quantization_config

    plan = model_path if isinstance(model_path, ChatPlan) else plan_chat(
        parts, model_path, adapter=adapter, builder=builder, template=template, system=system, bits=bits
    )
    info = plan.adapter
    build = parts.models.get(plan.builder)
    trust = bool(info.trust_remote_code) if info is not None else False
    tokenizer = build.load_tokenizer(plan.model_path, trust_remote_code=trust)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    chat_template = resolve_template(parts, plan.template, info, tokenizer, warn)
    dev = pick_device(device)
    if dev.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust}
    if plan.bits:
        kwargs["quantization_config"] = quantization_config({4: "nf4", 8: "int8"}[plan.bits], True, dtype)
        kwargs["device_map"] = {"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"}
    model = build.load_model(plan.model_path, **kwargs)
    if not plan.bits:
        model.to(dev)
    if info is not None:
        model = attach_adapter(model, info)
    model.eval()
    name = (info.path if info is not None else Path(plan.model_path)).expanduser().resolve().name
    return ChatModel(model=model, tokenizer=tokenizer, template=chat_template, system=plan.system, name=name or plan.builder)


# --------------------------------------------------------------------------- generation


def stop_token_ids(tokenizer: Any, template: Any) -> list[int]:
    """EOS plus every stop word of the template that is a single token."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for word in getattr(template, "stop_words", ()) or ():
        tok = tokenizer.convert_tokens_to_ids(word)
        if isinstance(tok, int) and tok != tokenizer.unk_token_id and tok not in ids:
            ids.append(tok)
    return ids


def _eos_ids(model: Any, tokenizer: Any, template: Any) -> list[int]:
    """``stop_token_ids`` plus the model's own generation_config EOS ids (e.g. a merged model's)."""
    ids = stop_token_ids(tokenizer, template)
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None) if config is not None else None
    for tok in extra if isinstance(extra, (list, tuple)) else ([extra] if extra is not None else []):
        if isinstance(tok, int) and tok not in ids:
            ids.append(tok)
    return ids


def prompt_ids(tokenizer: Any, template: Any, messages: list[dict[str, Any]], system: str | None = None) -> list[int]:
    """Token ids of the prompt for the next assistant turn (BOS as the template asks)."""
    from ..data.encode import render_prompt

    text = render_prompt(messages, template, system=system, tokenizer=tokenizer, bos_token=tokenizer.bos_token)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if getattr(template, "bos", "first") != "none" and tokenizer.bos_token_id is not None and not getattr(template, "use_tokenizer_template", False):
        ids = [tokenizer.bos_token_id] + ids
    return ids


def _sampling(temperature: float, top_p: float, top_k: int, repetition_penalty: float, max_new_tokens: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"do_sample": temperature > 0, "max_new_tokens": max_new_tokens, "repetition_penalty": repetition_penalty}
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def _stop_words(template: Any, extra: Sequence[str] = ()) -> list[str]:
    words = [w for w in (getattr(template, "stop_words", ()) or ()) if w]
    return words + [w for w in extra if w and w not in words]


def _stopping_criteria(tokenizer: Any, words: Sequence[str], prompt_len: int, cancel: threading.Event | None) -> Any:
    """Stop when any of ``words`` shows up in the generated text (multi-token stop words), or on ``cancel``."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    window = max([len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in words] or [0]) + 4

    class StopOnWords(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = bool(cancel is not None and cancel.is_set())
            if not done and words:
                tail = input_ids[0, max(prompt_len, input_ids.shape[1] - window) :].tolist()
                text = tokenizer.decode(tail, skip_special_tokens=False)
                done = any(w in text for w in words)
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopOnWords()])


def _cut_at_stop(text: str, words: Sequence[str]) -> tuple[str, bool]:
    cut = min((text.index(w) for w in words if w in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def generate_answer(
    model: Any,
    tokenizer: Any,
    template: Any,
    messages: list[dict[str, Any]],
    *,
    system: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    streamer: Any = None,
    stop: Sequence[str] = (),
) -> str:
    """The model's answer to ``messages`` (greedy when ``temperature`` is 0), stop words removed."""
    import torch

    device = next(p for p in model.parameters()).device
    ids = torch.tensor([prompt_ids(tokenizer, template, messages, system)], device=device)
    was_training = model.training
    model.eval()
    eos = _eos_ids(model, tokenizer, template)
    words = _stop_words(template, stop)
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                eos_token_id=eos or None,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0),
                use_cache=True,
                streamer=streamer,
                stopping_criteria=_stopping_criteria(tokenizer, words, ids.shape[1], None) if words else None,
                **_sampling(temperature, top_p, top_k, repetition_penalty, max_new_tokens),
            )
    finally:
        if was_training:
            model.train()
    text = tokenizer.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)
    return _cut_at_stop(text, words)[0].strip()


class Generation:
    """One answer, streamed: iterate for text pieces as tokens are generated.

    Stop words (the template's plus ``stop``) end the answer and are never shown; text
    that could be the start of a stop word is held back until it is clear. Afterwards
    ``text``, ``finish_reason`` (``stop`` or ``length``), ``prompt_tokens`` and
    ``completion_tokens`` describe the answer. Closing the iterator early (a client that
    went away, Ctrl-C) stops generation at the next token.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        template: Any,
        messages: list[dict[str, Any]],
        *,
        system: str | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | None = None,
        ids: list[int] | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.tokenizer, self.template = model, tokenizer, template
        # ``ids``/``inputs``: a prompt prepared by the caller and extra generate() inputs
        # (e.g. an image model's pixel_values); otherwise rendered from ``messages``.
        self.ids = ids if ids is not None else prompt_ids(tokenizer, template, messages, system)  # raises on a malformed conversation
        self.inputs = inputs or {}
        self.words = _stop_words(template, stop)
        self.settings = _sampling(temperature, top_p, top_k, repetition_penalty, max_new_tokens)
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.text = ""
        self.finish_reason = "stop"
        self.prompt_tokens = len(self.ids)
        self.completion_tokens = 0
        self.cancel = threading.Event()

    def _run(self, streamer: Any, result: dict[str, Any]) -> None:
        import torch

        try:
            device = next(p for p in self.model.parameters()).device
            ids = torch.tensor([self.ids], device=device)
            eos = _eos_ids(self.model, self.tokenizer, self.template)
            if self.seed is not None:
                torch.manual_seed(self.seed)
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    eos_token_id=eos or None,
                    pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (eos[0] if eos else 0),
                    use_cache=True,
                    streamer=streamer,
                    stopping_criteria=_stopping_criteria(self.tokenizer, self.words, ids.shape[1], self.cancel),
                    **self.settings,
                    **self.inputs,
                )
            new = out[0, ids.shape[1] :].tolist()
            result["tokens"] = new
            result["eos"] = bool(new) and new[-1] in eos
        except BaseException as exc:  # re-raised in the consuming thread
            result["error"] = exc
            streamer.end()

    def __iter__(self) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=0.1)
        result: dict[str, Any] = {}
        thread = threading.Thread(target=self._run, args=(streamer, result), daemon=True)
        thread.start()
        raw = ""  # everything decoded so far
        shown = 0  # how much of raw has been yielded
        stopped = False
        try:
            while True:
                try:
                    piece = next(streamer)
                except StopIteration:
                    break
                except queue.Empty:
                    if not thread.is_alive() and "error" in result:
                        break
                    continue
                if stopped:
                    continue  # drain
                raw += piece
                cut, stopped = _cut_at_stop(raw, self.words)
                if stopped:
                    self.cancel.set()
                    end = len(cut)
                else:
                    end = len(raw) - _held_back(raw, self.words)
                if not shown:
                    lead = len(raw[:end]) - len(raw[:end].lstrip())
                    if lead == end:
                        continue  # only whitespace so far: the answer has not started
                    shown = lead
                if end > shown:
                    out = raw[shown:end]
                    shown = end
                    self.text += out
                    yield out
            thread.join()
            if "error" in result:
                raise result["error"]
            if not stopped:
                tail = _cut_at_stop(raw, self.words)[0][shown:] if shown else _cut_at_stop(raw, self.words)[0].lstrip()
                if tail:
                    self.text += tail
                    yield tail
            tokens = result.get("tokens", [])
            self.completion_tokens = len(tokens)
            if not stopped and not result.get("eos") and len(tokens) >= self.max_new_tokens:
                self.finish_reason = "length"
            self.text = self.text.rstrip()
        finally:
            self.cancel.set()
            thread.join(timeout=60)

    def run(self) -> str:
        """Generate the whole answer and return it."""
        for _ in self:
            pass
        return self.text


def _held_back(text: str, words: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop word."""
    best = 0
    for w in words:
        for n in range(min(len(w) - 1, len(text)), best, -1):
            if text.endswith(w[:n]):
                best = n
                break
    return best
