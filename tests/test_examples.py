"""The four tutorial examples (examples/): each experiment composes to the tutorial's parameters, and each one's smoke
mode runs end to end (local ones on the tiny model, cloud ones against the fake provider), with the commands the
READMEs show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import launchers
from tests.helpers import REPO, compose, hydratune
from trainer.config.checks import check_config

#: The local examples' smoke mode (examples/*/README.md).
SMOKE = [
    "model=tiny_random", "hardware=cpu", "hardware.threads=1", "method=lora", "train.max_steps=2",
    "eval.max_examples=4", "eval.generation.max_new_tokens=8",
]  # fmt: skip
#: text-to-SQL only: tf32 needs an Ampere GPU, and 3072-token packed sequences are slow on a CPU (and beyond the tiny
#: model's 512-token context).
SQL_SMOKE = ["train.tf32=null", "train.max_length=512"]
RECIPE_SYSTEM = (
    "You are a helpful recipe assistant. You are to extract the generic ingredients from each of the recipes provided."
)
SQL_SYSTEM = (
    "You are an text to SQL query translator. Users will ask you questions in English and you will generate a SQL "
    "query based on the provided SCHEMA.\nSCHEMA:\n{context}"
)


def examples_of(cfg):
    from trainer.data import load_examples

    return load_examples(cfg.dataset)


# ---------------------------------------------------------------- the tutorials' parameters


def test_recipe_ner_composes_to_the_cookbook(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = compose("experiment=recipe_ner")
    launchers.check(cfg)
    assert (cfg.model.name_or_path, cfg.hardware.provider, cfg.hardware.suffix) == (
        "gpt-4o-mini-2024-07-18",
        "openai",
        "recipe-ner",
    )
    hw = cfg.hardware
    assert (hw.n_epochs, hw.batch_size, hw.learning_rate_multiplier, hw.seed) == ("auto", "auto", "auto", None)
    t = cfg.dataset.templates
    assert (t.system, t.assistant) == (RECIPE_SYSTEM, "{NER}")
    assert t.user == "Title: {title}\n\nIngredients: {ingredients}\n\nGeneric ingredients: "
    assert (list(cfg.dataset.train_rows), list(cfg.dataset.validation_rows)) == ([0, 101], [101, 201])
    assert cfg.eval.compare_base and cfg.eval.max_examples is None

    data = examples_of(cfg)
    assert (len(data.train), len(data.validation)) == (101, 100)
    import csv

    with open(REPO / cfg.dataset.path, newline="", encoding="utf-8") as f:
        first = next(csv.DictReader(f))
    user = f"Title: {first['title']}\n\nIngredients: {first['ingredients']}\n\nGeneric ingredients: "
    expected = [
        {"role": "system", "content": RECIPE_SYSTEM},
        {"role": "user", "content": user},
        {"role": "assistant", "content": first["NER"]},
    ]
    assert data.train[0]["messages"] == expected  # row 0 trains; rows 101-200 validate, in file order
    assert compose("experiment=recipe_ner", "dataset.path=data/recipes.csv").dataset.path == "data/recipes.csv"


def test_clippy_composes_to_the_azure_tutorial(monkeypatch):
    monkeypatch.chdir(REPO)
    for var, value in (
        ("AZURE_SUBSCRIPTION_ID", "s"),
        ("AZURE_RESOURCE_GROUP", "g"),
        ("AZURE_OPENAI_RESOURCE_NAME", "r"),
    ):
        monkeypatch.setenv(var, value)
    cfg = compose("experiment=clippy_azure")
    launchers.check(cfg)
    hw = cfg.hardware
    assert (cfg.model.name_or_path, hw.provider, hw.seed, hw.api_version) == (
        "gpt-4o-mini-2024-07-18",
        "azure_openai",
        105,
        "2024-08-01-preview",
    )
    dep = hw.deployment
    assert (dep.create, dep.delete_after, dep.name) == (True, True, "gpt-4o-mini-2024-07-18-ft")
    assert (dep.subscription_id, dep.resource_group, dep.resource_name) == ("s", "g", "r")
    data = examples_of(cfg)
    assert (len(data.train), len(data.validation)) == (10, 10)
    assert all(row["messages"][0]["content"].startswith("Clippy is a factual chatbot") for row in data.train)


def test_text_to_sql_composes_to_the_trl_guide(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = compose("experiment=text_to_sql_qlora")
    check_config(cfg)
    assert (cfg.model.name_or_path, cfg.model.chat_template, cfg.hardware.device) == (
        "codellama/CodeLlama-7b-hf",
        "chatml",
        "cuda",
    )
    q = cfg.method.quantization
    assert (cfg.method.name, q.load_in_4bit, q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant) == (
        "qlora",
        True,
        "nf4",
        True,
    )
    assert q.bnb_4bit_compute_dtype == "bfloat16"
    p = cfg.method.peft
    assert (p.r, p.lora_alpha, p.lora_dropout, p.target_modules, p.bias) == (256, 128, 0.05, "all-linear", "none")
    assert cfg.method.merge_adapter
    expected = {
        "num_train_epochs": 3, "per_device_train_batch_size": 3, "gradient_accumulation_steps": 2,
        "activation_checkpointing": True, "optim": "adamw_torch_fused", "learning_rate": 2e-4, "max_grad_norm": 0.3,
        "warmup_steps": 0.03, "lr_scheduler_type": "constant", "bf16": True, "tf32": True, "max_length": 3072,
        "packing": True,
    }  # fmt: skip
    train = OmegaConf.to_container(cfg.train)
    assert {k: train[k] for k in expected} == expected
    assert (cfg.eval.max_examples, cfg.logger.name) == (1000, "tensorboard")
    assert [m["_target_"] for m in cfg.eval.metrics][0] == "trainer.evaluation.metrics.ExactMatch"

    t = cfg.dataset.templates
    assert (t.system, t.user, t.assistant) == (SQL_SYSTEM, "{question}", "{answer}")
    data = examples_of(cfg)
    row = json.loads((REPO / cfg.dataset.path).read_text().splitlines()[0])
    expected_messages = [
        {"role": "system", "content": SQL_SYSTEM.format(context=row["context"])},
        {"role": "user", "content": row["question"]},
        {"role": "assistant", "content": row["answer"]},
    ]
    assert expected_messages in [r["messages"] for r in data.train + data.validation]
    hub = compose("experiment=text_to_sql_qlora", "dataset.path=b-mc2/sql-create-context")
    assert (hub.dataset.path, hub.dataset.validation_size, hub.dataset.max_train_examples) == (
        "b-mc2/sql-create-context",
        0.2,
        10000,
    )


def test_autotrain_llm_sft_composes_to_autotrains_defaults():
    cfg = compose("experiment=autotrain_llm_sft")
    check_config(cfg)
    expected = {
        "num_train_epochs": 1, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4,
        "learning_rate": 3e-5, "lr_scheduler_type": "linear", "warmup_steps": 0.1, "optim": "adamw_torch",
        "weight_decay": 0.0, "activation_checkpointing": True, "max_length": 1024, "packing": True,
        "save_total_limit": 1,
    }  # fmt: skip
    train = OmegaConf.to_container(cfg.train)
    assert {k: train[k] for k in expected} == expected
    assert (cfg.method.name, cfg.dataset.format, cfg.dataset.validation_size, cfg.eval.enabled) == (
        "full",
        "text",
        0,
        False,
    )


# ---------------------------------------------------------------- smoke mode, end to end


@pytest.mark.slow
@pytest.mark.parametrize(
    ("experiment", "extra"), [("text_to_sql_qlora", SQL_SMOKE), ("autotrain_llm_sft", [])], ids=["sql", "autotrain"]
)
def test_local_example_smoke_mode(experiment, extra, tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = hydratune(f"experiment={experiment}", *SMOKE, *extra, f"hydra.run.dir={run_dir}", cache=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "model" / "adapter_model.safetensors").is_file()
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("train_loss" in r for r in steps)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if experiment == "text_to_sql_qlora":  # merged after training; base and fine-tuned exact match
        assert (run_dir / "merged" / "model.safetensors").is_file()
        assert {"exact_match", "token_f1"} <= metrics["base"].keys() & metrics["finetuned"].keys()
        assert json.loads((run_dir / "model" / "adapter_config.json").read_text())["r"] == 256
    else:  # no validation split, as AutoTrain: nothing evaluated
        assert "finetuned" not in metrics


#: function calling: the four tools' definitions make each prompt about 1,200 tiny-tokenizer tokens, past the tiny
#: model's 512-token context (its rotary positions run further); two demonstrations (1,600 tokens) are refused by the
#: context check, so the smoke run has no few-shot column.
FUNCTION_SMOKE = ["train.max_length=1536", "eval.few_shot=0"]
TOOL_METRICS = {"tool_call_valid", "tool_name_accuracy", "tool_arguments_match", "tool_call_match"}


def test_function_calling_composes_and_its_held_out_requests_are_calls():
    from trainer.data.tool_calls import parse_calls
    from trainer.evaluation.local import queries

    cfg = compose("experiment=function_calling")
    check_config(cfg)
    assert (cfg.dataset.name, cfg.objective.headline[0], cfg.eval.few_shot) == (
        "function_calling",
        "tool_call_match",
        2,
    )
    assert {m["_target_"].rsplit(".", 1)[1] for m in cfg.eval.metrics} >= {"ToolCallMatch", "ToolCallValid"}
    data = examples_of(cfg)
    assert (len(data.train), len(data.validation), data.warnings) == (312, 48, [])
    due = [parse_calls(q.reference)[0] for q in queries(data.validation, None)]
    assert all(q.tools for q in queries(data.validation, None))
    assert sum(1 for calls in due if calls) >= 30 and any(calls and len(calls) == 2 for calls in due)  # parallel


@pytest.mark.slow
def test_function_calling_smoke_mode(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = hydratune(
        "experiment=function_calling", *SMOKE, *FUNCTION_SMOKE, f"hydra.run.dir={run_dir}", cache=cache_dir
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "model" / "adapter_model.safetensors").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for section in ("base", "finetuned"):
        assert TOOL_METRICS <= metrics[section].keys()
    assert "on tool_call_match" in (run_dir / "report.md").read_text()  # the verdict's headline


@pytest.mark.slow
def test_recipe_ner_smoke_mode_against_the_fake_openai(tmp_path, cache_dir, monkeypatch):
    from examples import cloud_smoke

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HYDRATUNE_CACHE", str(cache_dir))
    code, fake = cloud_smoke.run(["experiment=recipe_ner", f"hydra.run.dir={tmp_path}"])
    assert code == 0
    assert (fake.counters["uploads"], fake.counters["jobs_created"]) == (2, 1)
    (request,) = fake.job_requests
    assert (request["model"], request["suffix"]) == ("gpt-4o-mini-2024-07-18", "recipe-ner")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["base"]["exact_match"], metrics["finetuned"]["exact_match"]) == (0.0, 1.0)
    assert metrics["cost"]["examples"] == 101 and metrics["cost"]["epochs"] == 3
    assert fake.counters["chat"] == 200  # 100 validation rows, base and fine-tuned


@pytest.mark.slow
def test_clippy_smoke_mode_against_the_fake_azure(tmp_path, cache_dir, monkeypatch):
    from examples import cloud_smoke

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HYDRATUNE_CACHE", str(cache_dir))
    code, fake = cloud_smoke.run(["experiment=clippy_azure", f"hydra.run.dir={tmp_path}"])
    assert code == 0
    assert (fake.counters["deployments_created"], fake.counters["deployments_deleted"]) == (1, 1)
    (request,) = fake.job_requests
    assert (request["model"], request["seed"]) == ("gpt-4o-mini-2024-07-18", 105)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["finetuned"]["exact_match"] == 1.0 and "base" not in metrics  # no hardware.base_deployment


@pytest.mark.slow
def test_migrate_openai_finetune_smoke_mode(tmp_path, cache_dir, monkeypatch):
    """The migration walkthrough's two commands (its migrate.py): record the fake fine-tune (in this process: a
    subprocess's imports cost ~5 s), train the tiny model on the recording, three columns with the same metrics."""
    from examples.migrate_openai_finetune import migrate
    from launchers.cloud import record
    from tests.fake_provider import FakeProvider

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("OPENAI_API_KEY", migrate.KEY)
    with FakeProvider(api_key=migrate.KEY) as fake:
        migrate.fake_finetune(fake)
        record_args, train_args = migrate.steps(tmp_path, fake.openai_url, smoke=True)
        record.main(record_args[1:])
        recorded = [json.loads(line)["messages"] for line in (tmp_path / "recorded.jsonl").read_text().splitlines()]
        assert len(recorded) == 16 and all(m[-1]["content"] == fake.answers[m[1]["content"]] for m in recorded)
        result = hydratune(*train_args, cache=cache_dir, env={"OPENAI_API_KEY": migrate.KEY})
    assert result.returncode == 0, result.stderr[-3000:]
    assert fake.counters["chat"] == 16 + 4 and max(fake.prompts.values()) == 1  # 16 recorded, 4 held-out asked
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    provider, base, tuned = metrics["compare"]["openai-finetune"], metrics["base"], metrics["finetuned"]
    assert {"exact_match", "token_f1"} <= provider.keys() & base.keys() & tuned.keys()
    held_out = [json.loads(line)["messages"] for line in (REPO / migrate.PROMPTS).with_name("heldout.jsonl").open()]
    right = [fake.answers[m[1]["content"]] == m[2]["content"] for m in held_out[:4]]
    assert provider["exact_match"] == sum(right) / 4  # the column is the fake fine-tune's own answers
    assert "openai-finetune" in (tmp_path / "run" / "report.md").read_text()
    assert "| exact_match |" in migrate.table(tmp_path / "run")


def test_every_example_has_a_readme_with_its_smoke_command():
    for name in (
        "recipe_ner",
        "clippy_azure",
        "text_to_sql_qlora",
        "autotrain_llm_sft",
        "migrate_openai_finetune",
        "function_calling",
    ):
        readme = (REPO / "examples" / name / "README.md").read_text()
        assert f"experiment={name}" in readme
        assert Path(REPO / "conf" / "experiment" / f"{name}.yaml").is_file()
