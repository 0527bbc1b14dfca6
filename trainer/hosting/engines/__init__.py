"""Serving engines behind a registry: one module here per ``serve.engine`` value (and one conf/serve/ YAML).

Each module defines ``check(serve_cfg)`` (refuse what cannot run on this machine, before any model loads) and
``command(source, serve_cfg, cache_dir, port, workdir) -> (argv, served model name)``, and ``STREAM_UPSTREAM`` (whether
the gate must generate every request as a stream so that a client's disconnect cancels it); trainer.hosting.serve starts
that command behind trainer.hosting.gate and waits for its /health."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any

from trainer.config.errors import choice_error


def names() -> list[str]:
    """Every engine module in this package (the allowed values of ``serve.engine``)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(name: str) -> ModuleType:
    """The engine module of ``serve.engine=name``; a choice error naming the registered engines otherwise."""
    if name not in names():
        raise choice_error("serve.engine", name, names(), "serving engine")
    return importlib.import_module(f"{__name__}.{name}")


def check_name(cfg: Any) -> None:
    """Compose-time rule of the one check pass (handed in by launchers.check): serve.engine is a registered one."""
    get(str(cfg.serve.engine))
