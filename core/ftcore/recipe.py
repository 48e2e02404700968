"""Recipes: the schema, YAML loading with line numbers, ``extends``, ``key=value`` overrides, validation."""

from __future__ import annotations

import copy
import os
import difflib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import FtcoreError, Problem, ValidationError

REQUIRED = object()


@dataclass(frozen=True)
class Field:
    """One recipe key: accepted types, default, help text, and what values are valid.

    Numbers take bounds (``ge``/``gt``/``le``/``lt``, as pydantic names them) and
    ``multiple_of``; strings ``choices``, a ``pattern`` (whole match) or the ``registry``
    whose part they name; lists an ``items`` field for every element and a length range;
    mappings a ``keys`` schema. Validation reports every value outside them.
    """

    types: tuple[type, ...]
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None
    registry: str | None = None
    nullable: bool = True
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    multiple_of: int | None = None
    pattern: str | None = None
    items: "Field | None" = None
    min_len: int | None = None
    max_len: int | None = None
    keys: "dict[str, Field] | None" = None
    #: a file or folder path: checkpoints record it resolved, so they work from any directory
    is_path: bool = False

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def range_text(self) -> str:
        """The valid range in words, e.g. ``>= 0 and < 1``."""
        bounds = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)) if v is not None]
        return " and ".join(bounds)

    def value_problem(self, value: Any) -> str | None:
        """Why ``value`` (already of an accepted type) is not valid here, or None."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value != value or value in (float("inf"), float("-inf")):
                return f"must be a finite number, got {value!r}"
            if (self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt) or \
               (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt):
                return f"must be {self.range_text()}, got {value!r}"
            if self.multiple_of and value % self.multiple_of:
                return f"must be a multiple of {self.multiple_of}, got {value!r}"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}, got {value!r}"
        if self.pattern and isinstance(value, str) and not re.fullmatch(self.pattern, value):
            return f"{value!r} is not valid here"
        if isinstance(value, list):
            if self.min_len is not None and len(value) < self.min_len or self.max_len is not None and len(value) > self.max_len:
                size = f"exactly {self.min_len}" if self.min_len == self.max_len else f"{self.min_len or 0} to {self.max_len if self.max_len is not None else 'any number of'}"
                return f"must have {size} item(s), got {len(value)}"
        return None


def F(types: type | tuple[type, ...], default: Any = None, help: str = "", **kw: Any) -> Field:
    return Field(types if isinstance(types, tuple) else (types,), default, help, **kw)


NUM = (int, float)
STR_OR_LIST = (str, list)
#: a non-empty name or path (an element of a list of them)
NAME = Field((str,), None, "a non-empty name", nullable=False, pattern=r"(?s).*\S.*")

#: The core schema: section -> key -> Field. Builders, strategies and hooks add their own options.
SCHEMA: dict[str, Any] = {
    "name": F(str, None, "recipe name (set from the registry name or file name)"),
    "description": F(str, "", "one line saying what the recipe does"),
    "extends": F(str, None, "a registered recipe name or a YAML file this recipe builds on"),
    "work_dir": F(str, None, "where checkpoints and logs go (default ./work_dirs/<name>)", is_path=True),
    "distributed": F(bool, True, "whether the recipe may run on several processes"),
    "speed": F(str, "auto", "auto: the levers left null (model.gradient_checkpointing, compile, offload_*, fused_lora, fp8_base (never chosen); train.micro_batch) are chosen from the GPU's free memory and the run's shape, and printed at start; manual: null means off (checkpointing on, micro batch 1)", choices=("auto", "manual")),
    "model": {
        "builder": F(str, REQUIRED, "model builder name", registry="models", nullable=False),
        "path": F(str, REQUIRED, "local folder of the base model (a Hugging Face checkpoint), or its Hub ID (org/name)", nullable=False, is_path=True),
        "quantization": F(str, "none", "load the base quantized", choices=("none", "nf4", "fp4", "int8")),
        "double_quant": F(bool, True, "nested quantisation of the NF4 constants"),
        "dtype": F(str, "auto", "weights dtype", choices=("auto", "bf16", "fp16", "fp32")),
        "trust_remote_code": F(bool, False, "run Python code shipped with the checkpoint (off unless you trust it)"),
        "gradient_checkpointing": F(bool, None, "recompute activations in backward to save memory (null: speed auto chooses; on under speed manual)"),
        "offload_activations": F(bool, None, "with gradient checkpointing: keep each layer's input in CPU memory too (very long samples; null: speed auto chooses)"),
        "offload_embeddings": F(bool, None, "keep the frozen input embeddings in CPU memory (adapters; 0.7 GiB less GPU memory on a 7B model; null: speed auto chooses)"),
        "attn_implementation": F(str, "auto", "attention kernel: auto (ftcore_varlen: packed samples attend only to themselves), sdpa, eager, flex_attention, ..."),
        "tokenizer_path": F(str, None, "tokenizer folder if it differs from model.path", is_path=True),
        "adapter": F(str, None, "a trained adapter to continue from (a LoRA checkpoint folder, e.g. the SFT run's before DPO)", is_path=True),
        "chunked_loss": F(bool, True, "compute the loss in chunks on trained tokens only (never the full logits)"),
        "fused_lora": F(bool, None, "add each LoRA product into the base output in place while training (less memory than peft's forward: 0.44 GiB on 7B QLoRA with model.compile; null: speed auto turns it on for adapters)"),
        "fp8_base": F(bool, None, "run the frozen base's matrix products in FP8 (e4m3, one scale per weight row and per token; weights quantized once): faster on GPUs with FP8 tensor cores (compute capability 8.9+), results differ from bf16 by about FP8's rounding; adapters only; null: off"),
        "mlp_chunk_tokens": F(int, None, "run each decoder layer's MLP over this many tokens at a time, each slice checkpointed (very long samples: the MLP's wide intermediates never exist for the whole sample; its forward runs once more in backward); 0: off; null: speed auto sets it only where a sample does not fit otherwise", ge=0),
        "compile_memory_budget": F(float, None, "with model.compile: the share of the compiled layers' saved activations to keep; below 1 the compiler recomputes cheap elementwise results in backward instead (0.9 keeps 16% fewer bytes per token: the SwiGLU product and a norm output); null: speed auto lowers it to 0.9 only where that lets steps run without gradient checkpointing or at a larger micro batch, 1 otherwise", gt=0, le=1),
        "compile": F(bool, None, "torch.compile each decoder layer (fuses norms, RoPE, SwiGLU, LoRA and casts; the first steps compile; null: speed auto turns it on for runs long enough to repay it)"),
    },
    "adapter": {
        "kind": F(str, "lora", "adapter kind: lora, qlora (4-bit base + LoRA), dora, full, or one a plugin adds (`ftcore list adapters`)", registry="adapters"),
        "r": F(int, 64, "LoRA rank", ge=1),
        "alpha": F(float, 16, "LoRA alpha", gt=0),
        "dropout": F(float, 0.1, "LoRA dropout (a probability)", ge=0, lt=1),
        "targets": F(STR_OR_LIST, "all-linear", "'all-linear' (never the LM head) or module names", items=NAME, min_len=1, pattern=NAME.pattern),
        "modules_to_save": F(list, None, "modules trained fully next to the adapter", items=NAME),
        "bias": F(str, "none", "train biases", choices=("none", "all", "lora_only")),
    },
    "data": {
        "path": F(STR_OR_LIST, REQUIRED, "training file(s) or folder(s): json, jsonl, csv, tsv, parquet, xlsx, txt/md (plain text, for pretrain) or a save_to_disk folder; or a Hub dataset ID (org/name)", nullable=False, items=NAME, min_len=1, pattern=NAME.pattern, is_path=True),
        "format": F(str, "auto", "dataset format name, or auto to detect it", registry="formats"),
        "template": F(str, None, "chat template name (none for pretrain data)", registry="templates"),
        "system": F(str, None, "system prompt added to every sample that has none, or the name of a preset (alpaca, medical, ...: `ftcore data --help`)"),
        "sheet": F((str, int), None, "the sheet of an .xlsx workbook to read: its name, or its index from 0 (default: the first)", ge=0, pattern=NAME.pattern),
        "text_split": F(str, "paragraph", "plain text (.txt, .md): a document per paragraph (split on blank lines) or per file", choices=("paragraph", "file")),
        "chunk_overlap": F(int, 0, "text longer than max_length is cut into chunks of max_length: tokens each chunk repeats from the one before, as untrained context", ge=0),
        "max_length": F(int, 2048, "tokens per sample (and per packed row)", ge=2),
        "pack": F(bool, True, "pack samples into rows of max_length; attention stays inside each sample"),
        "shuffle": F(bool, True, "shuffle samples (before packing)"),
        "max_samples": F(int, None, "use at most this many records", ge=1),
        "on_error": F(str, "raise", "what to do with a bad record", choices=("raise", "skip")),
        "cache": F(bool, True, "cache processed data on disk"),
        "cache_dir": F(str, None, "where processed data is cached (default ~/.cache/ftcore/data)", is_path=True),
        "eval_path": F(STR_OR_LIST, None, "held-out file(s) for the eval loss, in any supported format", items=NAME, min_len=1, pattern=NAME.pattern, is_path=True),
        "eval_ratio": F(float, 0.0, "or: this share of the training records, held out for the eval loss (a fixed split)", ge=0, lt=1),
    },
    "train": {
        "eval_every": F(int, 0, "compute the eval loss every N optimizer steps (0: at the end only)", ge=0),
        "keep_best": F(str, None, "keep the checkpoint with the lowest eval loss beside the last ones", choices=("eval_loss",)),
        "epochs": F(NUM, 1, "passes over the data (ignored when max_steps is set)", gt=0),
        "max_steps": F(int, None, "optimizer steps to run", ge=1),
        "lr": F(float, 2e-4, "peak learning rate", gt=0),
        "schedule": F(str, "cosine", "learning-rate schedule after warmup: cosine, linear, constant, ... (`ftcore list schedules`)", registry="schedules"),
        "warmup_ratio": F(float, 0.03, "fraction of steps spent warming up", ge=0, le=1),
        "min_lr_ratio": F(float, 0.0, "final learning rate as a fraction of lr", ge=0, le=1),
        "micro_batch": F(int, None, "rows per forward pass per process (null: speed auto chooses one that keeps micro_batch x grad_accum rows a step; 1 under speed manual)", ge=1),
        "grad_accum": F(int, 16, "micro batches per optimizer step", ge=1),
        "max_grad_norm": F(float, 1.0, "gradient clipping norm (0 disables)", ge=0),
        "sequence_parallel": F(int, 1, "processes that share each row's tokens (DeepSpeed-Ulysses all-to-all over attention heads; flat rows, varlen attention)", ge=1),
        "weight_decay": F(float, 0.0, "AdamW weight decay", ge=0, le=1),
        "betas": F(list, [0.9, 0.999], "AdamW betas [beta1, beta2], each >= 0 and < 1", items=F(float, None, "an AdamW beta", nullable=False, ge=0, lt=1), min_len=2, max_len=2),
        "optimizer": F(str, "adamw", "optimizer: adamw, adamw_8bit, paged_adamw_8bit, paged_adamw_32bit, ... (`ftcore list optimizers`)", registry="optimizers"),
        "precision": F(str, "auto", "auto (bf16 on GPUs that have it, fp16 otherwise, fp32 on CPU)", choices=("auto", "bf16", "fp16", "fp32")),
        "seed": F(int, 42, "random seed for data order, dropout and initialisation", ge=0, lt=2**32),
        "save_every": F(int, 500, "save a checkpoint every N optimizer steps (0: only at the end)", ge=0),
        "save_total_limit": F(int, 2, "keep this many checkpoints (0 keeps all)", ge=0),
        "log_every": F(int, 1, "log every N optimizer steps", ge=1),
        "device": F(str, "auto", "auto, cpu, cuda or cuda:N", pattern=r"auto|cpu|cuda(:\d+)?"),
    },
    "objective": {
        "name": F(str, "sft", "what training optimises: sft, or an objective a plugin adds (`ftcore list objectives`)", registry="objectives"),
    },
    "strategy": {
        "name": F(str, "single", "how the run is spread over devices", registry="strategies"),
    },
    "hooks": F(list, [], "training hooks: names or {name: ..., option: value}"),
}

SECTIONS = [k for k, v in SCHEMA.items() if isinstance(v, dict)]

#: Sections that also take the options of the part they name: section -> (registry, key naming the part).
PART_OPTIONS = {"model": ("models", "builder"), "adapter": ("adapters", "kind"), "strategy": ("strategies", "name"), "objective": ("objectives", "name")}

#: Keys the core once owned that a part now takes as an option: a null value (as recipes saved by
#: older versions hold) is dropped when the chosen part does not take the key.
RETIRED = {"strategy": ("config",)}


@dataclass
class Recipe:
    """A resolved recipe: plain nested data plus where each key came from."""

    data: dict[str, Any]
    source: str
    lines: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.data["name"]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.data
        for piece in dotted.split("."):
            if not isinstance(node, dict) or piece not in node:
                return default
            node = node[piece]
        return node

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.data, sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------- loading


def _line_map(node: yaml.Node, filename: str, prefix: str = "", out: dict[str, str] | None = None) -> dict[str, str]:
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            out[path] = f"{filename}:{key_node.start_mark.line + 1}"
            _line_map(value_node, filename, path, out)
    return out


def parse_yaml(text: str, filename: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Parse recipe YAML safely, returning the data and a key-path -> ``file:line`` map."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}" if mark else filename
        raise FtcoreError(f"not valid YAML: {getattr(exc, 'problem', exc)}", where=where) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FtcoreError("a recipe must be a YAML mapping of keys to values", where=filename)
    return data, (_line_map(node, filename) if node is not None else {})


def read_source(source: str) -> tuple[str, str]:
    """Text and display name of a recipe source: a file path or ``package:resource``."""
    path = Path(source)
    if path.is_file():
        return path.read_text(encoding="utf-8"), str(path)
    if ":" in source and not path.exists():
        package, _, resource = source.partition(":")
        try:
            return resources.files(package).joinpath(resource).read_text(encoding="utf-8"), source
        except (ModuleNotFoundError, FileNotFoundError) as exc:
            raise FtcoreError(f"recipe resource {source!r} cannot be read: {exc}") from None
    raise FtcoreError(f"recipe file {source!r} does not exist")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_chain(ref: str, recipes: Any, chain: list[str]) -> tuple[dict[str, Any], dict[str, str], str]:
    if ref in chain:
        raise FtcoreError(f"recipes extend each other in a loop: {' -> '.join(chain + [ref])}")
    is_file = Path(ref).suffix in (".yaml", ".yml") or Path(ref).is_file()
    if is_file:
        text, shown = read_source(ref)
        name = Path(ref).stem
    elif recipes is not None and ref in recipes:
        text, shown = read_source(recipes.part(ref).target)
        name = ref
    else:
        msg = f"no recipe or file called {ref!r}"
        if recipes is not None:
            msg = recipes.unknown_message(ref)
        raise FtcoreError(msg, hint="give a registered recipe name or a path to a .yaml file")
    data, lines = parse_yaml(text, shown)
    parent = data.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise FtcoreError("extends must be a recipe name or a file path", where=lines.get("extends", shown))
        base_ref = str(Path(shown).parent / parent) if is_file and (Path(shown).parent / parent).is_file() else parent
        base, base_lines, _ = _load_chain(base_ref, recipes, chain + [ref])
        own_name = data.get("name")
        data = deep_merge(base, data)
        data["name"] = own_name or name
        lines = {**base_lines, **lines}
    data.setdefault("name", name)
    return data, lines, shown


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> (``"a.b"``, typed value); the value is parsed as YAML (numbers, bools, lists)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise FtcoreError(f"override {text!r} is not key=value", hint="e.g. train.lr=1e-4 data.pack=false")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string; users mean a number
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return key, value


def apply_overrides(data: dict[str, Any], lines: dict[str, str], overrides: Iterable[str]) -> None:
    for text in overrides:
        key, value = parse_override(text)
        node = data
        parts = key.split(".")
        for piece in parts[:-1]:
            if not isinstance(node.get(piece), dict):
                node[piece] = {}
            node = node[piece]
        node[parts[-1]] = value
        lines[key] = f"override {text!r}"


def load_recipe(ref: str, parts: Any = None, overrides: Iterable[str] = (), work_dir: str | None = None, check_paths: bool = False) -> Recipe:
    """Load, merge (``extends``), override and validate a recipe; raise with every problem found.

    ``check_paths`` also requires the model folder and data files to exist (for ``run``).
    """
    recipes = parts.recipes if parts is not None else None
    data, lines, shown = _load_chain(ref, recipes, [])
    apply_overrides(data, lines, overrides)
    if work_dir:
        data["work_dir"] = work_dir
        lines["work_dir"] = "--work-dir"
    recipe = Recipe(data, shown, lines)
    validate(recipe, parts, check_paths=check_paths)
    return recipe


# --------------------------------------------------------------------------- validation


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list", dict: "a mapping"}
    if types == NUM:
        return "a number"
    return " or ".join(names.get(t, t.__name__) for t in types)


def _coerce(value: Any, spec: Field) -> tuple[Any, str | None]:
    if value is None:
        return (None, None) if spec.nullable and not spec.required else (None, "must be set")
    if isinstance(value, bool) and bool not in spec.types:
        return value, f"must be {_type_name(spec.types)}, got {value!r}"
    if isinstance(value, spec.types):
        return value, None
    if float in spec.types and isinstance(value, (int, str)):  # YAML 1.1 reads 1e-4 as a string
        try:
            return float(value), None
        except ValueError:
            pass
    return value, f"must be {_type_name(spec.types)}, got {type(value).__name__} {value!r}"


class _Checker:
    def __init__(self, recipe: Recipe, parts: Any, check_paths: bool) -> None:
        self.recipe = recipe
        self.parts = parts
        self.check_paths = check_paths
        self.problems: list[Problem] = []

    def problem(self, path: str, message: str, hint: str | None = None) -> None:
        loc, key = None, path
        while loc is None and key:
            loc = self.recipe.lines.get(key)
            key = re.split(r"[.\[][^.\[]*$", key)[0] if ("." in key or "[" in key) else ""
        loc = loc or self.recipe.source
        self.problems.append(Problem(path, message, loc, hint))

    def unknown(self, path: str, key: str, known: Iterable[str]) -> None:
        known = list(known)
        close = difflib.get_close_matches(key, known, n=1) or [k for k in known if key.startswith(k) or k.startswith(key)][:1]
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(sorted(known))}"
        self.problem(path, "unknown key", hint)

    def check_mapping(self, node: dict[str, Any], schema: dict[str, Field], prefix: str, allowed: Iterable[str] = ()) -> None:
        for key in list(node):
            if key not in schema and key not in allowed:
                self.unknown(f"{prefix}{key}", str(key), [*schema, *allowed])
        for key, spec in schema.items():
            path = f"{prefix}{key}"
            if key not in node or node[key] is None:
                if spec.required:
                    self.problem(path, "is required", spec.help)
                    continue
                node[key] = copy.deepcopy(spec.default)
                if node[key] is None:
                    continue
            node[key] = self.check_value(path, node[key], spec)

    def check_value(self, path: str, value: Any, spec: Field) -> Any:
        """``value`` coerced to ``spec``'s type; every way it breaks ``spec`` becomes a problem."""
        value, err = _coerce(value, spec)
        if err:
            self.problem(path, err, spec.help)
            return value
        err = spec.value_problem(value)
        if err:
            self.problem(path, err, spec.help)
        if isinstance(value, list) and spec.items is not None:
            value = [self.check_value(f"{path}[{i}]", item, spec.items) for i, item in enumerate(value)]
        if isinstance(value, dict) and spec.keys is not None:
            self.check_mapping(value, spec.keys, f"{path}.")
        if spec.registry and self.parts is not None and isinstance(value, str) and not (spec.registry == "formats" and value == "auto"):
            registry = self.parts.kind(spec.registry)
            if value not in registry:
                self.problem(path, registry.unknown_message(value))
        return value

    def options_of(self, kind: str, name: Any, section: str | None = None) -> dict[str, Field]:
        """The options of the part ``name`` of ``kind`` (derived from its signature; none if unknown)."""
        if self.parts is None or not isinstance(name, str) or name not in self.parts.kind(kind):
            return {}
        part = self.parts.kind(kind).part(name)
        options = part.options
        core = set(SCHEMA[section]) if section else {"name"}
        clash = sorted(core & set(options))
        if clash:
            raise FtcoreError(
                f"{self.parts.kind(kind).label} {name!r} (plugin {part.owner}) has option(s) named like the core's own keys: {', '.join(clash)}",
                hint="rename the option(s) in the plugin",
            )
        return options

    def run(self) -> None:
        data = self.recipe.data
        top = {k: v for k, v in SCHEMA.items() if not isinstance(v, dict)}
        for section in SECTIONS:
            node = data.get(section)
            if node is None:
                node = data[section] = {}
            if not isinstance(node, dict):
                self.problem(section, f"must be a mapping of keys, got {type(node).__name__}")
                continue
            schema = dict(SCHEMA[section])
            if section in PART_OPTIONS:  # the chosen builder's / strategy's own options
                kind, key = PART_OPTIONS[section]
                schema.update(self.options_of(kind, node.get(key), section))
            for key in RETIRED.get(section, ()):
                if key not in schema and key in node and node[key] is None:
                    del node[key]
            self.check_mapping(node, schema, f"{section}.")
        self.check_mapping(data, top, "", allowed=SECTIONS)
        if not data.get("work_dir"):
            data["work_dir"] = f"./work_dirs/{data.get('name') or 'run'}"
        self.interpolate(data)
        self.check_data(data["data"])
        self.check_hooks(data.get("hooks"))
        self.check_consistency(data)
        self.check_eval(data)
        if self.check_paths and not self.problems:
            self.check_existing_paths(data)

    def interpolate(self, data: dict[str, Any]) -> None:
        """``${work_dir}`` inside model/data strings and hook options becomes the run's work_dir."""

        def fill(value: Any) -> Any:
            if isinstance(value, str):
                return value.replace("${work_dir}", data["work_dir"])
            if isinstance(value, list):
                return [fill(v) for v in value]
            if isinstance(value, dict):
                return {k: fill(v) for k, v in value.items()}
            return value

        for section in ("model", "data"):
            for key, value in data[section].items():
                data[section][key] = fill(value)
        if isinstance(data.get("hooks"), list):
            data["hooks"] = [{k: fill(v) if k != "name" else v for k, v in entry.items()} if isinstance(entry, dict) else entry for entry in data["hooks"]]

    def resolve_hub_ids(self, data: dict[str, Any], created: set[str]) -> set[str]:
        """Hub IDs (``org/name``) in model and data paths become local snapshot folders (:mod:`ftcore.hub`);
        returns the keys whose ID could not be resolved (already reported)."""
        from .data.files import BY_SUFFIX
        from .hub import dataset_files, is_hub_id, model_folder

        suffixes, failed = tuple(BY_SUFFIX), set()
        wanted = [("model", "path", model_folder), ("model", "tokenizer_path", model_folder),
                  ("data", "path", lambda v: dataset_files(v, "train", suffixes)), ("data", "eval_path", lambda v: dataset_files(v, "eval", suffixes))]
        for section, key, resolve in wanted:
            value = data[section].get(key)
            if f"{section}.{key}" in created or not value:
                continue
            values = value if isinstance(value, list) else [value]
            if not any(is_hub_id(v, suffixes) for v in values):
                continue
            try:
                local = [r for v in values for r in (resolve(v) if is_hub_id(v, suffixes) else [v])] if section == "data" else resolve(value)
            except FtcoreError as exc:
                self.problem(f"{section}.{key}", exc.message, exc.hint)
                failed.add(f"{section}.{key}")
                continue
            data[section][key] = local[0] if isinstance(local, list) and len(local) == 1 else local
        return failed

    def check_existing_paths(self, data: dict[str, Any]) -> None:
        created = created_by_hooks(data, self.parts) if self.parts is not None else set()
        created |= self.resolve_hub_ids(data, created)
        model_path = data["model"]["path"]
        if "model.path" not in created and not (Path(model_path).expanduser() / "config.json").is_file():
            self.problem(
                "model.path",
                f"{model_path!r} is not a model folder (no config.json there)",
                "download the base model to that folder (e.g. `hf download ORG/NAME --local-dir FOLDER`, or `modelscope download`) or set model.path=FOLDER",
            )
        start = data["model"].get("adapter")
        if start and not (Path(start).expanduser() / "adapter_config.json").is_file():
            self.problem("model.adapter", f"{start!r} is not an adapter checkpoint (no adapter_config.json there)", "give a checkpoint folder of a LoRA/QLoRA run (work_dir/checkpoint-N)")
        if "data.path" not in created:
            paths = data["data"]["path"] if isinstance(data["data"]["path"], list) else [data["data"]["path"]]
            for p in paths:
                if not Path(str(p)).expanduser().exists():
                    self.problem("data.path", f"{p!r} does not exist", "set data.path=FILE (json, jsonl, csv, tsv, parquet, xlsx, txt, md) or make one with `ftcore data convert` / `ftcore data self-cognition`")

    def check_data(self, dataset: dict[str, Any]) -> None:
        """A chunk overlap shorter than a chunk; a system preset's name becomes its text."""
        overlap, max_length = dataset.get("chunk_overlap"), dataset.get("max_length")
        if isinstance(overlap, int) and isinstance(max_length, int) and overlap >= max_length:
            self.problem("data.chunk_overlap", f"must be less than data.max_length ({max_length}), got {overlap}")
        if isinstance(dataset.get("system"), str):
            from .data.systems import system_text

            dataset["system"] = system_text(dataset["system"])

    def check_hooks(self, hooks: Any) -> None:
        if not isinstance(hooks, list):
            return
        for i, entry in enumerate(hooks):
            path = f"hooks[{i}]"
            if isinstance(entry, str):
                entry = hooks[i] = {"name": entry}
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                self.problem(path, "must be a hook name or a mapping with a 'name' key")
                continue
            if self.parts is None:
                continue
            if entry["name"] not in self.parts.hooks:
                self.problem(f"{path}.name", self.parts.hooks.unknown_message(entry["name"]))
                continue
            options = self.options_of("hooks", entry["name"])
            self.check_mapping(entry, {"name": F(str, REQUIRED), **options}, f"{path}.")

    def check_eval(self, data: dict[str, Any]) -> None:
        """Held-out data comes one way, and what uses it needs it."""
        dataset, train = data["data"], data["train"]
        if dataset.get("eval_path") and dataset.get("eval_ratio"):
            self.problem("data.eval_ratio", "give held-out data as data.eval_path or as data.eval_ratio, not both")
        evaluates = bool(dataset.get("eval_path") or dataset.get("eval_ratio"))
        for key in ("eval_every", "keep_best"):
            if train.get(key) and not evaluates:
                self.problem(f"train.{key}", "needs held-out data", "set data.eval_path=FILE or data.eval_ratio=0.05")

    def check_consistency(self, data: dict[str, Any]) -> None:
        """What the adapter kind implies: a quantized base (nf4 unless the recipe says which), or
        every base weight trained (no quantized base); under ``speed: manual`` the levers left null
        take their manual values (``speed: auto`` chooses them when the model has loaded)."""
        if data.get("speed") == "manual":
            from .models.speed import MANUAL

            for key, value in MANUAL.items():
                if data["model"].get(key) is None:
                    data["model"][key] = value
            if data["train"].get("micro_batch") is None:
                data["train"]["micro_batch"] = 1
        model, kind = data["model"], adapter_kind(data["adapter"].get("kind"), self.parts)
        if kind is None:
            return
        if kind.quantized_base and model.get("quantization") in (None, "none"):
            model["quantization"] = "nf4"
        if kind.trains_base and model.get("quantization") not in (None, "none"):
            self.problem("model.quantization", f"a quantized base cannot be fully fine-tuned (adapter.kind {data['adapter']['kind']})", "use adapter.kind: qlora or lora")
        if kind.trains_base and model.get("fp8_base"):
            self.problem("model.fp8_base", f"the FP8 base is for a frozen base, but adapter.kind {data['adapter']['kind']} trains every weight", "drop model.fp8_base, or train an adapter (lora, qlora)")


