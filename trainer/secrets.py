"""Secrets (API keys, tokens, passwords, credentials in URLs) never reach a file, a log line or a printed config.

- :func:`redacted` copies a config container with every secret-looking key's value and every URL credential
  replaced; :func:`redact_text` does the same to free text (log lines, YAML printed by ``--cfg``).
- :class:`RedactCallback` (a Hydra callback in conf/config.yaml) works at the Hydra level: each job's log
  handlers get a filter that redacts every record, and a sweep's secrets move from the command line into
  environment variables before Hydra saves ``multirun.yaml`` (the jobs read them back from there).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

# "token$": hub_token, ad_token, token ... but not max_new_tokens (workers load the written config).
#: Keys whose value is a secret; "..._env" keys name an environment variable (api_key_env), not a secret.
SECRET_KEY = re.compile(
    r"^(?!.*_env$).*(api_?key|secret|password|passwd|token$|credential|private_?key|access_?key|auth_?key)",
    re.IGNORECASE,
)
SECRET_ENV = re.compile(r"(_KEY|TOKEN|PASSWORD|PASSWD|CREDENTIALS?)$|SECRET", re.IGNORECASE)
REDACTED = "***redacted***"
#: scheme://user:password@host -> scheme://***redacted***@host (also a bare user@ with a token as the user).
URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<cred>[^/\s@'\"]+)@")
#: Well-known key shapes (OpenAI, Hugging Face, wandb-style 40-hex, GitHub), redacted wherever they appear.
KEY_SHAPES = re.compile(r"\b(sk-[A-Za-z0-9_-]{8,}|hf_[A-Za-z0-9]{8,}|gh[pousr]_[A-Za-z0-9]{16,})")
_MIN_SECRET = 6

_known: set[str] = set()


def remember(value: Any) -> None:
    """Redact this exact string wherever it appears from now on (in log lines and printed text)."""
    if isinstance(value, str) and len(value) >= _MIN_SECRET and value != REDACTED and not value.startswith("${"):
        _known.add(value)


def _env_secrets() -> set[str]:
    return {v for k, v in os.environ.items() if SECRET_ENV.search(k) and len(v) >= _MIN_SECRET}


def redact_text(text: str) -> str:
    """``text`` with every URL credential, key-shaped token and known secret value replaced."""
    if not text:
        return text
    text = URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    text = KEY_SHAPES.sub(REDACTED, text)
    for secret in sorted(_known | _env_secrets(), key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redacted(node: Any) -> Any:
    """A plain copy of a config container with the value of every secret-looking key replaced, and URL
    credentials and known secrets removed from every string."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if SECRET_KEY.search(str(k)) and v is not None and not isinstance(v, dict | list):
                remember(v)
                out[k] = REDACTED
            else:
                out[k] = redacted(v)
        return out
    if isinstance(node, list):
        return [redacted(v) for v in node]
    if isinstance(node, str):
        return redact_text(node)
    return node


def redact_override(override: str) -> str | None:
    """A command-line override fit to be written down: None for a secret key, URL credentials removed."""
    key, sep, value = override.partition("=")
    if sep and SECRET_KEY.search(key.lstrip("+~").rsplit(".", 1)[-1]):
        return None
    return redact_text(override)


def redact_yaml_text(text: str) -> str:
    """YAML printed by Hydra (``--cfg``, ``--info``): secret keys' values, URL credentials, known secrets."""
    out = []
    for line in text.splitlines(keepends=True):
        m = re.match(r"^(\s*(?:-\s+)?)([^:#\s][^:]*):\s+(.+?)(\s*)$", line)
        if m and SECRET_KEY.search(m[2]) and m[3] not in ("null", "''", '""') and not m[3].startswith("${"):
            remember(m[3].strip("'\""))
            line = f"{m[1]}{m[2]}: '{REDACTED}'\n"
        out.append(redact_text(line))
    return "".join(out)


@contextmanager
def printed_redacted() -> Iterator[None]:
    """Capture what Hydra prints (``--cfg job``, ``--info``) and print it redacted."""
    import io
    import sys

    real, buffer = sys.stdout, io.StringIO()
    sys.stdout = buffer
    try:
        yield
    finally:
        sys.stdout = real
        real.write(redact_yaml_text(buffer.getvalue()))
        real.flush()


