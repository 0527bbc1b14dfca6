"""Launchers run a resolved config on a hardware strategy. Each takes (cfg, command) and returns the run's
objective value (or None); they share code through functions, not classes."""

from __future__ import annotations

from omegaconf import DictConfig


def launch(cfg: DictConfig, command: str) -> float | None:
    from trainer.config_checks import check_config

    check_config(cfg)
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
