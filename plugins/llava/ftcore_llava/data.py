"""LLaVA data: the ``llava`` dataset format, image paths and image loading (pad to square, CLIP processor).

A LLaVA record is ``{"id", "image"?, "conversations": [{"from": "human"|"gpt"|"system",
"value"}]}``. The format maps it to ``{"messages": [...], "image": path}`` with the
``<image>`` placeholder moved to the front of the human turn that carried it (the first
human turn when none did); records without ``image`` are text-only samples.

Image paths in records are relative to the run's image folder (``model.image_folder``).
The format checks that each image exists and can be decoded, so that a bad record is
reported (or, with ``data.on_error: skip``, skipped and counted) before training starts,
like any other malformed record. Formats see one record and no recipe, so the folder
reaches the format through :func:`use_image_folder`, which the ``llava`` builder calls
when a run is assembled (before the data is prepared). Without it (e.g. ``ftcore data
check --format llava``) relative paths are resolved against the current directory.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

from ftcore.api import DatasetFormat, FtcoreError, RecordError, require

IMAGE_TOKEN = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

_IMAGE_FOLDER: contextvars.ContextVar[Path | None] = contextvars.ContextVar("ftcore_llava_image_folder", default=None)
_TAG = re.compile(r"\s*<image>\s*")


def use_image_folder(folder: str | Path | None) -> contextvars.Token:
    """Resolve relative image paths of records against ``folder`` from now on (in this context)."""
    return _IMAGE_FOLDER.set(Path(folder).expanduser() if folder else None)


@contextlib.contextmanager
def image_folder(folder: str | Path | None) -> Iterator[None]:
    """``with image_folder(path): ...`` -- :func:`use_image_folder` for a block."""
    token = use_image_folder(folder)
    try:
        yield
    finally:
        _IMAGE_FOLDER.reset(token)


def resolve_image(path: str, folder: str | Path | None = None) -> Path:
    """An image path from a record: absolute as given, else under ``folder`` (or the current one)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    base = Path(folder).expanduser() if folder else _IMAGE_FOLDER.get()
    return (base / p) if base is not None else p


def _check_image(path: Path, shown: str, record_id: Any) -> None:
    from PIL import Image, UnidentifiedImageError

    who = f"record {record_id!r}" if record_id is not None else "this record"
    if not path.is_file():
        raise RecordError(f"image {shown!r} of {who} does not exist (looked for {path})", "image")
    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise RecordError(f"image {shown!r} of {who} cannot be read ({path}): {exc}", "image") from None


def convert(record: dict[str, Any]) -> dict[str, Any]:
    """A LLaVA record as ftcore messages plus ``image`` (the path as written in the record)."""
    record_id = record.get("id")
    turns = require(record, "conversations", list)
    if not turns:
        raise RecordError("field 'conversations' is an empty list", "conversations")
    messages: list[dict[str, Any]] = []
    tagged: int | None = None
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise RecordError(f"{where} must be an object with from and value", where)
        role = ROLES.get(turn.get("from"))  # type: ignore[arg-type]
        if role is None:
            raise RecordError(f"field '{where}.from' is {turn.get('from')!r}; expected human, gpt or system", f"{where}.from")
        value = turn.get("value")
        if not isinstance(value, str):
            raise RecordError(f"field '{where}.value' must be a string", f"{where}.value")
        if IMAGE_TOKEN in value:
            if role != "user":
                raise RecordError(f"{where} is a {turn['from']} turn with {IMAGE_TOKEN}; only human turns may carry the image", where)
            tagged = len(messages) if tagged is None else tagged
            value = _TAG.sub(" ", value).strip()
        messages.append({"role": role, "content": value})
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError("field 'conversations' has no gpt turn, so there is nothing to train on", "conversations")
    image = record.get("image")
    out: dict[str, Any] = {"messages": messages}
    if image is None or image == "":
        if tagged is not None:
            raise RecordError(f"the conversation has {IMAGE_TOKEN} but the record has no image", "image")
    else:
        if not isinstance(image, str):
            raise RecordError(f"field 'image' must be a path (string), got {type(image).__name__}", "image")
        _check_image(resolve_image(image), image, record_id)
        if tagged is None:
            tagged = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
            if tagged is None:
                raise RecordError("the record has an image but no human turn to put it in", "conversations")
        messages[tagged]["content"] = f"{IMAGE_TOKEN}\n{messages[tagged]['content']}"
        out["image"] = image
    if record_id is not None:
        out["id"] = record_id
    return out


def detect(record: dict[str, Any]) -> bool:
    return isinstance(record.get("conversations"), list) and "image" in record


FORMAT = DatasetFormat("llava", convert, detect, "LLaVA: {id, image?, conversations: [{from: human|gpt, value}]}; <image> moved to the front of its turn")


# --------------------------------------------------------------------------- images


def expand_to_square(image: Any, background: Sequence[int]) -> Any:
    """``image`` centred on a square canvas of ``background`` colour (LLaVA's pad-to-square)."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), tuple(background))
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def load_image_processor(visual_encoder_path: str | Path) -> Any:
    """The CLIP image processor saved with the vision tower (``preprocessor_config.json``)."""
    import logging

    from transformers import AutoImageProcessor

    path = Path(visual_encoder_path)
    if not (path / "preprocessor_config.json").is_file():
        raise FtcoreError(
            f"vision tower folder {str(path)!r} has no preprocessor_config.json (the CLIP image processor)",
            where="model.visual_encoder",
            hint="use a full CLIP checkpoint folder, e.g. one downloaded from openai/clip-vit-large-patch14-336",
        )
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "falling back to the PIL backend" when torchvision is absent
    try:
        return AutoImageProcessor.from_pretrained(str(path))
    finally:
        logger.setLevel(level)


def pixel_values(paths: Sequence[str | Path], processor: Any, pad_to_square: bool = True) -> Any:
    """Images read from ``paths`` as a ``[n, 3, H, W]`` float tensor for the vision tower."""
    from PIL import Image

    images = []
    for p in paths:
        try:
            with Image.open(p) as img:
                image = img.convert("RGB")
        except (OSError, ValueError) as exc:
            raise FtcoreError(f"image {str(p)!r} cannot be read: {exc}", hint="check model.image_folder, or fix or remove the record") from None
        if pad_to_square:
            image = expand_to_square(image, [int(x * 255) for x in processor.image_mean])
        images.append(image)
    return processor(images=images, return_tensors="pt")["pixel_values"]
