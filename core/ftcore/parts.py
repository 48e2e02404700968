"""The registries of every part kind, filled by calling each plugin's register hooks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import FtcoreError
from .plugins import PluginManager
from .registry import Part, Registry

#: What one part of each kind is called in messages.
LABELS = {"recipes": "recipe", "formats": "dataset format", "templates": "template", "models": "model builder", "strategies": "strategy", "hooks": "training hook"}

#: CLI names of the part kinds, in display order, with the hook that fills each.
KINDS: dict[str, str] = {
    "recipes": "register_recipes",
    "formats": "register_dataset_formats",
    "templates": "register_prompt_templates",
    "models": "register_model_builders",
    "strategies": "register_strategies",
    "hooks": "register_training_hooks",
}


@dataclass
class Parts:
    """Every registered part, one registry per kind."""

    recipes: Registry
    formats: Registry
    templates: Registry
    models: Registry
    strategies: Registry
    hooks: Registry

    def kind(self, name: str) -> Registry:
        return getattr(self, name)


def yaml_files(package: str) -> list[Path]:
    """The YAML data files shipped inside ``package``, sorted (for plugins registering recipes or templates)."""
    from importlib import resources

    return sorted(Path(str(p)) for p in resources.files(package).iterdir() if p.name.endswith(".yaml"))


def _named_registrar(registry: Registry, owner: str) -> Callable[..., None]:
    def register(name: str, target: Any, description: str = "", options: dict | None = None) -> None:
        registry.add(Part(name, target, owner, description, dict(options or {})))

    return register


def _recipe_description(source: str) -> str:
    import yaml

    from .recipe import read_source

    try:
        data = yaml.safe_load(read_source(source)[0])
    except Exception:  # listing must not fail on a recipe that validation will report later
        return ""
    return str(data.get("description", "")) if isinstance(data, dict) else ""


def _recipe_registrar(registry: Registry, owner: str) -> Callable[..., None]:
    def register(name: str, source: str | Path, description: str = "") -> None:
        if not description:
            description = _recipe_description(str(source))
        registry.add(Part(name, str(source), owner, description))

    return register


def _object_registrar(registry: Registry, owner: str) -> Callable[..., None]:
    def register(obj: Any) -> None:
        if isinstance(obj, (str, Path)):
            from .data.template import PromptTemplate

            obj = PromptTemplate.from_file(Path(obj))
        registry.add(Part(obj.name, obj, owner, getattr(obj, "description", "")))

    return register


_REGISTRARS: dict[str, Callable[[Registry, str], Callable[..., None]]] = {
    "recipes": _recipe_registrar,
    "formats": _object_registrar,
    "templates": _object_registrar,
    "models": _named_registrar,
    "strategies": _named_registrar,
    "hooks": _named_registrar,
}


def collect_parts(pm: PluginManager) -> Parts:
    """Call every plugin's register hooks, recording which plugin registered each part."""
    registries = {kind: Registry(kind, LABELS[kind]) for kind in KINDS}
    for kind, hook_name in KINDS.items():
        caller = getattr(pm.hook, hook_name)
        for impl in caller.get_hookimpls():  # registration (load) order
            info = pm.infos.get(impl.plugin_name)
            owner = info.owner if info else impl.plugin_name
            register = _REGISTRARS[kind](registries[kind], owner)
            try:
                impl.function(register=register)
            except FtcoreError:
                raise
            except Exception as exc:
                raise FtcoreError(
                    f"plugin {owner} failed in {hook_name}: {type(exc).__name__}: {exc}",
                    hint=f"disable it with FTCORE_DISABLE_PLUGINS={impl.plugin_name}",
                ) from exc
    return Parts(**registries)
