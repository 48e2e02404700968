"""Hugging Face Hub IDs (``org/name``) as model and data paths: telling one from a local path, and resolving it to a local snapshot.

XTuner's configs name models and datasets as the Hub does (``internlm/internlm2-chat-1_8b``,
``timdettmers/openassistant-guanaco``). A path that does not exist locally and has that shape
is downloaded with ``huggingface_hub.snapshot_download`` (with ``HF_HUB_OFFLINE=1``, taken from
the local hub cache only), and the recipe then holds the snapshot folder, so everything after
validation sees a local folder. A dataset repository whose files name their splits (``train``,
``test``, ...) as ``datasets`` infers them gives its train files to ``data.path`` and its held-out
files to ``data.eval_path``.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import FtcoreError

#: ``org/name`` as the Hub spells repository IDs (one slash; letters, digits, ``-``, ``_``, ``.``).
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: files a model snapshot needs (weights, config, tokenizer, code for --trust-remote-code); not
#: other frameworks' weights or the original (non-transformers) checkpoints some repositories carry
MODEL_FILES = ["*.json", "*.safetensors", "*.bin", "*.model", "*.tiktoken", "*.txt", "*.py", "*.jinja"]
MODEL_SKIP = ["original/*", "*.pth", "*.pt", "*.gguf", "*.onnx", "*.h5", "*.msgpack", "tf_model*", "flax_model*"]
#: the split a file belongs to, from its name's words (the keywords ``datasets`` uses)
SPLIT_WORDS = {"train": ("train", "training"), "eval": ("validation", "valid", "val", "dev", "test", "testing", "eval", "evaluation")}


def is_hub_id(value: object, data_suffixes: tuple[str, ...] = ()) -> bool:
    """True when ``value`` reads as a Hub ID and names no local file or folder; a name ending
    in a data file suffix (``data/train.jsonl``) stays a (missing) local path."""
    if not isinstance(value, str) or not HUB_ID.match(value):
        return False
    if value.lower().endswith(data_suffixes) or Path(value).expanduser().exists():
        return False
    return True


def _snapshot(repo_id: str, repo_type: str) -> Path:
    from huggingface_hub import constants, snapshot_download

    kind = "model" if repo_type == "model" else "dataset"
    try:
        kwargs = {"allow_patterns": MODEL_FILES, "ignore_patterns": MODEL_SKIP} if repo_type == "model" else {}
        return Path(snapshot_download(repo_id, repo_type=repo_type, **kwargs))
    except Exception as exc:  # offline and not cached, no such repository, gated, no network: all say the same to a user
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        offline = constants.HF_HUB_OFFLINE
        where = f"the hub cache {constants.HF_HUB_CACHE} (HF_HUB_OFFLINE=1)" if offline else "the Hugging Face Hub or the hub cache"
        hint = (
            f"download it where there is a network (`hf download {repo_id}{' --repo-type dataset' if kind == 'dataset' else ''}`), then run again; "
            f"or give a local folder" if offline else
            f"check the ID at https://huggingface.co/{'datasets/' if kind == 'dataset' else ''}{repo_id}, log in for a gated one (`hf auth login`), or give a local folder"
        )
        raise FtcoreError(f"{repo_id!r} is no local path, and the {kind} {repo_id} could not be found in {where}: {reason}", hint=hint) from None


def model_folder(repo_id: str) -> str:
    """The local snapshot folder of the Hub model ``repo_id`` (downloaded when not cached and online)."""
    return str(_snapshot(repo_id, "model"))


def _split_of(path: Path, root: Path) -> str | None:
    words = set(re.split(r"[^a-z]+", str(path.relative_to(root)).lower()))
    for split, keys in SPLIT_WORDS.items():
        if words & set(keys):
            return split
    return None


def dataset_files(repo_id: str, split: str, suffixes: tuple[str, ...]) -> list[str]:
    """The data files of the Hub dataset ``repo_id`` for ``split`` (``train`` or ``eval``): the files
    whose names say that split when any name one, else (``train`` only) the whole snapshot folder."""
    root = _snapshot(repo_id, "dataset")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))
    named = {p: _split_of(p, root) for p in files}
    if not any(named.values()):
        if split == "train":
            return [str(root)]
        raise FtcoreError(f"the dataset {repo_id} has no files named for a held-out split (validation, test, eval)", where="data.eval_path",
                          hint="set data.eval_ratio=0.05 to hold out part of it instead")
    chosen = [str(p) for p, s in named.items() if s == split]
    if not chosen:
        raise FtcoreError(f"the dataset {repo_id} has no {split} files ({', '.join(p.name for p in files)})", where=f"data.{'path' if split == 'train' else 'eval_path'}")
    return chosen
