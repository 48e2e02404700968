"""The hook specifications plugins implement; nothing else lives here."""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("ftcore")

Register = Callable[..., None]


@hookspec
def register_recipes(register: Register) -> None:
    """Register training recipes.

    :param register: ``register(name, source, description="")`` where ``source`` is a
        path to a YAML file, or a ``"package:resource.yaml"`` reference to a YAML file
        shipped inside a package. Recipes are data and are never executed.
    """


@hookspec
def register_dataset_formats(register: Register) -> None:
    """Register dataset formats (map functions from a raw record to messages).

    :param register: ``register(ftcore.data.formats.DatasetFormat(...))``. A format has a
        ``name``, a ``convert(record) -> dict | None`` function returning
        ``{"messages": [...]}`` or ``{"text": ...}`` (``None`` drops the record), an
        optional ``detect(record) -> bool`` used when a recipe names no format, and a
        one-line ``description``.
    """


@hookspec
def register_prompt_templates(register: Register) -> None:
    """Register chat/prompt templates.

    :param register: ``register(template)`` with a
        ``ftcore.data.template.PromptTemplate``, or ``register(path)`` with a path to
        a YAML template file (see ``templates/`` for the fields).
    """


@hookspec
def register_model_builders(register: Register) -> None:
    """Register model builders (how a recipe's ``model`` section becomes a model).

    :param register: ``register(name, target, description="")`` where ``target`` is an
        instance of a ``ftcore.api.ModelBuilder`` subclass or a lazy ``"module:attribute"``
        reference (so listing parts never imports torch). The extra ``model.*`` keys it takes
        are the typed keyword arguments of its ``configure(model_cfg, parts, *, ...)``.
    """


@hookspec
def register_adapters(register: Register) -> None:
    """Register adapter kinds that recipes choose with ``adapter.kind`` (LoRA, QLoRA, DoRA, full, ...).

    :param register: ``register(name, target, description="")``; ``target`` is a subclass of
        ``ftcore.api.AdapterKind`` (or ``LoRA``) or a lazy ``"module:attribute"`` reference. Its
        ``apply(model, adapter_cfg)`` makes the model trainable at the adapter step of the model
        transforms; class attributes ``quantized_base`` / ``trains_base`` say what it implies; its
        constructor's typed keyword arguments are extra ``adapter.*`` keys.
    """


@hookspec
def register_strategies(register: Register) -> None:
    """Register training strategies (single device, DDP, DeepSpeed ZeRO, ...).

    :param register: ``register(name, target, description="")``; ``target`` is a subclass of
        ``ftcore.api.Strategy`` or a lazy ``"module:attribute"`` reference. The ``strategy.*``
        keys it takes are its constructor's typed keyword arguments after ``(recipe, precision)``.
    """


@hookspec
def register_training_hooks(register: Register) -> None:
    """Register training hooks that recipes choose by name in ``hooks:``.

    :param register: ``register(name, target, description="")``; ``target`` is a subclass
        of ``ftcore.api.TrainingHook`` or a lazy ``"module:attribute"`` reference. The options
        a recipe entry may pass are its constructor's typed keyword arguments.
    """


@hookspec
def register_objectives(register: Register) -> None:
    """Register training objectives that recipes choose with ``objective.name``.

    :param register: ``register(name, target, description="")``; ``target`` is a subclass
        of ``ftcore.api.Objective`` or a lazy ``"module:attribute"`` reference. The
        ``objective.*`` keys it takes are its constructor's typed keyword arguments
        (``Annotated[type, ftcore.api.Option(...)]``, see :mod:`ftcore.options`).
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``ftcore`` command-line interface.

    :param cli: the root ``click.Group``; call ``cli.add_command(...)`` or use
        ``@cli.command()``. Import heavy libraries inside the command body, not at
        module import time, so ``ftcore --help`` stays instant.
    """


@hookspec
def register_optimizers(register: Register) -> None:
    """Register optimizers that recipes choose with ``train.optimizer``.

    :param register: ``register(name, target, description="")``; ``target`` is a callable
        ``build(params, train_cfg) -> torch.optim.Optimizer`` (``train_cfg`` is the recipe's
        ``train`` section: ``lr``, ``weight_decay``, ``betas``, ...) or a lazy
        ``"module:attribute"`` reference.
    """


@hookspec
def register_schedules(register: Register) -> None:
    """Register learning-rate schedules that recipes choose with ``train.schedule``.

    :param register: ``register(name, target, description="")``; ``target`` is a decay function
        ``decay(progress) -> float`` giving the share of the way from the peak learning rate down
        to ``train.min_lr_ratio`` still left at ``progress`` (0 after warmup, 1 at the last step),
        or a lazy ``"module:attribute"`` reference; the core adds warmup and resume.
    """
