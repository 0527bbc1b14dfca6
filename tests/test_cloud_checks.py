"""Cloud options compose; impossible combinations fail before anything runs, with one paragraph."""

from __future__ import annotations

import pytest

from launchers import check
from tests.helpers import compose, compose_checked
from trainer.config.errors import UserError
from trainer.config.schema import hardware_schema

MODELS = ["gpt_4o_mini", "gpt_4_1_mini", "gpt_4o", "gpt_4_1", "gpt_4_1_nano", "gpt_35_turbo"]
RETIRED_AT_OPENAI = {"gpt_4_1_nano", "gpt_35_turbo"}


@pytest.mark.parametrize("hardware", ["openai", "azure_openai"])
@pytest.mark.parametrize("model", MODELS)
def test_every_cloud_option_composes_and_passes_the_checks(hardware, model):
    cfg = compose(f"hardware={hardware}", f"model={model}")
    assert hardware_schema(cfg).runner == "launchers.cloud" and cfg.model.source == "provider" and cfg.model.encoding
    if hardware == "openai" and model in RETIRED_AT_OPENAI:
        with pytest.raises(UserError, match="is retired at openai: new fine-tuning jobs closed on 2026-10-23"):
            check(cfg)
    else:
        check(cfg)
    assert cfg.model.name_or_path.replace("gpt-3.5", "gpt-35") in cfg.hardware.price_per_million_training_tokens or (
        hardware == "openai" and cfg.model.name_or_path in cfg.hardware.price_per_million_training_tokens
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=qlora"], "method=qlora is a local-only choice.*objective=sft or dpo"),
        (["method=dora"], "method=dora is a local-only choice"),
        (["method=freeze"], "method=freeze is a local-only choice"),
        (["method.init_adapter=."], "method.init_adapter=. continues a local adapter"),
        (["method.merge_adapter=true"], "local-only choice"),
        (["model=smollm2_135m"], "is a local model. Pick a provider model"),
        (["hardware.provider=anthropic"], "hardware.provider=anthropic is not a valid"),
        (["hardware.on_interrupt=detatch"], "Did you mean .detach."),
        (["hardware.n_epochs=0"], "hardware.n_epochs=0 must be a positive number or auto"),
        (["hardware.learning_rate_multiplier=fast"], "must be a positive number or auto"),
        (["dataset=text"], "dataset.format=text"),
        (["model.encoding=null"], "model.encoding is not set"),
    ],
)
def test_impossible_combinations(overrides, message):
    with pytest.raises(UserError, match=message):
        check(compose_checked("hardware=openai", "model=gpt_4o_mini", *overrides))


@pytest.mark.parametrize(
    ("hardware", "own", "foreign"),
    [
        (["hardware=openai", "model=gpt_4o_mini"], "learning_rate_multiplier", "lora_r"),
        (["hardware=azure_openai", "model=gpt_4o_mini"], "learning_rate_multiplier", "lora_r"),
        (["hardware=together", "model=together_llama3_1_8b_instruct"], "hardware.lora=true, with lora_r", "multiplier"),
    ],
)
def test_local_only_methods_are_refused_naming_the_providers_own_keys(hardware, own, foreign):
    with pytest.raises(UserError, match="method=qlora is a local-only choice") as refused:
        check(compose(*hardware, "method=qlora"))
    assert own in str(refused.value) and foreign not in str(refused.value)


def test_provider_model_on_local_hardware():
    with pytest.raises(UserError, match="provider model"):
        check(compose("hardware=cpu", "model=gpt_4o_mini"))


def test_azure_deployment_needs_its_resource():
    cfg = compose("hardware=azure_openai", "model=gpt_4o_mini", "hardware.deployment.create=true")
    with pytest.raises(UserError, match="subscription_id, resource_group"):
        check(cfg)


def test_retired_model_stops_the_command_before_anything_runs(tmp_path):
    from tests.helpers import hydratune

    run_dir = tmp_path / "run"
    done = hydratune("hardware=openai", "model=gpt_35_turbo", f"hydra.run.dir={run_dir}", cache=tmp_path / "cache")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    message = done.stderr.replace("\n", " ")
    assert "gpt-3.5-turbo-0125 is retired at openai: new fine-tuning jobs closed on 2026-10-23" in message
    assert "Instead use: model=gpt_4o_mini or model=gpt_4_1_mini" in message and "hardware=together" in message
    assert not (run_dir / "config.yaml").exists()  # refused before the run started


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        ("2026-12-01", (36, 44, True)),  # inside the 90 days: warned
        ("2026-09-01", (127, 135, False)),  # further out: no warning
        ("2027-01-05", (1, 9, True)),
    ],
)
def test_days_left_come_from_the_model_option(monkeypatch, today, expected):
    from launchers.cloud import lifecycle

    monkeypatch.setenv("HYDRATUNE_TODAY", today)
    life = lifecycle.check(compose("hardware=openai", "model=gpt_4o_mini"))
    assert (life.days_to_training_close, life.days_to_shutdown, life.closing_soon) == expected
    assert f"new fine-tuning jobs stop on 2027-01-06 ({expected[0]} days left)" in life.warning()
    assert lifecycle.lifecycle(compose("hardware=azure_openai", "model=gpt_4o_mini")) is None  # no Azure dates set


def test_training_closed_model_is_refused_and_dates_are_config(monkeypatch):
    monkeypatch.setenv("HYDRATUNE_TODAY", "2027-01-06")
    with pytest.raises(UserError, match="gpt-4o-mini-2024-07-18 is retired at openai.*closed on 2027-01-06"):
        check(compose("hardware=openai", "model=gpt_4o_mini"))
    # a user who learns of a later date corrects the option (or overrides it) and the model works again
    later = compose("hardware=openai", "model=gpt_4o_mini", "model.lifecycle.openai.training_closes=2027-06-30")
    check(later)
    with pytest.raises(UserError, match=r"model.lifecycle.openai.shutdown=soon is not a date: write it as YYYY-MM-DD"):
        check(compose("hardware=openai", "model=gpt_4o_mini", "model.lifecycle.openai.shutdown=soon"))
