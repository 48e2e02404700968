"""Part options: a part's recipe options are the typed keyword arguments of its constructor.

A plugin declares an option as an ordinary keyword argument with a real default, so the part
works in plain Python (``Throughput()``, ``Focal(gamma=1.0)``)::

    def __init__(self, every: Annotated[int, Option("report every N steps", ge=1)] = 10) -> None:

The validator reads the signature (:func:`signature_options`) and checks each recipe value
against a :class:`~ftcore.recipe.Field` derived from the type — ``bool``/``int``/``float``/
``str``, ``list[X]`` (every item checked as ``X``), ``dict``, ``Literal[...]`` (the choices),
``X | None`` (may be null) — and the :class:`Option`'s constraints, which are ``Field``'s own
(``ge``/``gt``/``le``/``lt``, ``choices``, ``pattern``, ``items``, ``keys``, ``is_path``, ...).
Every problem of every option is reported at once; constructing the part then binds the
checked values to the same signature (:func:`construct`, torchtune's ``inspect.signature(...).bind``).

Which callable a kind's options belong to, and which leading arguments the core passes
itself, is the table :data:`SIGNATURES`: a strategy is ``Strategy(recipe, precision, **options)``;
a model builder is a registered instance whose ``configure(model_cfg, parts, **options)`` binds a run.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Annotated, Any, Callable, Literal, Union

from .errors import FtcoreError
from .recipe import REQUIRED, Field

#: ``Field``'s constraints, which an :class:`Option` takes by the same names.
CONSTRAINTS = frozenset(f.name for f in dataclasses.fields(Field)) - {"types", "default", "help", "nullable"}

#: part kind -> (the callable whose keyword arguments are the options, given the loaded part;
#: how many leading arguments the core passes itself).
SIGNATURES: dict[str, tuple[Callable[[Any], Callable[..., Any]], int]] = {
    "hooks": (lambda cls: cls, 0),
    "objectives": (lambda cls: cls, 0),
    "adapters": (lambda cls: cls, 0),
    "strategies": (lambda cls: cls, 2),  # Strategy(recipe, precision, **options)
    "models": (lambda builder: builder.configure, 2),  # builder.configure(model_cfg, parts, **options)
}

_PLAIN = (bool, int, float, str, type(None))


class Option:
    """Help text and constraints of one option: ``Annotated[int, Option("rank", ge=1)]``.

    The constraints are :class:`~ftcore.recipe.Field`'s, by the same names: ``ge``/``gt``/
    ``le``/``lt`` and ``multiple_of`` for numbers; ``choices``, ``pattern`` (a whole match) and
    ``registry`` (a part kind whose part it names) for strings; ``items`` (a ``Field``),
    ``min_len``/``max_len`` for lists; ``keys`` (key -> ``Field``) for mappings; ``is_path``.
    """

    __slots__ = ("help", "constraints")

    def __init__(self, help: str = "", **constraints: Any) -> None:
        unknown = set(constraints) - CONSTRAINTS
        if unknown:
            raise TypeError(f"Option() got unknown constraint(s) {', '.join(sorted(unknown))}; it takes {', '.join(sorted(CONSTRAINTS))}")
        self.help, self.constraints = help, constraints

    def __repr__(self) -> str:
        return f"Option({', '.join([repr(self.help), *(f'{k}={v!r}' for k, v in self.constraints.items())])})"


def _bad_type(hint: Any, where: str) -> FtcoreError:
    return FtcoreError(
        f"{where} is typed {hint!r}, which a recipe cannot give",
        hint="type options bool, int, float, str, list[...], dict, Literal[...] or a union of them with None",
    )


def _shape(hint: Any, where: str) -> tuple[tuple[type, ...], bool, dict[str, Any]]:
    """(accepted types, whether null is accepted, derived constraints) of a type hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:  # e.g. the X of list[X], or a member of a union
        inner, *extras = args
        option = next((e for e in extras if isinstance(e, Option)), Option())
        types_, nullable, derived = _shape(inner, where)
        return types_, nullable, {**derived, **option.constraints}
    if origin in (Union, types.UnionType):
        types_: list[type] = []
        nullable, derived = False, {}
        for arg in args:
            if arg is type(None):
                nullable = True
                continue
            sub, sub_null, sub_kw = _shape(arg, where)
            types_ += [t for t in sub if t not in types_]
            nullable |= sub_null
            derived.update(sub_kw)
        return tuple(types_), nullable, derived
    if origin is Literal:
        if not all(isinstance(a, _PLAIN) for a in args):
            raise _bad_type(hint, where)
        types_ = []
        for arg in args:
            if arg is not None and type(arg) not in types_:
                types_.append(type(arg))
        return tuple(types_), None in args, {"choices": tuple(a for a in args if a is not None)}
    if hint is list or origin is list:
        items = field_of(args[0], None, f"{where} (an item)", item=True) if args else None
        return (list,), False, ({"items": items} if items is not None else {})
    if hint is dict or origin is dict:
        return (dict,), False, {}
    if hint in (bool, int, float, str):
        return (hint,), False, {}
    raise _bad_type(hint, where)


