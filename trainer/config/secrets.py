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
    r"^(?!.*_env$).*(api_?key|secret|password|passwd|token$|credential|private_?key|access_?key|auth_?key"
    r"|authorization|bearer|cookie)",
    re.IGNORECASE,
)
SECRET_ENV = re.compile(r"(_KEY|TOKEN|PASSWORD|PASSWD|CREDENTIALS?)$|SECRET", re.IGNORECASE)
REDACTED = "***redacted***"
#: What an ``*_env`` key holds: the name of an environment variable.
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: A URL and what follows its scheme up to a blank or a quote (user-info, host, path, query).
_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>[^\s'\"<>`]+)")
#: Query parameters whose name says they carry a secret (?api-key=, &sig=, &X-Amz-Signature=, &access_token=).
_QUERY = re.compile(r"(?P<lead>[?&;](?P<name>[A-Za-z0-9_.~%-]+)=)(?P<value>[^&#\s'\"<>`]+)")
SECRET_PARAM = re.compile(
    r"(key|token|secret|passw(or)?d|pwd|sig|signature|auth|authorization|credentials?|session)$", re.IGNORECASE
)
#: ``Authorization: Bearer <token>`` (or Basic) in a header, an override or an error message.
_SCHEME_TOKEN = re.compile(r"(?P<lead>\b(?:bearer|basic)\s+)(?P<value>[A-Za-z0-9._~+/=-]{6,})", re.IGNORECASE)
#: ``hub_token=VALUE``, ``"api_key": "VALUE"``, ``password: VALUE`` in free text (not ``api_key_env=NAME``).
_ASSIGNMENT = re.compile(
    r"(?P<lead>\b[\w.-]*?(?:api[_-]?key|_key|token|secret|passw(?:or)?d|credentials?|authorization)['\"]?"
    r"\s*[=:]\s*)(?P<value>'[^']*'|\"[^\"]*\"|[^\s,;&'\"`}\]]+)",
    re.IGNORECASE,
)
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


def looks_like_key(value: Any) -> bool:
    """True when the value of an ``*_env`` key is a key itself rather than an environment variable's name: not a
    name's shape, a known key shape, or a long run of mixed letters and digits without an underscore."""
    if not isinstance(value, str) or not value or value.startswith("${"):
        return False
    if not ENV_NAME.match(value) or KEY_SHAPES.search(value):
        return True
    mixed = any(c.isdigit() for c in value) and any(c.isalpha() for c in value)
    return len(value) >= 20 and "_" not in value and mixed


def url_userinfo(url_rest: str) -> str | None:
    """The user-info of a URL (what follows ``scheme://``), or None. The password may hold any character, ``@``
    and ``/`` included: the user-info ends at the last ``@`` before the query (or in the whole URL when the
    query has none); with a ``/`` before that ``@`` it is user-info only when the part before the first ``/`` is
    no ``host[:port]`` (``bob:PW/PART@host``, not ``github.com/org/repo@v1``)."""
    query = min((i for i in (url_rest.find("?"), url_rest.find("#")) if i >= 0), default=len(url_rest))
    at = url_rest.rfind("@", 0, query)
    if at < 0:
        at = url_rest.rfind("@")
    if at < 0:
        return None
    info = url_rest[:at]
    first = info.split("/", 1)[0]
    host_port = ":" not in first or first.rsplit(":", 1)[1].isdigit()
    if "/" in info and "@" not in first and host_port:
        return None
    return info


def _redact_url(m: re.Match) -> str:
    rest = m["rest"]
    info = url_userinfo(rest)
    if info is not None:
        rest = f"{REDACTED}@{rest[len(info) + 1 :]}"
    return m["scheme"] + _QUERY.sub(_redact_param, rest)


def _redact_param(m: re.Match) -> str:
    if not SECRET_PARAM.search(m["name"]) or m["value"] == REDACTED:
        return m[0]
    return m["lead"] + REDACTED


def _redact_assignment(m: re.Match) -> str:
    value = m["value"].strip("'\"")
    if value in (REDACTED, "", "null", "None", "none", "***", "...") or value.startswith("$"):
        return m[0]  # nothing, an interpolation, a shell variable or substitution, a placeholder
    if value.lower() in ("bearer", "basic"):
        return m[0]  # "Authorization: Bearer <token>": _SCHEME_TOKEN redacts the token itself
    quote = m["value"][0] if m["value"][0] in "'\"" else ""
    return f"{m['lead']}{quote}{REDACTED}{quote}"


def redact_text(text: str) -> str:
    """``text`` with every URL credential (user-info, secret query parameters), bearer token, ``secret_key=...``
    assignment, key-shaped token and known secret value replaced: the one redaction of free text (log lines,
    printed YAML and errors, tracker payloads)."""
    if not text:
        return text
    text = _URL.sub(_redact_url, text)
    text = _QUERY.sub(_redact_param, text)  # a query string without its URL (a split or quoted override)
    text = _SCHEME_TOKEN.sub(lambda m: m["lead"] + REDACTED, text)
    text = _ASSIGNMENT.sub(_redact_assignment, text)
    text = KEY_SHAPES.sub(REDACTED, text)
    for secret in sorted(_known | _env_secrets(), key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def secret_value(key: str, value: Any) -> bool:
    """True when config key ``key`` (its last part) holds a secret: a secret-looking name with a value, or an
    ``*_env`` key holding a key instead of a variable's name."""
    name = str(key).lstrip("+~").rsplit(".", 1)[-1]
    if value is None or isinstance(value, dict | list):
        return False
    if name.endswith("_env"):
        return looks_like_key(value)
    return bool(SECRET_KEY.search(name))


def redacted(node: Any) -> Any:
    """A plain copy of a config container with the value of every secret-looking key replaced, and URL
    credentials and known secrets removed from every string."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if secret_value(str(k), v):
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
    if sep and secret_value(key, value):
        remember(value)
        return None
    return redact_text(override)


def redact_argv(args: list[str]) -> list[str]:
    """A command line fit to be recorded (``sys.argv`` as trackers read it): each secret override's value replaced
    (and remembered, so that an error quoting it is redacted too), URL credentials removed from the rest."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        out.append(f"{key}={REDACTED}" if sep and redact_override(arg) is None else redact_text(arg))
    return out


def redact_yaml_text(text: str) -> str:
    """YAML printed by Hydra (``--cfg``, ``--info``): secret keys' values, URL credentials, known secrets."""
    out = []
    for line in text.splitlines(keepends=True):
        m = re.match(r"^(\s*(?:-\s+)?)([^:#\s][^:]*):\s+(.+?)(\s*)$", line)
        value = m[3].strip("'\"") if m else ""
        if m and secret_value(m[2], value) and value not in ("null", "") and not value.startswith("${"):
            remember(value)
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
    for text in _strings(plain):
        remember_in_text(text)


def remember_in_text(text: str) -> None:
    """Remember the URL passwords (and user-only tokens) and secret query values in ``text``, so that a log line
    quoting them in pieces (an error naming the host and password apart) is redacted too."""
    for m in _URL.finditer(text):
        info = url_userinfo(m["rest"])
        if info is not None:
            remember(info)
            remember(info.partition(":")[2])
        for q in _QUERY.finditer(m["rest"]):
            if SECRET_PARAM.search(q["name"]):
                remember(q["value"])


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


def install_excepthook() -> None:
    """A traceback that reaches the terminal (an unexpected error's) is printed redacted too."""
    import sys
    import traceback

    def hook(kind, exc, tb) -> None:
        sys.stderr.write(redact_text("".join(traceback.format_exception(kind, exc, tb))))

    sys.excepthook = hook


def move_sweep_secrets_to_env(config: DictConfig) -> None:
    """Before Hydra saves multirun.yaml: each secret override (``hardware.api_key=sk-...``) becomes
    ``hardware.api_key=${oc.env:HYDRATUNE_SECRET_<n>}`` with the value in this process's environment (inherited
    by every job); secret values in the composed config are redacted (jobs compose their own)."""
    task = config.hydra.overrides.task
    with read_write(task):
        for i, override in enumerate(list(task)):
            key, sep, value = str(override).partition("=")
            secret_key = sep and secret_value(key, value)
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
