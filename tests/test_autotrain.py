"""`hydratune convert-autotrain`: AutoTrain llm-sft configs convert to experiments that compose (and run), with
AutoTrain's defaults filled in; what cannot be mapped stops with one paragraph naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tests.helpers import ASSETS, REPO, cli_run, compose, hydratune
from trainer.config.checks import check_config
from trainer.config.errors import UserError
from trainer.tools import autotrain

AUTOTRAIN = ASSETS / "autotrain"


@pytest.fixture(autouse=True)
def _a_gpu_machine(monkeypatch):
    """The conversions are checked in this process as on the GPU machine they are written for (bitsandbytes
    installed, a GPU); what this machine lacks is trainer.config.machine's business (tests/test_machine.py). The
    hydratune processes that train here are not patched: they pass this CPU's overrides."""
    from trainer.config import machine

    monkeypatch.setattr(machine, "installed", lambda module: True)
    monkeypatch.setattr(machine, "runs_on_cpu", lambda cfg: False)


def converted(tmp_path: Path, asset: str, *overrides: str, spec: dict | None = None):
    """Convert an asset (or ``spec``) into tmp_path/experiment/NAME.yaml; compose `experiment=NAME` from there."""
    spec = spec if spec is not None else yaml.safe_load((AUTOTRAIN / f"{asset}.yml").read_text())
    text = autotrain.convert(spec, f"{asset}.yml")
    (tmp_path / "experiment").mkdir(exist_ok=True)
    (tmp_path / "experiment" / f"{asset}.yaml").write_text(text)
    cfg = compose(f"experiment={asset}", f"hydra.searchpath=[file://{tmp_path}]", *overrides)
    check_config(cfg)
    return cfg, text


