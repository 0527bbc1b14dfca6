"""Secret leaks (issues 30 and 31): planted secrets (a hub token, URL passwords holding ``@`` and ``/``, a secret
query parameter, a key pasted into an ``*_env`` field, a bearer token in a refused override) appear in no file under
the run dir, the sweep dir, the cache, the wandb / mlflow / tensorboard outputs (binary files included), and nothing
printed by the run or by ``--cfg job``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.fake_provider import files_containing
from tests.helpers import compose_checked, hydratune
from trainer.config import secrets
from trainer.config.errors import UserError

TINY = ["model=tiny_random", "hardware.threads=1", "eval.max_examples=4", "eval.generation.max_new_tokens=4"]
#: Each planted value is unique; none has a well-known key shape (sk-, hf_): only the redaction rules can catch it.
HUB_TOKEN = "PLANTEDhubtoken7001"
AT_PASSWORD = "pa@PLANTEDatpass7002"  # a password holding "@"
SLASH_PASSWORD = "PW/PLANTEDslash7003"  # a password holding "/"
QUERY_KEY = "PLANTEDquerykey7004"
ENV_KEY = "PLANTEDenvkey7005a1b2c3d4e5f6"  # a key pasted into an *_env field
BEARER = "PLANTEDbearer7006xyz"
#: What each secret must never show: the distinctive part of each value (a password's pieces too).
PLANTED = [HUB_TOKEN, "PLANTEDatpass7002", "PLANTEDslash7003", QUERY_KEY, ENV_KEY, BEARER]

SECRET_OVERRIDES = [
    f"train.hub_token={HUB_TOKEN}",
    f'eval.judge.base_url="http://user:{AT_PASSWORD}@127.0.0.1:9/v1?api-key={QUERY_KEY}"',
    f'record.endpoint.base_url="https://bob:{SLASH_PASSWORD}@127.0.0.1:9/v1"',
]


def leaks(*roots: Path) -> list[str]:
    return [hit for root in roots if Path(root).exists() for hit in files_containing(root, *PLANTED)]


def shown(text: str) -> list[str]:
    return [s for s in PLANTED if s in text]


# ---------------------------------------------------------------- the redaction function


@pytest.mark.parametrize(
    "text, secret, kept",
    [
        ("http://user:PASSWORD1@127.0.0.1:9/v1", "PASSWORD1", "127.0.0.1:9/v1"),
        ("http://user:pa@ss@w0rd@host.example/v1", "ss@w0rd", "host.example/v1"),
        ("https://bob:PW/PART@127.0.0.1:9/v1", "PW/PART", "127.0.0.1:9/v1"),
        ("https://bob:P/W@x/y@127.0.0.1:9/v1", "P/W@x/y", "127.0.0.1:9/v1"),
        ("https://TOKENONLY1@github.com/org/repo", "TOKENONLY1", "github.com/org/repo"),
        ("http://h/v1?api-key=VALUE123&x=1", "VALUE123", "&x=1"),
        ("http://h/v1?api_key=VALUE123", "VALUE123", "http://h/v1"),
        ("https://b.blob/c?sv=2&sig=SIGVALUE9", "SIGVALUE9", "sv=2"),
        ("https://s3/x?X-Amz-Signature=AMZSIG99&X-Amz-Credential=CRED99", "AMZSIG99", "s3/x"),
        ("https://s3/x?X-Amz-Credential=CRED9999", "CRED9999", "s3/x"),
        ("http://h/?access_token=ACCESS99&password=PASS9999", "ACCESS99", "http://h/"),
        ("http://h/?password=PASS9999", "PASS9999", "http://h/"),
        ("Authorization: Bearer BEARER123456", "BEARER123456", "Authorization"),
        ("++train.hub_token=PLAIN12345 refused", "PLAIN12345", "refused"),
        ('{"api_key": "JSONKEY123"}', "JSONKEY123", "api_key"),
    ],
)
def test_redact_text_removes_each_url_and_token_secret(text, secret, kept):
    clean = secrets.redact_text(text)
    assert secret not in clean, clean
    assert kept in clean and secrets.REDACTED in clean, clean


@pytest.mark.parametrize(
    "text",
    [
        "https://github.com/org/repo@v1",
        "hf://datasets/org/name@main",
        "http://127.0.0.1:8080/v1/chat@x",
        "http://h/v1?email=a@b.example&model=m",
        "api_key_env=OPENAI_API_KEY max_new_tokens=64",
    ],
)
def test_redact_text_leaves_what_is_no_secret(text):
    assert secrets.redact_text(text) == text


def test_redacted_config_covers_secret_keys_urls_and_env_keys():
    config = {
        "train": {"hub_token": HUB_TOKEN, "max_new_tokens": 5},
        "eval": {
            "judge": {"base_url": f"http://u:{AT_PASSWORD}@h:9/v1?api-key={QUERY_KEY}", "api_key_env": "JUDGE_KEY"},
            "endpoint": {"base_url": f"https://bob:{SLASH_PASSWORD}@h/v1", "api_key_env": ENV_KEY},
        },
    }
    out = secrets.redacted(config)
    assert shown(json.dumps(out)) == []
    assert out["eval"]["judge"]["api_key_env"] == "JUDGE_KEY" and out["train"]["max_new_tokens"] == 5
    assert out["eval"]["judge"]["base_url"] == f"http://{secrets.REDACTED}@h:9/v1?api-key={secrets.REDACTED}"


@pytest.mark.parametrize(
    "override",
    [
        f"train.hub_token={HUB_TOKEN}",
        f"eval.endpoint.api_key_env={ENV_KEY}",
        f'++train.extra_headers="Authorization: Bearer {BEARER}"',
        f"eval.endpoint.base_url=https://bob:{SLASH_PASSWORD}@h/v1",
    ],
)
def test_recorded_overrides_and_argv_are_redacted(override):
    recorded = secrets.redact_override(override)
    assert recorded is None or shown(recorded) == [], recorded
    assert shown(" ".join(secrets.redact_argv([override]))) == []


@pytest.mark.parametrize("value", ["sk-proj-abc123DEF456", ENV_KEY, "hf_abcdefghijkl", "a b", "0123456789abcdef0123"])
def test_a_key_in_an_env_field_looks_like_a_key(value):
    assert secrets.looks_like_key(value)


@pytest.mark.parametrize("value", ["OPENAI_API_KEY", "MY_JUDGE_KEY2", "together_api_key", "FIREWORKS_API_KEY", "${oc.env:X,null}"])  # fmt: skip
def test_an_environment_variable_name_does_not(value):
    assert not secrets.looks_like_key(value)


@pytest.mark.parametrize("key", ["eval.endpoint.api_key_env", "eval.judge.api_key_env"])
def test_a_key_pasted_into_an_env_field_is_refused_without_printing_it(key):
    from launchers import check

    with pytest.raises(UserError) as caught:
        check(compose_checked(*TINY, f"{key}={ENV_KEY}"))
    message = str(caught.value)
    assert ENV_KEY not in message and "export " in message and key in message, message


def test_a_key_in_a_compared_endpoint_is_refused_too():
    from launchers import check

    endpoint = f'[{{name: x, base_url: "http://127.0.0.1:9/v1", model: m, api_key_env: "{ENV_KEY}"}}]'
    with pytest.raises(UserError) as caught:
        check(compose_checked(*TINY, f"eval.compare_models={endpoint}"))
    assert ENV_KEY not in str(caught.value) and "eval.compare_models[0].api_key_env" in str(caught.value)


def test_log_lines_through_the_root_logger_are_redacted(tmp_path):
    handler = logging.FileHandler(tmp_path / "x.log")
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        secrets.install_log_filter()
        logging.getLogger("trainer.anything").warning(
            "judge at %s failed: Bearer %s", f"http://u:{AT_PASSWORD}@h/v1?api-key={QUERY_KEY}", BEARER
        )
        handler.flush()
    finally:
        root.removeHandler(handler)
        handler.close()
    text = (tmp_path / "x.log").read_text()
    assert "judge at http://" in text and shown(text) == [], text


def test_wandb_gets_no_command_line_or_program():
    """The settings the Trainer's wandb.init reads: the metadata record (which holds ``args``) is off."""
    import wandb

    from trainer.run import loggers

    settings = wandb.Settings()
    settings.update_from_env_vars(loggers.WANDB_PRIVATE)
    assert settings.x_disable_meta and settings.x_disable_machine_info and settings.disable_git
    assert settings.disable_code and settings.program == "hydratune"


