"""``ftcore chat`` in the terminal: one answer (``--prompt``) or a multi-turn conversation,
with answers streamed token by token to stdout. With a model that takes images, the
conversation is about one image (``--image``; ``/image PATH`` starts one about another)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

from ..errors import FtcoreError
from .generate import ChatModel, Sampling

RESET_WORDS = ("/reset", "reset")
EXIT_WORDS = ("/exit", "/quit", "exit")
HELP = "Type a message and press Enter. /reset starts a new conversation, /exit (or Ctrl-D) quits."
IMAGE_HELP = " /image PATH starts a conversation about another image."


def read_image(path: str | Path) -> bytes:
    """The bytes of an image file for a message's ``images``, or a clear error."""
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise FtcoreError(f"cannot read image {str(path)!r}: {exc.strerror or exc}") from None


def user_message(text: str, image: bytes | None = None) -> dict[str, Any]:
    """A user turn; ``image`` (bytes) goes with it as its ``images``."""
    return {"role": "user", "content": text, **({"images": [image]} if image is not None else {})}


def _stream(chat: ChatModel, messages: list[dict[str, Any]], sampling: Sampling, out: TextIO) -> str:
    generation = chat.generation(messages, sampling)
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


def chat_once(chat: ChatModel, prompt: str, sampling: Sampling, out: TextIO | None = None, image: bytes | None = None) -> str:
    """Answer ``prompt`` (about ``image``, when given) streamed to ``out`` (stdout), and return the answer."""
    return _stream(chat, [user_message(prompt.strip(), image)], sampling, out or sys.stdout)


def chat_loop(chat: ChatModel, sampling: Sampling, stdin: TextIO | None = None, out: TextIO | None = None, image: bytes | None = None) -> None:
    """A conversation until /exit or end of input; /reset forgets the history. The first
    message carries ``image``; with a model that takes images, /image PATH switches to another."""
    stdin, out = stdin or sys.stdin, out or sys.stdout
    interactive = stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    err = sys.stderr
    system = f", system prompt {chat.system!r}" if chat.system else ""
    err.write(f"chatting with {chat.name} (template {chat.template.name}{system}). {HELP}{IMAGE_HELP if chat.accepts_images else ''}\n")
    err.flush()
    history: list[dict[str, Any]] = []
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
            out.write(HELP + (IMAGE_HELP if chat.accepts_images else "") + "\n")
            continue
        if chat.accepts_images and text.startswith("/image "):
            try:
                image = read_image(text.split(None, 1)[1].strip())
            except FtcoreError as exc:
                out.write(f"{exc}\n")
                continue
            history.clear()
            out.write("(new conversation about that image)\n")
            continue
        messages = history + [user_message(text, image if not history else None)]
        try:
            answer = _stream(chat, messages, sampling, out)
        except KeyboardInterrupt:
            continue  # the unfinished answer is not kept
        history = messages + [{"role": "assistant", "content": answer}]
    out.flush()
