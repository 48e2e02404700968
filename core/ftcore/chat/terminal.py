"""``ftcore chat`` in the terminal: one answer (``--prompt``) or a multi-turn conversation,
with answers streamed token by token to stdout."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from .generate import ChatModel

RESET_WORDS = ("/reset", "reset")
EXIT_WORDS = ("/exit", "/quit", "exit")
HELP = "Type a message and press Enter. /reset starts a new conversation, /exit (or Ctrl-D) quits."


def _stream(chat: ChatModel, messages: list[dict[str, str]], settings: dict[str, Any], out: TextIO) -> str:
    generation = chat.generation(messages, **settings)
    try:
        for piece in generation:
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        out.write(" [interrupted]")
        raise
    finally:
        out.write("\n")
        out.flush()
    return generation.text


def chat_once(chat: ChatModel, prompt: str, settings: dict[str, Any], out: TextIO = sys.stdout) -> str:
    """Answer ``prompt`` (streamed to ``out``) and return the answer."""
    return _stream(chat, [{"role": "user", "content": prompt.strip()}], settings, out)


def chat_loop(chat: ChatModel, settings: dict[str, Any], stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> None:
    """A conversation until /exit or end of input; /reset forgets the history."""
    interactive = stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    err = sys.stderr
    system = f", system prompt {chat.system!r}" if chat.system else ""
    err.write(f"chatting with {chat.name} (template {chat.template.name}{system}). {HELP}\n")
    err.flush()
    history: list[dict[str, str]] = []
    while True:
        try:
            if interactive:
                line = input(">>> ")
            else:
                out.write(">>> ")
                out.flush()
                line = stdin.readline()
                if not line:
                    out.write("\n")
                    break
                out.write(line if line.endswith("\n") else line + "\n")
        except EOFError:
            out.write("\n")
            break
        except KeyboardInterrupt:
            out.write("\n")
            break
        text = line.strip()
        if not text:
            continue
        if text.lower() in EXIT_WORDS:
            break
        if text.lower() in RESET_WORDS:
            history.clear()
            out.write("(new conversation)\n")
            continue
        if text in ("/help", "/?"):
            out.write(HELP + "\n")
            continue
        messages = history + [{"role": "user", "content": text}]
        try:
            answer = _stream(chat, messages, settings, out)
        except KeyboardInterrupt:
            continue  # the unfinished answer is not kept
        history = messages + [{"role": "assistant", "content": answer}]
    out.flush()
