"""The registries of every part kind, filled by calling each plugin's register hooks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .plugins import PluginManager, describe_exception, one_line, trace
from .registry import Part, Registry

#: What one part of each kind is called in messages.
LABELS = {
    "recipes": "recipe", "formats": "dataset format", "templates": "template", "models": "model builder", "adapters": "adapter kind",
    "strategies": "strategy", "hooks": "training hook", "objectives": "objective", "optimizers": "optimizer", "schedules": "learning-rate schedule",
}

#: CLI names of the part kinds, in display order, with the hook that fills each.
KINDS: dict[str, str] = {
    "recipes": "register_recipes",
    "formats": "register_dataset_formats",
    "templates": "register_prompt_templates",
    "models": "register_model_builders",
    "adapters": "register_adapters",
    "strategies": "register_strategies",
    "hooks": "register_training_hooks",
    "objectives": "register_objectives",
    "optimizers": "register_optimizers",
    "schedules": "register_schedules",
}


@dataclass
class Parts:
    """Every registered part, one registry per kind."""

    recipes: Registry
    formats: Registry
    templates: Registry
    models: Registry
    adapters: Registry
    strategies: Registry
    hooks: Registry
    objectives: Registry
    optimizers: Registry
    schedules: Registry

    def kind(self, name: str) -> Registry:
        return getattr(self, name)


def yaml_files(package: str) -> list[Path]:
    """The YAML data files shipped inside ``package``, sorted (for plugins registering recipes or templates)."""
    from importlib import resources

    return sorted(Path(str(p)) for p in resources.files(package).iterdir() if p.name.endswith(".yaml"))


@dataclass
class _Staging:
    """One plugin's registrations of one kind, held back until the whole plugin is known to be sound."""

    owner: str
    kind: str
    parts: list[Part] = field(default_factory=list)
    #: every name the plugin tried to register, valid or not (for "plugin P would provide it").
    tried: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, name: Any, target: Any, description: Any = "") -> None:
        if isinstance(name, str) and name:
            self.tried.append(name)
        self.parts.append(Part(name, target, self.owner, description, self.kind))

    def invalid(self, name: Any, problem: str) -> None:
        if isinstance(name, str) and name:
            self.tried.append(name)
        self.problems.append(problem)


def _named_registrar(stage: _Staging) -> Callable[..., None]:
    def register(name: str, target: Any, description: str = "") -> None:
        stage.add(name, target, description)

    return register


def _recipe_description(source: str) -> str:
    import yaml

    from .recipe import read_source

    try:
        data = yaml.safe_load(read_source(source)[0])
    except Exception:  # listing must not fail on a recipe that validation will report later
        return ""
    return str(data.get("description", "")) if isinstance(data, dict) else ""


def _recipe_registrar(stage: _Staging) -> Callable[..., None]:
    def register(name: str, source: str | Path, description: str = "") -> None:
        if not isinstance(source, (str, Path)):
            stage.invalid(name, f"registered recipe {name!r} with a source that is not a path: {source!r:.80}")
            return
        if not description:
            description = _recipe_description(str(source))
        stage.add(name, str(source), description)

    return register


def _template_registrar(stage: _Staging) -> Callable[..., None]:
    def register(obj: Any) -> None:
        from .data.template import PromptTemplate

        if isinstance(obj, (str, Path)):
            try:
                obj = PromptTemplate.from_file(Path(obj))
            except Exception as exc:  # noqa: BLE001 - reported as this plugin's failure
                stage.invalid(Path(obj).stem, f"registered an invalid template: {one_line(exc)}")
                return
        elif not isinstance(obj, PromptTemplate):
            stage.invalid(getattr(obj, "name", None), f"registered a template that is not a PromptTemplate: {obj!r:.80}")
            return
        stage.add(obj.name, obj, obj.description)

    return register


def _format_registrar(stage: _Staging) -> Callable[..., None]:
    def register(obj: Any) -> None:
        from .data.formats import DatasetFormat

        if not isinstance(obj, DatasetFormat):
            stage.invalid(getattr(obj, "name", None), f"registered a dataset format that is not a DatasetFormat: {obj!r:.80}")
            return
        stage.add(obj.name, obj, obj.description)

    return register


_REGISTRARS: dict[str, Callable[[_Staging], Callable[..., None]]] = {
    "recipes": _recipe_registrar,
    "formats": _format_registrar,
    "templates": _template_registrar,
    "models": _named_registrar,
    "adapters": _named_registrar,
    "strategies": _named_registrar,
    "hooks": _named_registrar,
    "objectives": _named_registrar,
    "optimizers": _named_registrar,
    "schedules": _named_registrar,
}


def _plugin_problems(stages: dict[str, _Staging], registries: dict[str, Registry]) -> list[str]:
    """Names a plugin may not use: no name, twice in the plugin, or taken by an earlier plugin."""
    problems = []
    for kind, stage in stages.items():
        seen: set[str] = set()
        for part in stage.parts:
            problem = registries[kind].problem(part)
            if problem is None and part.name in seen:
                problem = f"{KINDS[kind]} registered {LABELS[kind]} {part.name!r} twice"
            if problem:
                problems.append(problem)
            if isinstance(part.name, str):
                seen.add(part.name)
    return problems


def collect_parts(pm: PluginManager) -> Parts:
    """Call every plugin's register hooks, recording which plugin registered each part.

    Each plugin registers transactionally, built-ins first: its parts of every kind are
    staged, and only added when all its hooks ran without raising and every registration
    was valid (a name, a readable template, a name no earlier plugin took: the earlier
    plugin, a built-in above all, keeps it). Otherwise the plugin is marked broken
    (``PluginInfo.error``) and none of its parts is added, so a half plugin never runs;
    the names it tried are remembered so that asking for one says why it is missing.
    """
    registries = {kind: Registry(kind, LABELS[kind]) for kind in KINDS}
    for info in pm.failures:  # failed before registering anything (import, shadowing, register_commands)
        for registry in registries.values():
            registry.failed.append(f"plugin {info.label} failed and may provide it: {info.error}")
    impls: dict[str, dict[str, list[Any]]] = {}
    for kind, hook_name in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            impls.setdefault(impl.plugin_name, {}).setdefault(kind, []).append(impl)
    for name in pm.load_order():
        info = pm.infos.get(name)
        owner = info.owner if info else name
        stages: dict[str, _Staging] = {}
        problems: list[str] = []
        for kind, kind_impls in impls.get(name, {}).items():
            stage = stages[kind] = _Staging(owner, kind)
            register = _REGISTRARS[kind](stage)
            for impl in kind_impls:
                try:
                    impl.function(register=register)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # noqa: BLE001 - SystemExit too: a broken plugin must not break the others
                    problems.append(describe_exception(exc, KINDS[kind]))
            problems += [f"{KINDS[kind]} {p}" for p in stage.problems]
        problems = problems or _plugin_problems(stages, registries)
        if problems:
            reason = problems[0] + (f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else "")
            broken = pm.mark_broken(name, reason)
            for kind, stage in stages.items():
                for tried in stage.tried:
                    registries[kind].missing.setdefault(tried, f"plugin {broken.label} would provide it but failed: {reason}")
                registries[kind].failed.append(f"plugin {broken.label} failed and may provide it: {reason}")
            continue
        for kind, stage in stages.items():
            for part in stage.parts:
                registries[kind].add(part)
                trace(f"plugin {info.label if info else repr(name)} registered {LABELS[kind]} {part.name!r}")
    return Parts(**registries)