def test_chat_messages_column(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg, _ = converted(tmp_path, "chat_messages")
    assert (cfg.model.name_or_path, cfg.model.chat_template, cfg.run_name) == (
        "HuggingFaceTB/SmolLM2-1.7B-Instruct",
        None,  # chat_template: tokenizer keeps the tokenizer's own
        "autotrain-smollm2-finetune",
    )
    d = cfg.dataset
    assert (d.format, d.path, d.validation_split, d.train_on_all_tokens) == (
        "chat",
        "HuggingFaceH4/no_robots",
        "test",
        True,
    )
    assert (cfg.method.name, cfg.logger.name, cfg.eval.enabled) == ("full", "tensorboard", True)
    train = OmegaConf.to_container(cfg.train)
    assert train["learning_rate"] == 1e-5 and isinstance(train["learning_rate"], float)  # YAML reads 1e-5 as a string
    expected = {
        "num_train_epochs": 2, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 8, "max_length": 2048,
        "optim": "paged_adamw_8bit", "bf16": True, "packing": True, "warmup_steps": 0.1, "eval_strategy": "epoch",
        "load_best_model_at_end": True, "activation_checkpointing": True,
    }  # fmt: skip
    assert {k: train[k] for k in expected} == expected


@pytest.mark.slow
def test_plain_text_column_converts_and_trains(tmp_path, cache_dir, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg, text = converted(tmp_path, "plain_text")
    d = cfg.dataset
    assert (d.format, d.path, d.validation_size, cfg.eval.enabled) == (
        "text",
        "examples/autotrain_llm_sft/data/train.csv",  # AutoTrain's local layout: DIR/train.csv
        0,
        False,
    )
    assert (cfg.train.fp16, cfg.train.bf16, cfg.train.max_length) == (True, False, 1024)
    assert "max_prompt_length=512 is a DPO/ORPO setting" in text  # ignored as AutoTrain does, and said so

    # the command: convert with --out into a config dir, then train the converted experiment on the tiny model
    out = tmp_path / "conf" / "experiment" / "guanaco.yaml"
    result = hydratune("convert-autotrain", str(AUTOTRAIN / "plain_text.yml"), "--out", str(out), cache=cache_dir)
    assert result.returncode == 0, result.stderr
    assert f"hydratune experiment=guanaco 'hydra.searchpath=[file://{tmp_path / 'conf'}]'" in result.stdout
    run = tmp_path / "run"
    result = hydratune(
        "experiment=guanaco", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=tiny_random",
        "hardware=cpu", "hardware.threads=1", "train.max_steps=2", "train.fp16=false", f"hydra.run.dir={run}",
        cache=cache_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "model" / "model.safetensors").is_file()  # peft: false -> full fine-tuning
    assert json.loads((run / "data_stats.json").read_text())["packing"] is True


def test_peft_int4_and_the_hub_token_is_never_written(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_USERNAME", "someone")
    spec = yaml.safe_load((AUTOTRAIN / "peft_int4.yml").read_text())
    spec["hub"]["token"] = "hf_SECRET0123456789"
    cfg, text = converted(tmp_path, "peft_int4", spec=spec)
    assert "hf_SECRET" not in text and "HF_TOKEN" in text
    assert (cfg.model.name_or_path, cfg.model.chat_template, cfg.method.name) == (
        "codellama/CodeLlama-7b-hf",  # hydratune's own codellama_7b option (dtype, template settings)
        "chatml",
        "qlora",
    )
    q = cfg.method.quantization
    assert (q.load_in_4bit, q.bnb_4bit_quant_type, q.bnb_4bit_compute_dtype, q.bnb_4bit_use_double_quant) == (
        True,
        "nf4",
        "float16",  # AutoTrain's int4
        False,
    )
    p = cfg.method.peft
    assert (p.r, p.lora_alpha, p.lora_dropout, list(p.target_modules)) == (
        256,
        128,
        0.05,
        ["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    assert (cfg.train.push_to_hub, cfg.train.hub_model_id, cfg.train.hub_private_repo) == (
        True,
        "someone/codellama-sql-qlora",
        True,
    )
    assert (cfg.train.max_grad_norm, cfg.train.warmup_steps, cfg.logger.name, cfg.logger.logging_steps) == (
        0.3,
        0.03,
        "wandb",
        10,
    )


def test_merge_adapter_and_the_older_task_llm_form(tmp_path):
    cfg, _ = converted(tmp_path, "merge_adapter")
    assert (cfg.method.name, cfg.method.merge_adapter, cfg.method.quantization, cfg.method.peft.r) == (
        "lora",
        True,
        None,
        16,
    )
    assert (cfg.model.name_or_path, cfg.seed, cfg.train.activation_checkpointing) == (
        "Qwen/Qwen2.5-1.5B-Instruct",
        7,
        False,
    )
    assert (cfg.dataset.format, cfg.dataset.validation_split, cfg.train.eval_strategy) == ("text", "test", "epoch")


def test_int8_and_distributed_backend(tmp_path):
    spec = yaml.safe_load((AUTOTRAIN / "merge_adapter.yml").read_text())
    spec["params"].update(quantization="int8", distributed_backend="ddp")
    cfg, _ = converted(tmp_path, "int8", "hardware.device=cuda", spec=spec)
    assert (cfg.method.quantization.load_in_8bit, cfg.method.quantization.load_in_4bit) == (True, False)
    assert cfg.hardware.name == "ddp"


def test_an_unmappable_key_is_one_paragraph_naming_it(tmp_path, cache_dir):
    with pytest.raises(UserError, match=r"params\.use_sweep has no hydratune equivalent"):
        autotrain.convert(yaml.safe_load((AUTOTRAIN / "unmappable.yml").read_text()), "unmappable.yml")
    result = hydratune(
        "convert-autotrain", str(AUTOTRAIN / "unmappable.yml"), "--out", str(tmp_path / "x.yaml"), cache=cache_dir
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "params.use_sweep" in result.stderr
    assert not (tmp_path / "x.yaml").exists()


def test_llm_dpo_converts_to_objective_dpo(tmp_path, monkeypatch):
    # AutoTrain's llama3-8b-dpo-qlora sample: task llm + params.trainer dpo, ChatML conversations, QLoRA, fp16.
    monkeypatch.setenv("HF_USERNAME", "someone")
    cfg, text = converted(tmp_path, "dpo", "hardware.device=cuda")
    assert (cfg.objective.name, cfg.dataset.format, cfg.method.name, cfg.model.chat_template) == (
        "dpo",
        "preference",
        "qlora",
        "chatml",
    )
    assert (cfg.dataset.path, dict(cfg.dataset.columns), cfg.eval.enabled) == ("mlabonne/orpo-dpo-mix-40k", {}, False)
    assert dict(cfg.objective.args) == {"max_length": 1024, "beta": 0.1}  # block_size; dpo_beta (AutoTrain's default)
    assert (cfg.train.num_train_epochs, cfg.train.learning_rate, cfg.train.fp16, "packing" in cfg.train) == (
        3,
        3e-5,
        True,
        False,
    )
    assert "params.max_prompt_length=512: TRL's DPOConfig has no such limit" in text
    assert "prompt_text_column=prompt is not read" in text  # the chat template takes the prompt from chosen


def test_llm_orpo_converts_to_the_experimental_objective(tmp_path):
    # AutoTrain's smollm2_orpo sample (task llm-orpo); dpo_beta is DPO's, ignored by ORPO in AutoTrain too.
    spec = yaml.safe_load((AUTOTRAIN / "orpo.yml").read_text())
    spec["params"].update(dpo_beta=0.3, max_completion_length=256, mixed_precision=None)
    cfg, text = converted(tmp_path, "orpo", spec=spec)
    assert (cfg.objective.name, cfg.objective.experimental, cfg.dataset.format) == ("orpo", True, "preference")
    # beta: objective=orpo's own (TRL's default, which AutoTrain trains with)
    assert dict(cfg.objective.args) == {"beta": 0.1, "max_length": 1024, "max_completion_length": 256}
    assert "params.dpo_beta=0.3 is a DPO setting: llm-orpo ignores it" in text
    plain = {**spec, "data": {**spec["data"], "chat_template": None}}  # plain texts: the prompt column is read
    plain["data"]["column_mapping"] = {"text_column": "good", "rejected_text_column": "bad", "prompt_text_column": "q"}
    cfg, _ = converted(tmp_path, "orpo_plain", spec=plain)
    assert dict(cfg.dataset.columns) == {"chosen": "good", "rejected": "bad", "prompt": "q"}


def test_llm_reward_converts_composes_and_reads_autotrains_text_pairs(tmp_path, monkeypatch):
    # AutoTrain's documented reward data: whole texts in text / rejected_text, no prompt column.
    monkeypatch.chdir(REPO)
    cfg, _ = converted(tmp_path, "reward")
    assert (cfg.objective.name, cfg.objective.head, cfg.method.name, cfg.method.quantization) == (
        "reward",
        "sequence_classification",
        "lora",
        None,
    )
    assert dict(cfg.dataset.columns) == {"chosen": "text", "rejected": "rejected_text"}
    assert dict(cfg.objective.args) == {"max_length": 512}
    from trainer import data

    rows = data.load_examples(cfg.dataset, None).train
    assert len(rows) == 4 and not data.load_examples(cfg.dataset, None).skipped
    pair = next(r for r in rows if "I am" in r["prompt"][0]["content"])
    assert pair == {  # the shared beginning, up to its last whitespace, is the prompt
        "prompt": [{"role": "user", "content": "human: how are you \\n bot: I am"}],
        "chosen": [{"role": "assistant", "content": "fine"}],
        "rejected": [{"role": "assistant", "content": "not fine"}],
    }


def test_preference_tasks_need_the_rejected_column_and_no_other_reference_model():
    spec = yaml.safe_load((AUTOTRAIN / "dpo.yml").read_text())
    spec["data"]["column_mapping"].pop("rejected_text_column")
    with pytest.raises(UserError, match="rejected_text_column is missing"):
        autotrain.convert(spec, "dpo.yml")
    spec = yaml.safe_load((AUTOTRAIN / "dpo.yml").read_text())
    spec["params"].update(peft=False, model_ref="other/model")
    with pytest.raises(UserError, match="params.model_ref=other/model cannot be converted"):
        autotrain.convert(spec, "dpo.yml")


BASE = {"task": "llm-sft", "base_model": "gpt2", "data": {"path": "org/data"}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"backend": "spaces-a10g-large"}, "backend=spaces-a10g-large cannot be converted"),
        ({"params": {"padding": "left"}}, "params.padding=left cannot be converted"),
        ({"params": {"unsloth": True}}, "params.unsloth=true cannot be converted"),
        ({"params": {"lr": "fast"}}, "params.lr='fast' should be a number"),
        ({"data": {"path": "org/data", "train_split": "en:train"}}, "names a dataset configuration"),
        ({"data": {"path": "org/data", "column_mapping": {"label_column": "y"}}}, "data.column_mapping.label_column"),
        ({"task": "text-classification"}, "task=text-classification cannot be converted"),
        ({"task": "llm-grpo"}, "task=llm-grpo cannot be converted"),
        ({"hub": {"push_to_hub": True}}, "needs hub.username"),
        ({"wandb": {"project": "x"}}, "wandb has no hydratune equivalent"),
    ],
)
def test_what_cannot_be_mapped_is_named(change, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("(", r"\(")):
        autotrain.convert({**BASE, **change}, "c.yml")


def test_out_is_not_overwritten_without_force(tmp_path, monkeypatch):
    out = tmp_path / "experiment" / "mine.yaml"
    autotrain.main([str(AUTOTRAIN / "chat_messages.yml"), "--out", str(out)])
    with pytest.raises(UserError, match="already exists"):
        autotrain.main([str(AUTOTRAIN / "chat_messages.yml"), "--out", str(out)])
    autotrain.main([str(AUTOTRAIN / "chat_messages.yml"), "--out", str(out), "--force"])
    with pytest.raises(UserError, match="is not valid YAML"):
        bad = tmp_path / "bad.yml"
        bad.write_text("task: [llm-sft\n")
        autotrain.main([str(bad)])


def test_the_examples_autotrain_config_converts(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    spec = yaml.safe_load((REPO / "examples" / "autotrain_llm_sft" / "autotrain.yml").read_text())
    cfg, _ = converted(tmp_path, "example", spec=spec)
    assert (cfg.method.name, cfg.method.merge_adapter, cfg.train.max_length, cfg.train.learning_rate) == (
        "lora",
        True,
        512,
        2e-4,
    )


def _push_experiment(tmp_path: Path) -> None:
    spec = yaml.safe_load((AUTOTRAIN / "peft_int4.yml").read_text())  # hub.username: ${HF_USERNAME}, push_to_hub
    (tmp_path / "experiment").mkdir(exist_ok=True)
    (tmp_path / "experiment" / "push.yaml").write_text(autotrain.convert(spec, "peft_int4.yml"))


def test_push_to_hub_without_hf_username_refuses_naming_the_variable(tmp_path, monkeypatch, capsys):
    _push_experiment(tmp_path)
    assert "HF_USERNAME" in (tmp_path / "experiment" / "push.yaml").read_text().split("defaults:")[0]  # the header
    monkeypatch.delenv("HF_USERNAME", raising=False)
    code, _, err = cli_run(capsys, "--cfg", "job", "experiment=push", f"hydra.searchpath=[file://{tmp_path}]")
    assert code == 2
    assert err.count("\n") == 1 and "environment variable HF_USERNAME" in err and "train.hub_model_id" in err
    monkeypatch.setenv("HF_USERNAME", "someone")
    code, out, err = cli_run(capsys, "--cfg", "job", "experiment=push", f"hydra.searchpath=[file://{tmp_path}]")
    assert code == 0, err
    assert "hub_model_id: ${oc.env:HF_USERNAME}/codellama-sql-qlora" in out  # resolved when the run starts


def test_method_lora_over_a_converted_qlora_experiment_drops_the_quantization(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_USERNAME", "someone")
    _push_experiment(tmp_path)
    searchpath = f"hydra.searchpath=[file://{tmp_path}]"
    assert compose("experiment=push", searchpath).method.quantization.bnb_4bit_compute_dtype == "float16"
    cfg = compose("experiment=push", searchpath, "method=lora")
    assert (cfg.method.name, cfg.method.quantization, cfg.method.peft.r) == ("lora", None, 256)
    check_config(compose("experiment=push", searchpath, "method=lora", "hardware=cpu", "train.bf16=false"))
    assert compose("experiment=push", searchpath, "method.quantization=null").method.quantization is None