def adapter_kind(name: Any, parts: Any) -> Any:
    """The adapter kind class called ``name`` (the core's own when there are no parts), or None."""
    if parts is not None:
        return parts.adapters.get(name) if isinstance(name, str) and name in parts.adapters else None
    from .models.adapters import ADAPTERS

    return ADAPTERS.get(name) if isinstance(name, str) else None


def with_resolved_paths(recipe: Recipe, parts: Any) -> Recipe:
    """A copy of ``recipe`` whose path keys (``Field.is_path``) are absolute, as checkpoints record it."""
    data = copy.deepcopy(recipe.data)

    def resolve(value: Any) -> Any:
        if isinstance(value, list):
            return [resolve(v) for v in value]
        # absolute, with symlinks kept: a hub snapshot links to suffix-less blobs, and a file is read by its suffix
        return os.path.abspath(os.path.expanduser(value)) if isinstance(value, str) and value else value

    for key, spec in SCHEMA.items():
        if isinstance(spec, Field) and spec.is_path and data.get(key):
            data[key] = resolve(data[key])
    for section in SECTIONS:
        schema = dict(SCHEMA[section])
        if section in PART_OPTIONS and parts is not None:
            kind, name_key = PART_OPTIONS[section]
            registry = parts.kind(kind)
            if data[section].get(name_key) in registry:
                schema.update(registry.part(data[section][name_key]).options)
        for key, spec in schema.items():
            if spec.is_path and data[section].get(key):
                data[section][key] = resolve(data[section][key])
    return Recipe(data, recipe.source, dict(recipe.lines))


def created_by_hooks(data: dict[str, Any], parts: Any) -> set[str]:
    """The recipe keys (e.g. ``data.path``) whose files a hook of the recipe creates when the run starts."""
    created: set[str] = set()
    for entry in data["hooks"]:
        created.update(parts.hooks.get(entry["name"]).creates)
    return created


def validate(recipe: Recipe, parts: Any = None, check_paths: bool = False) -> None:
    """Check types, required keys, unknown keys and part references; fill in defaults.

    Raises a ``ValidationError`` listing *every* problem found, each with its key path
    and ``file:line``.
    """
    checker = _Checker(recipe, parts, check_paths)
    checker.run()
    if checker.problems:
        raise ValidationError(problems=checker.problems, source=f"recipe {recipe.source}")
