"""hardware=together against a local fake of Together's API that the real `together` SDK talks to: estimate, upload,
job, events, weights downloaded into the run dir and loaded with peft / transformers, evaluated here, report; faults,
kill -9 and rerun, secrets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from launchers import check as check_cloud
from launchers import cloud
from tests.fake_provider import files_containing, write_chat_dataset
from tests.fake_together import ALL_ROUTES, FakeTogether
from tests.helpers import compose, kill_9_once_a_job_exists, preference_examples
from trainer.config.errors import UserError

API_KEY = "tg-test-KEY-0123456789abcdef"
FAST = ["hardware.poll_interval_s=0.01", "hardware.max_poll_interval_s=0.02", "hardware.retry_backoff_s=0.01"]
TINY = ["model.weights.source=tiny_random", "model.weights.name_or_path=tiny-random-llama"]
EVAL = ["eval.max_examples=4", "eval.generation.max_new_tokens=4", "eval.batch_size=4"]


@pytest.fixture
def fake(monkeypatch, tmp_path):
    for var in ("TOGETHER_API_KEY", "TOGETHER_BASE_URL", "TOGETHER_PROJECT_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    with FakeTogether(api_key=API_KEY) as server:
        monkeypatch.setenv("TOGETHER_API_KEY", API_KEY)
        monkeypatch.setenv("TOGETHER_BASE_URL", server.url)
        yield server


def overrides(tmp_path: Path, *extra: str) -> list[str]:
    data = tmp_path / "data.jsonl"
    if not data.exists():
        write_chat_dataset(data, 20)
    return [
        "hardware=together", "model=together_llama3_1_8b_instruct", *TINY, "dataset=chat_jsonl",
        f"dataset.path={data}", "dataset.validation_size=5", *FAST, *EVAL, *extra,
    ]  # fmt: skip


def together_cfg(tmp_path: Path, cache_dir: Path, *extra: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = compose(*overrides(tmp_path, *extra), f"cache_dir={cache_dir}")
    cfg.output_dir = str(tmp_path / "run")
    return cfg


def test_prepare_estimates_before_anything_is_sent(fake, tmp_path, cache_dir, capsys):
    cfg = together_cfg(tmp_path, cache_dir)
    assert cloud.run(cfg, "prepare") is None
    out = capsys.readouterr().out
    assert "together meta-llama/Meta-Llama-3.1-8B-Instruct-Reference: 15 training" in out and "$0.48/1M" in out
    assert fake.requests == []
    estimate = json.loads((Path(cfg.output_dir) / "cloud_estimate.json").read_text())["estimate"]
    assert estimate["epochs"] == 1 and estimate["usd"] == round(estimate["billed_tokens"] / 1e6 * 0.48, 4)
    full_dpo = together_cfg(tmp_path / "full", cache_dir, "hardware.lora=false", "objective=dpo")
    assert provider_prices(full_dpo)["meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"] == pytest.approx(0.54 * 2.5)


def provider_prices(cfg):
    from launchers.cloud import provider

    return provider.get(cfg.hardware).price_table(cfg)


@pytest.mark.slow  # evaluates the tiny model
def test_end_to_end_weights_downloaded_loaded_and_evaluated_here(fake, tmp_path, cache_dir, capsys, caplog):
    caplog.set_level("DEBUG")
    cfg = together_cfg(tmp_path, cache_dir, "hardware.lora_r=4", "hardware.n_evals=2", "hardware.suffix=recipes")
    cloud.run(cfg, "train")
    run_dir = Path(cfg.output_dir)
    assert (fake.counters["upload_requests"], fake.counters["jobs_created"], fake.counters["downloads"]) == (2, 1, 1)
    (request,) = fake.job_requests
    assert request["training_type"] == {"type": "Lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                                        "lora_trainable_modules": "all-linear"}  # fmt: skip
    assert request["training_method"]["method"] == "sft" and request["n_epochs"] == 1
    assert (request["learning_rate"], request["suffix"], request["n_evals"]) == (1e-5, "recipes", 2)
    assert request["validation_file"]  # n_evals > 0: the validation split is uploaded too

    # the adapter is in the run dir in save_pretrained layout, and loads with peft on the tiny base
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainer.models import resolve_path

    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (run_dir / "model").iterdir()}
    base = AutoModelForCausalLM.from_pretrained(resolve_path(compose("model=tiny_random").model, cache_dir))
    tuned = PeftModel.from_pretrained(base, str(run_dir / "model"))
    assert tuned.peft_config["default"].r == 4  # the rank the job asked for

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["job"]["weights"] == "model" and metrics["job"]["weights_kind"] == "adapter"
    assert set(metrics["base"]) == set(metrics["finetuned"]) >= {"eval_loss", "exact_match", "token_f1"}
    assert metrics["base"]["eval_loss"] != metrics["finetuned"]["eval_loss"]  # the downloaded adapter changed it
    assert metrics["finetuned"]["examples"] == 4
    assert metrics["job"]["final"] == {"loss": 0.5, "eval_loss": 0.55}
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    assert "fine-tuned" in (run_dir / "report.md").read_text()
    events = [json.loads(line) for line in (run_dir / "cloud_events.jsonl").read_text().splitlines()]
    assert len({e["id"] for e in events}) == len(events) and sum(e["type"] == "metrics" for e in events) == 4

    cfg.eval.enabled = False
    cloud.run(cfg, "eval")  # the recorded job's result again: no upload, no job, no second download
    assert (fake.counters["upload_requests"], fake.counters["jobs_created"], fake.counters["downloads"]) == (2, 1, 1)
    assert files_containing(run_dir, API_KEY) == []
    assert API_KEY not in caplog.text + "".join(capsys.readouterr())


@pytest.mark.slow  # loads and evaluates the downloaded (tiny) model
def test_full_fine_tuning_downloads_a_whole_model(fake, tmp_path, cache_dir):
    cfg = together_cfg(tmp_path, cache_dir, "method=full", "hardware.lora=false", "eval.compare_base=false")
    cloud.run(cfg, "train")
    assert fake.job_requests[-1]["training_type"] == {"type": "Full"}
    model_dir = Path(cfg.output_dir) / "model"
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(model_dir).config.hidden_size == 64
    metrics = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())
    assert metrics["job"]["weights_kind"] == "full" and "exact_match" in metrics["finetuned"]


def test_dpo_objective_with_its_own_hyperparameters(fake, tmp_path, cache_dir, monkeypatch):
    monkeypatch.setattr("launchers.cloud.prepare.load_examples", lambda *a: preference_examples())
    extra = ["dataset.format=preference", "objective=dpo", "hardware.dpo_beta=0.2", "eval.enabled=false"]
    cfg = together_cfg(tmp_path, cache_dir, *extra)
    cloud.run(cfg, "train")
    method = fake.job_requests[-1]["training_method"]
    assert (method["method"], method["dpo_beta"]) == ("dpo", 0.2)
    uploaded = next(iter(fake.files.values()))["_content"].decode().splitlines()
    assert set(json.loads(uploaded[0])) == {"input", "preferred_output", "non_preferred_output"}


def test_bursts_of_429_and_500_on_every_route_are_survived(fake, tmp_path, cache_dir):
    used = [r for r in ALL_ROUTES if r != "fine-tunes.cancel"]
    for route in used:  # an upload is up to 4 requests (create, PUT, preprocess, the retrieve after a 409), each
        fake.inject(route, 429, 503)  # failing twice here: 8 retries in a row
    fake.create_500_after_commit = 1  # the job was created, the answer was lost
    cfg = together_cfg(tmp_path, cache_dir, "hardware.n_evals=1", "eval.enabled=false", "hardware.max_retries=8")
    cloud.run(cfg, "train")
    assert fake.pending_injections() == {}
    assert all(fake.counters[f"injected.{r}"] == 2 for r in used)
    assert (fake.counters["uploads"], fake.counters["jobs_created"]) == (2, 1)
    assert (Path(cfg.output_dir) / "model" / "adapter_config.json").is_file()


def test_failed_job_and_bad_configs_are_one_paragraph(fake, tmp_path, cache_dir, monkeypatch):
    fake.fail = "The training file has no assistant messages."
    with pytest.raises(UserError, match="failed: The training file has no assistant messages. .code error."):
        cloud.run(together_cfg(tmp_path, cache_dir), "train")
    with pytest.raises(UserError, match="method=full asks for full fine-tuning.*hardware.lora=false"):
        check_cloud(compose(*overrides(tmp_path, "method=full")))
    with pytest.raises(UserError, match="model.weights is not set"):
        check_cloud(compose(*overrides(tmp_path, "model.weights=null")))
    with pytest.raises(UserError, match="hardware.n_epochs=0 must be a whole number"):
        check_cloud(compose(*overrides(tmp_path, "hardware.n_epochs=0")))
    monkeypatch.delenv("TOGETHER_API_KEY")
    with pytest.raises(UserError, match="set the environment variable TOGETHER_API_KEY"):
        cloud.run(together_cfg(tmp_path / "nokey", cache_dir), "train")


@pytest.mark.parametrize("model", ["together_llama3_1_8b_instruct", "together_llama3_2_3b_instruct", "together_qwen2_5_7b_instruct"])  # fmt: skip
def test_every_together_model_option_composes_priced_with_open_weights(model):
    cfg = compose("hardware=together", f"model={model}")
    check_cloud(cfg)
    assert cfg.model.name_or_path in cfg.hardware.price_per_million_training_tokens
    assert cfg.model.name_or_path in cfg.hardware.full_price_per_million_training_tokens
    assert cfg.model.weights.source == "hf" and cfg.model.weights.name_or_path


@pytest.mark.slow
def test_kill_9_after_the_job_is_created_then_rerun(fake, tmp_path, cache_dir):
    """The job exists at Together, its id never reached the run dir: the rerun finds it (one upload, one job)."""
    fake.create_delay_s = 30.0
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOGETHER_")},
        "TOGETHER_API_KEY": API_KEY,
        "TOGETHER_BASE_URL": fake.url,
        "HYDRATUNE_CACHE": str(cache_dir),
    }
    run = [*overrides(tmp_path), "eval.enabled=false", f"hydra.run.dir={tmp_path / 'run'}"]
    done = kill_9_once_a_job_exists(fake, run, env, tmp_path / "run", tmp_path / "first.log")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (fake.counters["upload_requests"], fake.counters["jobs_created"]) == (1, 1)
    assert "found job ft-" in done.stdout + done.stderr
    assert (tmp_path / "run" / "model" / "adapter_model.safetensors").is_file()
    assert files_containing(tmp_path / "run", API_KEY) == []
    assert API_KEY not in done.stdout + done.stderr + (tmp_path / "first.log").read_text()


@pytest.mark.slow  # evaluates the tiny model twice and trains it locally for 2 steps
def test_a_provider_dpo_run_reports_the_same_pair_metrics_as_a_local_dpo_run(fake, tmp_path, cache_dir):
    """One engine path: DPO weights downloaded from the provider are evaluated by the objective's own evaluation."""
    from tests.helpers import hydratune

    shared = ["dataset=quickstart_pairs", "objective=dpo", *EVAL, "eval.few_shot=0"]
    cfg = compose("hardware=together", "model=together_llama3_1_8b_instruct", *TINY, *FAST, *shared)
    cfg.cache_dir, cfg.output_dir = str(cache_dir), str(tmp_path / "provider")
    cloud.run(cfg, "train")
    provider = json.loads((tmp_path / "provider" / "metrics.json").read_text())
    local_dir = tmp_path / "local"
    result = hydratune(
        "model=tiny_random", "hardware=cpu", *shared, "train.max_steps=2", f"hydra.run.dir={local_dir}", cache=cache_dir
    )
    assert result.returncode == 0, result.stderr[-3000:]
    local = json.loads((local_dir / "metrics.json").read_text())
    for section in ("base", "finetuned"):
        assert "pair_accuracy" in provider[section], provider[section]
        assert set(provider[section]) == set(local[section]), (section, set(provider[section]) ^ set(local[section]))
    assert provider["objective"] == local["objective"]


