"""Launchers run a resolved config on a hardware strategy. Each takes (cfg, command) and leaves its results in
the run dir; the CLI reads the configured objective from metrics.json afterwards (trainer.rundir.finished).
They share code through functions, not classes."""

from __future__ import annotations

from omegaconf import DictConfig


def launch(cfg: DictConfig, command: str) -> float | None:
    from trainer.config_checks import check_config

    check_config(cfg)
    if cfg.logger.name == "mlflow":  # store and experiment decided once, here: workers load the written config
        from trainer.mlflow_tracking import resolve

        resolve(cfg)
    kind = cfg.hardware.kind
    if kind == "local":
        from launchers import local

        return local.run(cfg, command)
    if kind == "distributed":
        from launchers import distributed

        return distributed.run(cfg, command)
    if kind == "cloud":
        from launchers import cloud

        return cloud.run(cfg, command)
    raise NotImplementedError(f"hardware kind '{kind}' has no launcher yet")