def field_of(hint: Any, default: Any, where: str, item: bool = False) -> Field:
    """The ``Field`` for an option typed ``hint`` (``Annotated[type, Option(...)]`` or a plain type)."""
    option = Option()
    if typing.get_origin(hint) is Annotated:
        option = next((e for e in typing.get_args(hint)[1:] if isinstance(e, Option)), option)
    types_, nullable, derived = _shape(hint, where)
    if default is inspect.Parameter.empty:
        default = REQUIRED
    elif isinstance(default, tuple):
        default = list(default)  # a real default must not be mutable; the recipe holds a list
    if default is not REQUIRED and not _is_data(default):
        raise FtcoreError(f"{where} defaults to {default!r}, which a recipe cannot hold", hint="use None, a number, a string, a bool, or a tuple/list/dict of them")
    return Field(types_, None if item else default, option.help, nullable=nullable or (default is None and not item), **derived)


def _is_data(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_data(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_data(v) for k, v in value.items())
    return isinstance(value, _PLAIN)


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    target = fn.__init__ if inspect.isclass(fn) else getattr(fn, "__func__", fn)
    if target is object.__init__:
        return {}
    return typing.get_type_hints(target, include_extras=True)


def signature_options(fn: Callable[..., Any], skip: int = 0, where: str = "") -> dict[str, Field]:
    """The recipe options of ``fn``: its keyword arguments after the first ``skip`` ones, as ``Field``s."""
    where = where or getattr(fn, "__qualname__", repr(fn))
    try:
        params = list(inspect.signature(fn).parameters.values())
        hints = _hints(fn)
    except (TypeError, ValueError, NameError) as exc:
        raise FtcoreError(f"cannot read the options of {where}: {exc}", hint="import the names its annotations use at module level (not under TYPE_CHECKING)") from None
    options: dict[str, Field] = {}
    for param in params[skip:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        label = f"option {param.name!r} of {where}"
        if param.kind is param.POSITIONAL_ONLY:
            raise FtcoreError(f"{label} is positional-only, so a recipe cannot name it")
        if param.name not in hints:
            raise FtcoreError(f"{label} has no type annotation", hint=f"e.g. {param.name}: Annotated[int, Option('what it does', ge=1)] = 1")
        options[param.name] = field_of(hints[param.name], param.default, label)
    return options


def part_options(kind: str, target: Any, where: str = "") -> dict[str, Field]:
    """The options of a loaded part of ``kind`` (none for kinds that take no options)."""
    if kind not in SIGNATURES:
        return {}
    pick, skip = SIGNATURES[kind]
    return signature_options(pick(target), skip, where)


def construct(fn: Callable[..., Any], *leading: Any, where: str = "", **options: Any) -> Any:
    """``fn(*leading, **options)``, bound to its signature first so a mismatch names the part."""
    try:
        bound = inspect.signature(fn).bind(*leading, **options)
    except TypeError as exc:
        raise FtcoreError(f"{where or getattr(fn, '__qualname__', fn)}: {exc}") from None
    return fn(*bound.args, **bound.kwargs)
