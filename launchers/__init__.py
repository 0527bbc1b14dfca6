"""Launchers run a resolved config on a hardware strategy. Each takes (cfg, command) and leaves its results in
the run dir; the CLI reads the configured objective from metrics.json afterwards (trainer.run.rundir.finished).
They share code through functions, not classes. The hardware option's schema type names its launcher module
(``HardwareSchema.runner``): a new strategy is a new schema subclass and a new module, never a branch here."""

from __future__ import annotations

import importlib

from omegaconf import DictConfig

from trainer.config.errors import choice_error
from trainer.config.schema import SubmittableHardwareSchema, hardware_schema

#: hardware.submit -> the module that starts the run's processes elsewhere (same ``run(cfg, command)`` interface).
SUBMITTERS = {"slurm": "launchers.slurm", "skypilot": "launchers.skypilot"}


def check(cfg: DictConfig) -> None:
    """Every rule of trainer.config.checks.check_config, the data formats' (trainer.data.formats.check_sources), the serving
    engines' (trainer.hosting.engines) and
    those of the hardware's launcher module (its ``check(cfg)``, for rules that need its own code), in one pass that reports every broken rule together. The CLI
    calls it for every command, ``--cfg`` included."""
    from trainer.config.checks import check_config
    from trainer.data.formats import check_sources
    from trainer.hosting.engines import check_name

    launcher_rules = getattr(importlib.import_module(hardware_schema(cfg).runner), "check", None)
    rules = (check_sources, check_name, _check_submit, *([launcher_rules] if launcher_rules is not None else []))
    check_config(cfg, *rules)


def _check_submit(cfg: DictConfig) -> None:
    """hardware.submit: local, or a registered submitter (strategies whose processes hydratune starts)."""
    if issubclass(hardware_schema(cfg), SubmittableHardwareSchema) and cfg.hardware.submit != "local":
        if cfg.hardware.submit not in SUBMITTERS:
            raise choice_error("hardware.submit", cfg.hardware.submit, ("local", *SUBMITTERS))


def launch(cfg: DictConfig, command: str) -> None:
    check(cfg)
    if cfg.logger.name == "mlflow":  # store and experiment decided once, here: workers load the written config
        from trainer.run.mlflow_tracking import resolve

        resolve(cfg)
    schema = hardware_schema(cfg)
    runner = schema.runner
    if issubclass(schema, SubmittableHardwareSchema) and cfg.hardware.submit != "local":
        runner = SUBMITTERS[cfg.hardware.submit]  # a registered one: check() refused any other
    importlib.import_module(runner).run(cfg, command)
