"""Cloud options compose; impossible combinations fail before anything runs, with one paragraph."""

from __future__ import annotations

import pytest

from launchers.cloud.checks import check_cloud
from tests.conftest import compose
from trainer.errors import UserError

MODELS = ["gpt_4o_mini", "gpt_4_1_mini", "gpt_4_1_nano", "gpt_35_turbo"]


@pytest.mark.parametrize("hardware", ["openai", "azure_openai"])
@pytest.mark.parametrize("model", MODELS)
def test_every_cloud_option_composes_and_passes_the_checks(hardware, model):
    from trainer.config_checks import check_config

    cfg = compose(f"hardware={hardware}", f"model={model}")
    assert cfg.hardware.kind == "cloud" and cfg.model.source == "provider" and cfg.model.encoding
    check_config(cfg)
    check_cloud(cfg)
    assert cfg.model.name_or_path.replace("gpt-3.5", "gpt-35") in cfg.hardware.price_per_million_training_tokens or (
        hardware == "openai" and cfg.model.name_or_path in cfg.hardware.price_per_million_training_tokens
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=qlora"], "method=qlora is a local-only choice.*objective=sft or dpo"),
        (["method=dora"], "method=dora is a local-only choice"),
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
    cfg = compose("hardware=openai", "model=gpt_4o_mini", *overrides)
    with pytest.raises(UserError, match=message):
        check_cloud(cfg)


def test_provider_model_on_local_hardware():
    with pytest.raises(UserError, match="provider model"):
        check_cloud(compose("hardware=cpu", "model=gpt_4o_mini"))


def test_azure_deployment_needs_its_resource():
    cfg = compose("hardware=azure_openai", "model=gpt_4o_mini", "hardware.deployment.create=true")
    with pytest.raises(UserError, match="subscription_id, resource_group"):
        check_cloud(cfg)
