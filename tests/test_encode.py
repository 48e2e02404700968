"""Rendering conversations by template and encoding them into input ids and masked labels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ftcore.data.encode import IGNORE_INDEX, encode_batch, render_prompt, render_segments
from ftcore.data.formats import RecordError
from ftcore.data.template import PromptTemplate
from ftcore.errors import FtcoreError
from ftcore.models.tiny import make_tokenizer
from ftcore.parts import collect_parts
from ftcore.plugins import get_plugin_manager

JINJA = Path(__file__).resolve().parent / "fixtures" / "jinja"
TEMPLATES: dict[str, PromptTemplate] = {p.name: p.target for p in collect_parts(get_plugin_manager()).templates}

SYSTEM = "You are a medical assistant."
TURNS = [("Who are you?", "I am an AI assistant."), ("你好！", "我是一个人工智能助手。"), ("What is a cold?", "A virus: cough, fever.")]


def conversation(system: str | None = SYSTEM, turns: list[tuple[str, str]] = TURNS) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = [{"role": "system", "content": system}] if system is not None else []
    for user, answer in turns:
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return msgs


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(make_tokenizer(tmp_path_factory.mktemp("tok"))))


def hf_tokenizer(tok: Any, jinja: str) -> Any:
    """A copy of the tiny tokenizer whose chat_template is one of the public Jinja fixtures."""
    from copy import deepcopy

    clone = deepcopy(tok)
    clone.chat_template = (JINJA / f"{jinja}.jinja").read_text(encoding="utf-8")
    return clone


# ---------------------------------------------------------------- an independent reference


def reference(tpl: PromptTemplate, system: str | None, turns: list[tuple[str, str]], tok: Any) -> tuple[str, list[int], list[int]]:
    """Text, ids and labels spelled out from the template's fields (XTuner's encode_fn, turn by turn)."""
    text, ids, labels = "", [], []

    def add(piece: str, trained: bool) -> None:
        nonlocal text
        text += piece
        piece_ids = tok.encode(piece, add_special_tokens=False) if piece else []
        ids.extend(piece_ids)
        labels.extend(piece_ids if trained else [IGNORE_INDEX] * len(piece_ids))

    for n, (user, answer) in enumerate(turns, start=1):
        if tpl.bos == "every_turn" or (tpl.bos == "first" and n == 1):
            ids.append(tok.bos_token_id)
            labels.append(IGNORE_INDEX)
        prompt = tpl.system.replace("{system}", system) if (n == 1 and system) else ""
        add(prompt + tpl.instruction.replace("{input}", user).replace("{round}", str(n)), False)
        add(answer + tpl.suffix, True)
        if not tpl.suffix_as_eos:
            ids.append(tok.eos_token_id)
            labels.append(tok.eos_token_id)
        add(tpl.sep, False)
    return text, ids, labels


NAMED = sorted(name for name, t in TEMPLATES.items() if not t.use_tokenizer_template)
HF = sorted(name for name, t in TEMPLATES.items() if t.use_tokenizer_template and not t.jinja)  # a family's own Jinja: test_families.py


@pytest.mark.parametrize("name", NAMED)
def test_every_template_renders_and_masks_a_multi_turn_conversation_with_system(name: str, tok: Any) -> None:
    tpl = TEMPLATES[name]
    text, ids, labels = reference(tpl, SYSTEM, TURNS, tok)
    assert "".join(seg for seg, _ in render_segments(conversation(), tpl)) == text
    out = encode_batch([{"messages": conversation()}], tok, tpl, max_length=4096)
    assert out.as_lists()[0] == [ids]
    assert out.as_lists()[1] == [labels]
    assert (out.truncated, out.dropped) == (0, 0)


@pytest.mark.parametrize("name", HF)
def test_every_tokenizer_template_renders_like_the_tokenizer_and_trains_the_answers(name: str, tok: Any) -> None:
    chat_tok = hf_tokenizer(tok, "internlm2_chat")
    msgs = conversation()
    segments = render_segments(msgs, TEMPLATES[name], tokenizer=chat_tok)
    assert "".join(seg for seg, _ in segments) == chat_tok.apply_chat_template(msgs, tokenize=False)
    assert [seg for seg, trained in segments if trained] == [answer + "<|im_end|>\n" for _, answer in TURNS]


# ---------------------------------------------------------------- literal expectations

LITERAL = {
    "internlm2_chat": (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nWho?<|im_end|>\n<|im_start|>assistant\nMe.<|im_end|>\n"
    ),
    "qwen_chat": (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nWho?<|im_end|>\n<|im_start|>assistant\nMe.<|im_end|>\n"
    ),
    "llama3_chat": (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWho?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nMe.<|eot_id|>"
    ),
    "llama2_chat": (
        "[INST] <<SYS>>\n You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, "
        "while being safe. Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, "
        "or illegal content. Please ensure that your responses are socially unbiased and positive in nature.\n"
        "Be brief.\n<</SYS>>\n [/INST] [INST] Hi [/INST]Hello!\n[INST] Who? [/INST]Me.\n"
    ),
    "chatglm2": "Be brief.\n[Round 1]\n\n问：Hi\n\n答：Hello!\n\n[Round 2]\n\n问：Who?\n\n答：Me.\n\n",
}
SHORT = conversation("Be brief.", [("Hi", "Hello!"), ("Who?", "Me.")])


@pytest.mark.parametrize("name", sorted(LITERAL))
def test_hand_written_rendering(name: str) -> None:
    assert "".join(seg for seg, _ in render_segments(SHORT, TEMPLATES[name])) == LITERAL[name]


def trained_text(tok: Any, labels: list[int]) -> list[str]:
    """The trained label runs, decoded one run at a time."""
    runs, cur = [], []
    for label in labels + [IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            cur.append(label)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs


def test_internlm2_trains_answers_with_im_end_only(tok: Any) -> None:
    out = encode_batch([{"messages": SHORT}], tok, TEMPLATES["internlm2_chat"], 4096)
    ids, labels = (x[0] for x in out.as_lists())
    assert ids[0] == tok.bos_token_id and labels[0] == IGNORE_INDEX and ids.count(tok.bos_token_id) == 1
    assert tok.eos_token_id not in ids  # <|im_end|> is the end of an answer (suffix_as_eos)
    assert trained_text(tok, labels) == ["Hello!<|im_end|>", "Me.<|im_end|>"]
    assert tok.decode(ids) == "<s>" + LITERAL["internlm2_chat"]


def test_llama2_has_bos_every_turn_and_trains_eos_after_each_answer(tok: Any) -> None:
    out = encode_batch([{"messages": SHORT}], tok, TEMPLATES["llama2_chat"], 4096)
    ids, labels = (x[0] for x in out.as_lists())
    assert trained_text(tok, labels) == ["Hello!</s>", "Me.</s>"]
    assert tok.decode(ids).startswith("<s>[INST] <<SYS>>")
    assert "Hello!</s>\n<s>[INST] Who? [/INST]Me.</s>\n" in tok.decode(ids)
    assert [labels[i] for i, t in enumerate(ids) if t == tok.bos_token_id] == [IGNORE_INDEX, IGNORE_INDEX]


@pytest.mark.parametrize(("bos", "expected"), [("first", 1), ("every_turn", 2), ("none", 0)])
def test_bos_policy(bos: str, expected: int, tok: Any) -> None:
    tpl = PromptTemplate(name="t", instruction="U:{input} A:", suffix_as_eos=True, bos=bos)
    ids = encode_batch([{"messages": SHORT[1:]}], tok, tpl, 4096).as_lists()[0][0]
    assert ids.count(tok.bos_token_id) == expected
    assert (ids[0] == tok.bos_token_id) == (expected > 0)


def test_round_placeholder_counts_turns_from_one() -> None:
    segments = render_segments(SHORT[1:], TEMPLATES["chatglm2"])
    assert segments[0] == ("[Round 1]\n\n问：Hi\n\n答：", False)
    assert ("[Round 2]\n\n问：Who?\n\n答：", False) in segments


# ---------------------------------------------------------------- system prompts


def test_recipe_system_is_used_only_when_the_sample_has_none() -> None:
    tpl = TEMPLATES["internlm2_chat"]
    with_own = render_segments(SHORT, tpl, system="RECIPE")
    assert "Be brief." in with_own[0][0] and "RECIPE" not in with_own[0][0]
    without = render_segments(SHORT[1:], tpl, system="RECIPE")
    assert without[0][0].startswith("<|im_start|>system\nRECIPE<|im_end|>\n<|im_start|>user\nHi")


def test_default_system_is_used_when_nobody_gives_one() -> None:
    segments = render_segments(SHORT[1:], TEMPLATES["qwen_chat"])
    assert segments[0][0].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert "system" not in render_segments(SHORT[1:], TEMPLATES["internlm2_chat"])[0][0]


def test_system_prompt_with_a_template_without_system_slot_is_an_error() -> None:
    tpl = PromptTemplate(name="nosys", instruction="Q: {input}\nA:")
    with pytest.raises(FtcoreError, match="no system slot"):
        render_segments(SHORT, tpl)
    assert render_segments(SHORT[1:], tpl)[0] == ("Q: Hi\nA:", False)


# ---------------------------------------------------------------- parity with the public Jinja templates

PARITY_CASES = {
    "single-turn": conversation("Be brief.", [("Hi", "Hello!")]),
    "multi-turn": conversation(SYSTEM, TURNS),
}


@pytest.mark.parametrize("name", ["internlm2_chat", "llama3_chat", "qwen_chat"])
@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_rendering_equals_the_models_jinja_template(name: str, case: str, tok: Any) -> None:
    chat_tok = hf_tokenizer(tok, name)
    msgs = PARITY_CASES[case]
    tpl = TEMPLATES[name]
    # both Jinja templates that write BOS write it first, as its token text; ours adds it as an id
    theirs = chat_tok.apply_chat_template(msgs, tokenize=False).removeprefix(tok.bos_token)
    assert "".join(seg for seg, _ in render_segments(msgs, tpl)) == theirs
    prompt = chat_tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True).removeprefix(tok.bos_token)
    assert render_prompt(msgs[:-1], tpl) == prompt


@pytest.mark.parametrize("name", ["internlm2_chat", "qwen_chat"])
def test_chatml_token_ids_equal_the_tokenized_jinja_rendering(name: str, tok: Any) -> None:
    chat_tok = hf_tokenizer(tok, name)
    msgs = PARITY_CASES["multi-turn"]
    ids = encode_batch([{"messages": msgs}], tok, TEMPLATES[name], 4096).as_lists()[0][0]
    theirs = chat_tok.apply_chat_template(msgs, tokenize=False)
    if not theirs.startswith(tok.bos_token):
        theirs = tok.bos_token + theirs
    assert ids == tok(theirs, add_special_tokens=False)["input_ids"]


def test_qwen_without_system_matches_the_jinja_default_system(tok: Any) -> None:
    chat_tok = hf_tokenizer(tok, "qwen_chat")
    msgs = PARITY_CASES["multi-turn"][1:]
    assert "".join(s for s, _ in render_segments(msgs, TEMPLATES["qwen_chat"])) == chat_tok.apply_chat_template(msgs, tokenize=False)


def test_render_prompt_ends_with_the_generation_prompt_after_history() -> None:
    prompt = render_prompt(SHORT[:-1], TEMPLATES["internlm2_chat"])
    assert prompt.endswith("Hello!<|im_end|>\n<|im_start|>user\nWho?<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(RecordError, match="must end with the user message"):
        render_prompt(SHORT, TEMPLATES["internlm2_chat"])


def test_render_prompt_writes_bos_and_eos_text_for_every_turn_templates(tok: Any) -> None:
    prompt = render_prompt(SHORT[:-1], TEMPLATES["llama2_chat"], tokenizer=tok, bos_token=tok.bos_token)
    assert not prompt.startswith("<s>")  # the first BOS is the caller's, as an id
    assert prompt.endswith("[/INST]Hello!</s>\n<s>[INST] Who? [/INST]")


# ---------------------------------------------------------------- loss flags, truncation, dropping, pre-training


def test_loss_false_turn_is_masked_with_its_eos(tok: Any) -> None:
    msgs = [dict(m) for m in SHORT]
    msgs[2]["loss"] = False
    segments = render_segments(msgs, TEMPLATES["llama2_chat"])
    assert ("Hello!", False) in segments and ("Me.", True) in segments
    labels = encode_batch([{"messages": msgs}], tok, TEMPLATES["llama2_chat"], 4096).as_lists()[1][0]
    assert trained_text(tok, labels) == ["Me.</s>"]


def test_truncation_is_counted_and_keeps_the_start(tok: Any) -> None:
    full = encode_batch([{"messages": SHORT}], tok, TEMPLATES["internlm2_chat"], 4096)
    cut = encode_batch([{"messages": SHORT}, {"messages": SHORT}], tok, TEMPLATES["internlm2_chat"], len(full.as_lists()[0][0]) - 3)
    assert cut.truncated == 2 and cut.dropped == 0
    (cut_ids, cut_labels), (full_ids, full_labels) = cut.as_lists(), full.as_lists()
    assert cut_ids[0] == full_ids[0][:-3] and cut_labels[0] == full_labels[0][:-3]


def test_samples_left_without_trained_tokens_are_dropped_and_counted(tok: Any) -> None:
    tpl = TEMPLATES["internlm2_chat"]
    prompt_len = 1 + len(tok.encode(render_segments(SHORT, tpl)[0][0], add_special_tokens=False))
    all_masked = [dict(m) for m in SHORT]
    all_masked[2]["loss"] = all_masked[4]["loss"] = False
    out = encode_batch([{"messages": SHORT}, {"messages": all_masked}, {"text": "hi"}], tok, tpl, prompt_len)
    assert out.dropped == 2 and out.truncated == 2  # SHORT cut before its answer; all_masked never trained
    assert out.indices.tolist() == [2] and len(out) == 1


def test_pretraining_text_is_fully_trained_with_bos_and_eos(tok: Any) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    out = encode_batch([{"text": text}], tok, None, 4096)
    ids, labels = (x[0] for x in out.as_lists())
    assert ids == [tok.bos_token_id] + tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
    assert labels == ids


def test_long_text_is_chunked_to_max_length_and_no_token_is_lost(tok: Any) -> None:
    text = " ".join(f"word{i}" for i in range(80))
    whole = encode_batch([{"text": text}], tok, None, 1 << 20).as_lists()[0][0]
    out = encode_batch([{"messages": SHORT}, {"text": text}, {"text": "hi"}], tok, TEMPLATES["internlm2_chat"], 32)
    ids, labels = out.as_lists()
    chunks = [i for i, k in enumerate(out.indices.tolist()) if k == 1]
    assert out.chunked == 1 and out.chunks == len(chunks) == -(-len(whole) // 32) and out.truncated == 1  # only the chat sample is cut
    assert sum((ids[i] for i in chunks), []) == whole and all(len(ids[i]) <= 32 for i in chunks)
    assert all(labels[i] == ids[i] for i in chunks)  # pre-training: every token trained
    assert out.indices.tolist() == [0] + [1] * len(chunks) + [2]
    lapped = encode_batch([{"text": text}], tok, None, 32, chunk_overlap=8)
    lap_ids, lap_labels = lapped.as_lists()
    assert lapped.chunks == len(lap_ids) == 1 + -(-(len(whole) - 32) // 24)
    assert all(a[-8:] == b[:8] for a, b in zip(lap_ids, lap_ids[1:]))  # each chunk starts with the last 8 tokens before it...
    assert all(lab[:8] == [IGNORE_INDEX] * 8 for lab in lap_labels[1:])  # ...as untrained context
    assert [t for i, lab in zip(lap_ids, lap_labels) for t, x in zip(i, lab) if x != IGNORE_INDEX] == whole  # each token trained once
    with pytest.raises(FtcoreError, match="chunk overlap"):
        encode_batch([{"text": text}], tok, None, 32, chunk_overlap=32)


def test_mixed_batch_keeps_order_and_tokenizes_each_distinct_text_once_in_one_call(tok: Any) -> None:
    calls = []

    class Counting:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def __call__(self, texts: Any, **kwargs: Any) -> Any:
            calls.append((len(texts), kwargs))
            return self.inner(texts, **kwargs)

    samples = [{"messages": SHORT}, {"text": "hello"}, {"messages": conversation()}] * 5
    out = encode_batch(samples, Counting(tok), TEMPLATES["internlm2_chat"], 4096)
    assert len(calls) == 1 and calls[0][1]["add_special_tokens"] is False
    encode_batch(samples[:3], Counting(tok), TEMPLATES["internlm2_chat"], 4096)
    assert calls[1][0] == calls[0][0] > 3  # five copies of each sample add no text to tokenise
    assert out.indices.tolist() == list(range(15))
    input_ids = out.as_lists()[0]
    assert input_ids[1] == [tok.bos_token_id] + tok.encode("hello", add_special_tokens=False) + [tok.eos_token_id]
    assert input_ids[0] == input_ids[3] and len(input_ids[2]) > len(input_ids[0])


def test_chat_sample_without_template_is_an_error(tok: Any) -> None:
    with pytest.raises(FtcoreError, match="needs a template"):
        encode_batch([{"messages": SHORT}], tok, None, 64)


# ---------------------------------------------------------------- the hf template


def test_hf_template_trains_assistant_turns_and_what_closes_them(tok: Any) -> None:
    chat_tok = hf_tokenizer(tok, "internlm2_chat")
    msgs = [dict(m) for m in SHORT]
    msgs[2]["loss"] = False
    out = encode_batch([{"messages": msgs}], chat_tok, TEMPLATES["hf"], 4096)
    ids, labels = (x[0] for x in out.as_lists())
    assert ids == tok(chat_tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
    assert ids.count(tok.bos_token_id) == 1 and labels[0] == IGNORE_INDEX
    assert trained_text(tok, labels) == ["Me.<|im_end|>\n"]


def test_hf_template_puts_the_recipe_system_first_and_renders_prompts(tok: Any) -> None:
    chat_tok = hf_tokenizer(tok, "llama3_chat")
    segments = render_segments(SHORT[1:], TEMPLATES["hf"], system="RECIPE", tokenizer=chat_tok)
    assert segments[0] == ("<s><|start_header_id|>system<|end_header_id|>\n\nRECIPE<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", False)
    assert segments[1] == ("Hello!<|eot_id|>", True)
    prompt = render_prompt(SHORT[1:-1], TEMPLATES["hf"], tokenizer=chat_tok)
    assert prompt.endswith("Who?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_hf_template_without_chat_template_is_a_clear_error(tok: Any) -> None:
    from copy import deepcopy

    plain = deepcopy(tok)
    plain.chat_template = None
    with pytest.raises(FtcoreError, match="has none"):
        encode_batch([{"messages": SHORT}], plain, TEMPLATES["hf"], 64)
    with pytest.raises(FtcoreError, match="needs the tokenizer"):
        render_segments(SHORT, TEMPLATES["hf"])


def test_hf_template_that_rewrites_history_is_refused(tok: Any) -> None:
    chat_tok = hf_tokenizer(tok, "internlm2_chat")
    # numbers the turns from the end, so a prefix renders differently from the whole conversation
    chat_tok.chat_template = "{% for m in messages %}[{{ messages|length - loop.index0 }}]{{ m['content'] }}{% endfor %}"
    with pytest.raises(FtcoreError, match="rewrites earlier turns"):
        render_segments(SHORT, TEMPLATES["hf"], tokenizer=chat_tok)


# ---------------------------------------------------------------- malformed conversations

MALFORMED = {
    "empty": ([], "empty"),
    "assistant first": ([{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}], "starts with an assistant"),
    "two users in a row": ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}], "two user messages in a row"),
    "two assistants in a row": ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"}], "two assistant messages in a row"),
    "no assistant": ([{"role": "system", "content": "s"}, {"role": "user", "content": "a"}], "no assistant message"),
    "only system": ([{"role": "system", "content": "s"}], "no user or assistant turn"),
    "unanswered last user": (SHORT[:-1], "ends with a user message"),
    "late system": ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "c"}], "only the first message"),
    "unknown role": ([{"role": "robot", "content": "a"}], "role must be one of"),
    "tool result, template without tools": ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "tool result, which this template cannot render"),
    "content not text": ([{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "b"}], "content must be a string"),
    "loss not bool": ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "loss": "no"}], "loss must be true or false"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_conversation_raises_record_error(case: str, tok: Any) -> None:
    messages, message = MALFORMED[case]
    with pytest.raises(RecordError, match=message):
        render_segments(messages, TEMPLATES["internlm2_chat"])
    with pytest.raises(RecordError, match=f"sample 1: .*{message}"):
        encode_batch([{"messages": SHORT}, {"messages": messages}], tok, TEMPLATES["internlm2_chat"], 64)


def test_sample_with_neither_messages_nor_text_is_an_error(tok: Any) -> None:
    with pytest.raises(RecordError, match="needs 'messages'"):
        encode_batch([{"prompt": "x"}], tok, TEMPLATES["internlm2_chat"], 64)


def test_encode_module_does_not_import_torch() -> None:
    code = "import sys, ftcore.data.encode; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_hf_template_exception_becomes_a_record_error(tok: Any) -> None:
    chat_tok = hf_tokenizer(tok, "internlm2_chat")
    chat_tok.chat_template = "{% if messages|length > 2 %}{{ raise_exception('only one turn, please') }}{% endif %}{{ messages[0]['content'] }}"
    with pytest.raises(RecordError, match="only one turn, please"):
        encode_batch([{"messages": SHORT}], chat_tok, TEMPLATES["hf"], 64)
