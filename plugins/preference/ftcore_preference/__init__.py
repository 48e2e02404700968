"""The preference plugin: pair dataset formats and the dpo, orpo and simpo objectives."""

from __future__ import annotations

from ftcore.api import hookimpl


@hookimpl
def register_dataset_formats(register) -> None:
    from .formats import FORMATS

    for fmt in FORMATS:
        register(fmt)


@hookimpl
def register_objectives(register) -> None:
    register("dpo", "ftcore_preference.objectives:DPO", "direct preference optimisation (sigmoid or IPO loss) against the starting model")
    register("orpo", "ftcore_preference.objectives:ORPO", "odds-ratio preference optimisation: SFT on chosen answers plus an odds-ratio term; no reference")
    register("simpo", "ftcore_preference.objectives:SimPO", "simple preference optimisation: length-normalised rewards with a target margin; no reference")
    register("reward", "ftcore_preference.objectives:Reward", "a reward model: one score per answer (sequence-classification head), chosen above rejected (Bradley-Terry)")


@hookimpl
def register_training_hooks(register) -> None:
    register("preference_pairs", "ftcore_preference.quickstart:PairAssets", "write the DPO quickstart's training and held-out pairs when missing")
    register("preference_eval", "ftcore_preference.quickstart:PreferenceEval", "before and after training: how often the model prefers the chosen answer of held-out pairs")


@hookimpl
def register_recipes(register) -> None:
    from ftcore.api import yaml_files

    for path in yaml_files("ftcore_preference.recipes"):
        register(path.stem, str(path))


@hookimpl
def register_commands(cli) -> None:
    from .score import score_cmd

    cli.add_command(score_cmd)