def collect(cfg: Any) -> None:
    """Remember every secret value of a config (resolved where it resolves) so log lines can be redacted."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    except Exception:  # noqa: BLE001 - an unresolvable interpolation: take the unresolved values
        plain = OmegaConf.to_container(cfg, resolve=False)
    redacted(plain)
    for url in _strings(plain):
        for m in URL_CREDENTIALS.finditer(url):
            for part in m["cred"].split(":"):
                remember(part)


def _strings(node: Any):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def token_to_env(train_args: dict) -> None:
    """Take ``hub_token`` out of the Trainer's arguments (the Trainer pickles them into training_args.bin in the
    model and every checkpoint) and hand it to huggingface_hub through HF_TOKEN instead."""
    token = train_args.pop("hub_token", None)
    if token and token != REDACTED:
        remember(token)
        os.environ["HF_TOKEN"] = token


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with :func:`redact_text` (on handlers: every propagated record passes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: leave it to the handler
            return True
        clean = redact_text(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


_FILTER = RedactingFilter()


def install_log_filter() -> None:
    """Add the redacting filter to every handler of the root logger (Hydra's console and hydratune.log)."""
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


def move_sweep_secrets_to_env(config: DictConfig) -> None:
    """Before Hydra saves multirun.yaml: each secret override (``hardware.api_key=sk-...``) becomes
    ``hardware.api_key=${oc.env:HYDRATUNE_SECRET_<n>}`` with the value in this process's environment (inherited
    by every job); secret values in the composed config are redacted (jobs compose their own)."""
    task = config.hydra.overrides.task
    with read_write(task):
        for i, override in enumerate(list(task)):
            key, sep, value = str(override).partition("=")
            secret_key = sep and SECRET_KEY.search(key.lstrip("+~").rsplit(".", 1)[-1])
            if not sep or value.startswith("${") or not (secret_key or redact_text(value) != value):
                continue
            name = f"HYDRATUNE_SECRET_{i}"
            os.environ[name] = value
            remember(value)
            task[i] = f"{key}=${{oc.env:{name}}}"
    plain = _top_level(config)
    collect(plain)
    with read_write(config), open_dict(config):
        for key, _, _ in _changed(plain, redacted(plain)):
            OmegaConf.update(config, key, REDACTED, merge=False)
    # Hydra's own strings that repeat the command line (hydra.job.override_dirname, ...).
    hydra: dict = OmegaConf.to_container(config.hydra, resolve=False)  # type: ignore[assignment]
    hydra["overrides"]["task"] = []  # rewritten above; the jobs need them
    with read_write(config.hydra), open_dict(config.hydra):
        for key, _, new in _changed(hydra, _redact_strings(hydra)):
            OmegaConf.update(config.hydra, key, new, merge=False)


def _top_level(config: DictConfig) -> dict:
    """The config without its hydra node, unresolved, as plain containers."""
    plain: dict = OmegaConf.to_container(config, resolve=False)  # type: ignore[assignment]
    return {k: v for k, v in plain.items() if k != "hydra"}


def _redact_strings(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _redact_strings(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_redact_strings(v) for v in node]
    return redact_text(node) if isinstance(node, str) else node


def _changed(old: Any, new: Any, prefix: str = ""):
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old:
            yield from _changed(old[key], new.get(key), f"{prefix}{key}.")
    elif isinstance(old, list) and isinstance(new, list):
        for i, (a, b) in enumerate(zip(old, new, strict=False)):
            yield from _changed(a, b, f"{prefix}{i}.")
    elif old != new:
        yield prefix.rstrip("."), old, new


class RedactCallback(Callback):
    """Hydra callback (conf/config.yaml): no secret reaches Hydra's files or this run's log lines."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        move_sweep_secrets_to_env(config)
        install_log_filter()

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        install_log_filter()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        collect(_top_level(config))
        try:
            collect(OmegaConf.masked_copy(config, [str(k) for k in config if k != "hydra"]))
        except Exception:  # noqa: BLE001 - resolution errors surface later, where the engine reads the key
            pass
        install_log_filter()