# ---------------------------------------------------------------- real runs, every file grepped


@pytest.mark.slow
@pytest.mark.parametrize("logger", ["wandb", "tensorboard", "mlflow"])
def test_no_planted_secret_reaches_a_run_or_its_tracker(logger, tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = hydratune(
        *TINY,
        "train.max_steps=2",
        f"logger={logger}",
        *SECRET_OVERRIDES,
        f"hydra.run.dir={run_dir}",
        cache=cache_dir,
        env={"WANDB_MODE": "offline"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tracker_files = {
        "wandb": list(run_dir.glob("wandb/offline-run-*/run-*.wandb")),
        "tensorboard": list(run_dir.rglob("events.out.tfevents.*")),
        "mlflow": [run_dir / "mlflow.db"],
    }[logger]
    assert tracker_files and all(f.stat().st_size > 0 for f in tracker_files), tracker_files
    # The redacted values are there, so the grep reads the files that would hold the secrets.
    assert f"http://{secrets.REDACTED}@127.0.0.1:9/v1" in (run_dir / "config.yaml").read_text()
    assert shown(result.stdout + result.stderr) == []
    assert leaks(run_dir, cache_dir) == []
    if logger == "wandb":
        record = b"".join(f.read_bytes() for f in tracker_files)
        assert b"learning_rate" in record and b"eval.judge.base_url" not in record  # config yes, argv no


@pytest.mark.slow
def test_no_planted_secret_reaches_a_sweep_or_its_printed_config(tmp_path, cache_dir):
    sweep_dir = tmp_path / "sweep"
    result = hydratune(
        "prepare", "-m", *TINY, *SECRET_OVERRIDES, "seed=1,2", f"hydra.sweep.dir={sweep_dir}", cache=cache_dir
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (sweep_dir / "multirun.yaml").is_file() and (sweep_dir / "1" / "config.yaml").is_file()
    assert shown(result.stdout + result.stderr) == []
    assert leaks(sweep_dir, cache_dir) == []
    printed = hydratune("--cfg", "job", *TINY, *SECRET_OVERRIDES, cache=cache_dir)
    assert printed.returncode == 0 and "base_url: http://***redacted***@127.0.0.1:9/v1" in printed.stdout
    assert shown(printed.stdout + printed.stderr) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "refused",
    [
        f"eval.endpoint.api_key_env={ENV_KEY}",
        f'++train.extra_headers="Authorization: Bearer {BEARER}"',
        f'eval.judge.base_ur="http://user:{AT_PASSWORD}@127.0.0.1:9/v1?api-key={QUERY_KEY}"',
    ],
)
def test_a_refused_override_is_recorded_and_printed_redacted(refused, tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    for args in (["prepare", *TINY, refused, f"hydra.run.dir={run_dir}"], ["--cfg", "job", *TINY, refused]):
        result = hydratune(*args, cache=cache_dir)
        assert result.returncode == 2 and "hydratune: error:" in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert shown(result.stdout + result.stderr) == [], result.stderr
    assert leaks(run_dir, cache_dir) == []


def test_an_unexpected_traceback_is_printed_redacted():
    import subprocess
    import sys

    from tests.helpers import REPO

    code = (
        "from trainer.config import secrets; secrets.install_excepthook(); "
        f"raise ConnectionError('no answer from http://u:{AT_PASSWORD}@127.0.0.1:9/v1?api-key={QUERY_KEY}')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1 and "ConnectionError: no answer from http://" in result.stderr, result.stderr
    assert shown(result.stderr) == []


@pytest.mark.parametrize(
    "advice",
    [
        "export HYDRATUNE_SERVE_KEY=$(openssl rand -hex 24) and name it",
        "clients then send 'Authorization: Bearer KEY' (the OpenAI SDK's api_key)",
        "`export OPENAI_API_KEY=...` then eval.judge.api_key_env=OPENAI_API_KEY",
        "api_key: ${oc.env:OPENAI_API_KEY,null}",
    ],
)
def test_advice_in_an_error_message_is_left_readable(advice):
    assert secrets.redact_text(advice) == advice
