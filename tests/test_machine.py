"""trainer.config.machine: an optimizer, a mixed-precision flag or an attention kernel this machine cannot run stops
the run in the check pass (before any model loads, before torch is imported) with one paragraph naming the missing
package or the CPU; and the pass-through overrides of trainer/cli.py mean what the libraries document."""

from __future__ import annotations

import sys

import pytest

from launchers import check
from tests.helpers import compose
from trainer import cli
from trainer.config import machine
from trainer.config.errors import UserError

TINY = ("model=tiny_random",)


def _composed(*args: str):
    """As the CLI composes: ``train.x=`` and ``objective.args.x=`` pass through (trainer.cli._pass_through)."""
    return compose(*[cli._pass_through(a) for a in args])


def _refused(*overrides: str) -> str:
    with pytest.raises(UserError) as refused:
        check(_composed(*TINY, *overrides))
    return str(refused.value)


@pytest.fixture
def without(monkeypatch):
    """Make modules look missing to importlib.util.find_spec, the way a machine without them is."""

    def hide(*modules: str) -> None:
        real = machine.installed
        monkeypatch.setattr(machine, "installed", lambda module: module not in modules and real(module))

    return hide


def test_an_optimizer_whose_package_is_missing_names_it(without):
    without("bitsandbytes")
    message = _refused("hardware=single_gpu", "train.optim=paged_adamw_8bit")
    assert "train.optim=paged_adamw_8bit needs the bitsandbytes package" in message and "adamw_torch" in message
    without("galore_torch")
    assert "galore-torch" in _refused("hardware=single_gpu", "train.optim=galore_adamw")


def test_an_installed_optimizer_passes_and_a_paged_one_needs_a_gpu(monkeypatch):
    monkeypatch.setattr(machine, "installed", lambda module: True)  # bitsandbytes present
    check(_composed(*TINY, "hardware=single_gpu", "train.optim=paged_adamw_8bit"))
    assert "CPU" in _refused("hardware=cpu", "train.optim=paged_adamw_8bit")
    check(_composed(*TINY, "hardware=cpu", "train.optim=adamw_torch"))


def test_fp16_on_the_cpu_is_refused_naming_the_cpu():
    message = _refused("hardware=cpu", "train.fp16=true")
    assert "train.fp16=true" in message and "hardware=cpu" in message and "CPU" in message
    assert "pick one" in _refused("hardware=single_gpu", "train.fp16=true", "train.bf16=true")
    check(_composed(*TINY, "hardware=cpu", "train.bf16=true"))  # bfloat16 autocast runs on a CPU
    check(_composed(*TINY, "hardware=single_gpu", "train.fp16=true"))


def test_auto_on_a_machine_without_a_gpu_device_is_the_cpu(monkeypatch, tmp_path):
    cfg = compose(*TINY, "hardware=auto")
    monkeypatch.setattr(machine, "Path", lambda _: tmp_path)  # /dev with no nvidia* nor kfd
    assert machine.runs_on_cpu(cfg) is sys.platform.startswith("linux")
    (tmp_path / "nvidia0").touch()
    assert machine.runs_on_cpu(cfg) is False


def test_attention_kernels(without):
    assert "CUDA GPUs only" in _refused("hardware=cpu", "model.attn_implementation=flash_attention_2")
    without("flash_attn")
    assert "flash-attn" in _refused("hardware=single_gpu", "model.attn_implementation=flash_attention_2")
    message = _refused("model.attn_implementation=fast")
    assert "eager, sdpa" in message
    without("kernels")
    assert "kernels package" in _refused("model.attn_implementation=kernels-community/flash-attn")
    check(_composed(*TINY, "hardware=cpu", "model.attn_implementation=sdpa"))


def test_every_broken_machine_rule_is_reported_together(without):
    without("bitsandbytes")
    message = _refused("hardware=cpu", "train.fp16=true", "train.optim=paged_adamw_8bit", "model.attn_implementation=x")
    assert "bitsandbytes" in message and "train.fp16" in message and "model.attn_implementation=x" in message


# ---------------------------------------------------------------- pass-through overrides (trainer/cli.py)


def test_objective_args_take_any_argument_of_the_trl_class_without_plus():
    cfg = _composed("objective=dpo", "dataset=quickstart_pairs", *TINY, "objective.args.loss_type=sigmoid")
    check(cfg)
    assert cfg.objective.args.loss_type == "sigmoid"  # DPOConfig wraps one loss in a list itself
    cfg = _composed("objective=dpo", "dataset=quickstart_pairs", *TINY, "objective.args.label_smoothing=0.1")
    check(cfg)
    with pytest.raises(UserError, match="not an argument of trl.DPOConfig"):
        check(_composed("objective=dpo", "dataset=quickstart_pairs", *TINY, "objective.args.loss_typ=sigmoid"))


def test_tilde_on_a_nullable_schema_field_is_null():
    assert cli._pass_through("~method.quantization") == "method.quantization=null"
    assert cli._pass_through("~train.optim") == "~train.optim"  # a free-form node: Hydra deletes it itself
    cfg = _composed(*TINY, "method=qlora", "~method.quantization")
    assert cfg.method.quantization is None
    assert "learning_rate" not in _composed(*TINY, "~train.learning_rate").train