@pytest.mark.slow  # the run downloads the fake's weights and loads them
def test_function_calling_rows_are_uploaded_with_their_tools_and_calls(fake, tmp_path, cache_dir):
    """dataset=function_calling to Together: the uploaded rows carry the tools and the calls (arguments as JSON
    strings), and the estimate counts the tools as the JSON the model's chat template writes into the prompt."""
    from launchers.cloud import tokens

    cfg = compose("hardware=together", "model=together_llama3_1_8b_instruct", *TINY, "dataset=function_calling",
                  *FAST, "eval.enabled=false", f"cache_dir={cache_dir}")  # fmt: skip
    cfg.output_dir = str(tmp_path / "run")
    cloud.run(cfg, "train")
    rows = [json.loads(line) for line in fake.files[fake.job_requests[-1]["training_file"]]["_content"].splitlines()]
    assert len(rows) == 312 and all(len(r["tools"]) == 4 for r in rows)
    calls = [c for r in rows for m in r["messages"] for c in m.get("tool_calls", [])]
    assert len(calls) > 300 and all(isinstance(json.loads(c["function"]["arguments"]), dict) for c in calls)
    stats = json.loads((Path(cfg.output_dir) / "cloud_estimate.json").read_text())["stats"]
    enc = tokens.get_encoding("cl100k_base")
    bare = tokens.count_examples([{"messages": r["messages"]} for r in rows], enc)[0]
    tools = sum(len(enc.encode(json.dumps(t))) for t in rows[0]["tools"])
    assert stats["tokens"]["min"] == min(bare) + tools and tools != tokens.openai_tool_tokens(rows[0]["tools"], enc)
