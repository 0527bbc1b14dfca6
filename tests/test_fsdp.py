"""hardware=fsdp: the generated FSDP2 settings go through the Trainer's and accelerate's own parsers, the wrap policy
resolves against the real model, the launch command, and the refusals (FSDP cannot run on this CPU: README)."""

from __future__ import annotations

import json

import pytest

from launchers import distributed, fsdp
from tests.helpers import compose, hydratune
from trainer.config.errors import UserError

pytestmark = pytest.mark.serial  # counts on the cores being free (make test runs these alone)

TINY = ["model=tiny_random", "hardware=fsdp"]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_settings_build_accelerates_fsdp2_plugin_for_the_model(method, cache_dir, tmp_path):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from trl import SFTConfig

    from trainer import models

    cfg = compose(
        *TINY, f"method={method}", "hardware.fsdp.activation_checkpointing=true", "hardware.fsdp.cpu_offload=true"
    )
    layers = fsdp.layer_classes(cfg.model, str(cache_dir))
    assert layers == ["LlamaDecoderLayer"]  # from LlamaForCausalLM._no_split_modules, typed nowhere
    settings = fsdp.build(cfg.hardware, layers)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], activation_checkpointing=False, **settings)
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    assert plugin.fsdp_version == 2
    assert plugin.activation_checkpointing is True
    assert type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy"  # FSDP2's offload policy
    assert plugin.reshard_after_forward is True
    assert "SHARDED_STATE_DICT" in str(plugin.state_dict_type)

    tokenizer = models.tiny_tokenizer()
    model = models.tiny_model(tokenizer)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)  # what accelerate's FSDP2 prepare applies to the model
    wrapped = [m for m in model.modules() if policy(m)]
    assert len(wrapped) == model.config.num_hidden_layers
    assert {type(m).__name__ for m in wrapped} == {"LlamaDecoderLayer"}


@pytest.mark.slow
def test_dry_run_prints_the_launch_command_and_settings(tmp_path, cache_dir):
    result = hydratune(
        *TINY,
        "hardware.num_processes=2",
        "hardware.master_port=29611",
        f"hydra.run.dir={tmp_path}",
        "hardware.dry_run=true",
        cache=cache_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "--nproc_per_node 2" in out and "-m launchers.worker --run-dir" in out and "--master_port 29611" in out
    settings, _ = json.JSONDecoder().raw_decode(out, out.index("{", out.index("FSDP2 settings")))
    assert settings["fsdp"] is True
    assert settings["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert settings["fsdp_config"]["version"] == 2
    assert not (tmp_path / "config.yaml").exists()  # nothing started


@pytest.mark.slow  # a launcher process
def test_refuses_to_start_on_the_cpu(tmp_path, cache_dir):
    result = hydratune(*TINY, "hardware.num_processes=2", f"hydra.run.dir={tmp_path}", cache=cache_dir)
    assert result.returncode == 2
    assert "turns FSDP on only for GPU-class devices" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hardware.zero_stage=3"], "pick one"),
        (["method.merge_adapter=true"], "cannot merge under FSDP"),
        (["train.activation_checkpointing=true", "hardware.fsdp.activation_checkpointing=true"], "refuses both"),
    ],
)
def test_impossible_combinations(overrides, message):
    cfg = compose(*TINY, *overrides)
    with pytest.raises(UserError, match=message):
        distributed.check(cfg)


def test_other_strategies_have_no_fsdp():
    assert compose("hardware=ddp").hardware.fsdp is None
