"""``FtcoreLM``: lm-evaluation-harness's ``HFLM`` over a model and tokenizer loaded by ftcore.

Importing this module imports ``lm_eval`` (the ``lm-eval`` extra). From Python::

    from ftcore.api import installed_parts
    from ftcore.chat.resolve import load_chat_model
    from ftcore.evaluate.lm_harness import FtcoreLM
    import lm_eval

    chat = load_chat_model(installed_parts(), "./internlm2-chat-1_8b", adapter="work_dirs/x/checkpoint-300")
    lm_eval.simple_evaluate(model=FtcoreLM(chat), tasks=["ceval-valid"], apply_chat_template=True)

The harness scores log-likelihoods and generates through ``HFLM`` unchanged; what ftcore adds is
the loading (adapter, builder, quantisation) and, when the harness applies a chat template, the
one ftcore trained with (``render_prompt``: the same text as ``ftcore chat``), with the template's
stop words ending generated answers.
"""

from __future__ import annotations

from typing import Any

from lm_eval.models.huggingface import HFLM


class FtcoreLM(HFLM):
    """The harness's Hugging Face model class over ``chat_model`` (a ``ChatModel``)."""

    def __init__(self, chat_model: Any, *, batch_size: int = 8, max_new_tokens: int = 256, max_length: int | None = None) -> None:
        self.chat_model = chat_model
        self._max_new_tokens = max_new_tokens
        super().__init__(pretrained=chat_model.model, tokenizer=chat_model.tokenizer, backend="causal", batch_size=batch_size, max_length=max_length)

    @property
    def max_gen_toks(self) -> int:
        return self._max_new_tokens

    @property
    def tokenizer_name(self) -> str:
        return f"ftcore-{self.chat_model.template.name}"

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The name of ftcore's template (recorded by the harness; rendering is :meth:`apply_chat_template`)."""
        return self.chat_model.template.name if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The conversation as ftcore renders it for the model (with the first BOS as text, so
        the harness does not add another); a last assistant message is continued."""
        from ..data.encode import render_prompt

        template, tokenizer = self.chat_model.template, self.tokenizer
        messages = [{"role": m["role"], "content": m["content"]} for m in chat_history]
        system = messages.pop(0)["content"] if messages and messages[0]["role"] == "system" else self.chat_model.system
        partial = messages.pop()["content"] if not add_generation_prompt and messages and messages[-1]["role"] == "assistant" else ""
        text = render_prompt(messages, template, system, tokenizer=tokenizer, bos_token=tokenizer.bos_token)
        first = getattr(template, "bos", "first") != "none" and not getattr(template, "use_tokenizer_template", False)
        return (tokenizer.bos_token if first and tokenizer.bos_token else "") + text + partial

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """The harness's generation, also stopped by the chat template's stop words."""
        words = [w for w in (getattr(self.chat_model.template, "stop_words", ()) or ()) if w]
        for request in requests if words else ():
            context, kwargs = request.arguments
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            request.arguments = (context, {**kwargs, "until": until + [w for w in words if w not in until]})
        return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def get_model_info(self) -> dict[str, Any]:
        """What the harness records about the model (nothing looked up on the Hub)."""
        return {"model_name": self.chat_model.name, "template": self.chat_model.template.name,
                "model_num_parameters": sum(p.numel() for p in self.model.parameters()), "model_dtype": str(next(self.model.parameters()).dtype)}
