"""engine.train called in this process on the tiny model, with list- and dict-valued overrides on every
pass-through group (train -> trl.SFTConfig, method.peft -> peft.LoraConfig, eval.metrics -> metric objects): the
libraries get plain Python containers, the run trains and saves, and peft reloads the adapter it saved."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import compose

pytestmark = pytest.mark.slow  # runs a training job (tiny model) or several processes

OVERRIDES = [
    "model=tiny_random",
    "hardware.threads=1",
    "logger=none",
    "++train.max_steps=2",
    "eval.max_examples=4",
    "eval.generation.max_new_tokens=4",
    "eval.compare_base=false",
    # list- and dict-valued, one of each per pass-through group
    "method.peft.target_modules=[q_proj,v_proj]",
    "++method.peft.rank_pattern={q_proj: 4}",
    "++train.label_names=[labels]",
    "++train.lr_scheduler_kwargs={num_cycles: 0.25}",
    "eval.metrics=[{_target_: trainer.evaluation.metrics.ExactMatch, lowercase: false}, {_target_: trainer.evaluation.metrics.TokenF1}]",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache_dir):
    from trainer.config.checks import check_config
    from trainer.engine import pipeline as engine
    from trainer.run import rundir

    run_dir = tmp_path_factory.mktemp("inprocess")
    cfg = compose(*OVERRIDES, f"output_dir={run_dir}", f"cache_dir={cache_dir}")
    check_config(cfg)
    rundir.start(cfg, run_dir, "train")
    results = engine.train(cfg, run_dir, "cpu")
    return cfg, run_dir, results


def test_train_in_process_returns_the_finetuned_scores(run):
    _, run_dir, results = run
    finetuned = results["finetuned"]
    assert finetuned["examples"] == 4
    assert math.isfinite(finetuned["eval_loss"]) and finetuned["eval_loss"] > 0
    assert 0.0 <= finetuned["exact_match"] <= 1.0 and 0.0 <= finetuned["token_f1"] <= 1.0
    assert "base" not in results  # eval.compare_base=false
    assert json.loads((run_dir / "metrics.json").read_text())["finetuned"]["eval_loss"] == finetuned["eval_loss"]


def test_list_and_dict_overrides_reach_the_adapter_config(run):
    _, run_dir, _ = run
    saved = json.loads((run_dir / "model" / "adapter_config.json").read_text())
    assert sorted(saved["target_modules"]) == ["q_proj", "v_proj"]
    assert saved["rank_pattern"] == {"q_proj": 4}


def test_saved_adapter_reloads_with_peft_and_holds_the_trained_weights(run):
    import torch
    from peft import AutoPeftModelForCausalLM, get_peft_model_state_dict
    from safetensors.torch import load_file

    _, run_dir, _ = run
    saved = load_file(run_dir / "model" / "adapter_model.safetensors")
    model = AutoPeftModelForCausalLM.from_pretrained(run_dir / "model")
    loaded = get_peft_model_state_dict(model)
    assert loaded.keys() == saved.keys()
    assert {k for k in saved if ".q_proj." in k} and not {k for k in saved if ".k_proj." in k}
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key
    lora_b = [v for k, v in saved.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # lora_B starts at zero: nonzero means it trained
    assert {v.shape[1] for k, v in saved.items() if "q_proj.lora_B" in k} == {4}  # rank_pattern's rank


def test_library_objects_get_plain_containers(run, tmp_path):
    from trainer import models
    from trainer.config.plain import build
    from trainer.engine.objectives import training_args

    cfg, _, _ = run
    args = training_args(cfg, tmp_path, "cpu", report_to=[])
    assert type(args.label_names) is list and args.label_names == ["labels"]
    assert type(args.lr_scheduler_kwargs) is dict and args.lr_scheduler_kwargs == {"num_cycles": 0.25}
    lora = models.peft_config(cfg.method, added_tokens=0)
    assert type(lora.target_modules) in (list, set) and set(lora.target_modules) == {"q_proj", "v_proj"}
    assert type(lora.rank_pattern) is dict
    metrics = [build(m) for m in cfg.eval.metrics]
    assert [m.name for m in metrics] == ["exact_match", "token_f1"] and metrics[0].lowercase is False
