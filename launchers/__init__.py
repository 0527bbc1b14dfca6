"""Launchers run a resolved config on a hardware strategy. Each takes (cfg, command) and leaves its results in
the run dir; the CLI reads the configured objective from metrics.json afterwards (trainer.rundir.finished).
They share code through functions, not classes. The hardware option's schema type names its launcher module
(``HardwareSchema.runner``): a new strategy is a new schema subclass and a new module, never a branch here."""

from __future__ import annotations

import importlib

from omegaconf import DictConfig

from trainer.errors import choice_error
from trainer.schema import SubmittableHardwareSchema, hardware_schema

#: hardware.submit -> the module that starts the run's processes elsewhere (same ``run(cfg, command)`` interface).
SUBMITTERS = {"slurm": "launchers.slurm", "skypilot": "launchers.skypilot"}


def check(cfg: DictConfig) -> None:
    """Every rule of trainer.config_checks.check_config, then those of the hardware's launcher module (its
    ``check(cfg)``, for rules that need its own code). The CLI calls it for every command, ``--cfg`` included."""
    from trainer.config_checks import check_config

    check_config(cfg)
    launcher_rules = getattr(importlib.import_module(hardware_schema(cfg).runner), "check", None)
    if launcher_rules is not None:
        launcher_rules(cfg)


def launch(cfg: DictConfig, command: str) -> None:
    check(cfg)
    if cfg.logger.name == "mlflow":  # store and experiment decided once, here: workers load the written config
        from trainer.mlflow_tracking import resolve

        resolve(cfg)
    schema = hardware_schema(cfg)
    runner = schema.runner
    if issubclass(schema, SubmittableHardwareSchema) and cfg.hardware.submit != "local":
        if cfg.hardware.submit not in SUBMITTERS:
            raise choice_error("hardware.submit", cfg.hardware.submit, ("local", *SUBMITTERS))
        runner = SUBMITTERS[cfg.hardware.submit]
    importlib.import_module(runner).run(cfg, command)
