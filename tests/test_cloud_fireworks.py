"""hardware=fireworks against a local fake of Fireworks' fine-tuning API that the real `fireworks-ai` SDK talks to
(tests/fake_fireworks.py, which trains a real tiny adapter): estimate, upload, job, the adapter downloaded into the run
dir from signed URLs, loaded with peft and evaluated here, report; DPO and function-calling rows in Fireworks' format;
429/5xx bursts, client timeouts, a lost answer, kill -9 and rerun; secrets."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from launchers import check as check_cloud
from launchers import cloud
from tests.fake_fireworks import ALL_ROUTES, FakeFireworks
from tests.fake_provider import files_containing, write_chat_dataset
from tests.helpers import compose, kill_9_once_a_job_exists, preference_examples
from trainer.config.errors import UserError

API_KEY = "fw-test-KEY-0123456789abcdef"
ACCOUNT = "hydratune-test"
MODEL = "accounts/fireworks/models/llama-v3p1-8b-instruct"
#: Short polls, but not so short that they crowd out the fake's training thread (0.25 s at most).
FAST = ["hardware.poll_interval_s=0.02", "hardware.max_poll_interval_s=0.25", "hardware.retry_backoff_s=0.01"]
TINY = ["model.weights.source=tiny_random", "model.weights.name_or_path=tiny-random-llama"]
EVAL = ["eval.max_examples=4", "eval.generation.max_new_tokens=4", "eval.batch_size=4"]
ENV = ("FIREWORKS_API_KEY", "FIREWORKS_ACCOUNT_ID", "FIREWORKS_BASE_URL", "FIREWORKS_CUSTOM_HEADERS")


@pytest.fixture
def fake(monkeypatch, tmp_path):
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    with FakeFireworks(api_key=API_KEY, account=ACCOUNT) as server:
        monkeypatch.setenv("FIREWORKS_API_KEY", API_KEY)
        monkeypatch.setenv("FIREWORKS_ACCOUNT_ID", ACCOUNT)
        monkeypatch.setenv("FIREWORKS_BASE_URL", server.url)
        yield server


def overrides(tmp_path: Path, *extra: str) -> list[str]:
    data = tmp_path / "data.jsonl"
    if not data.exists():
        write_chat_dataset(data, 20)
    return [
        "hardware=fireworks", "model=fireworks_llama3_1_8b_instruct", *TINY, "dataset=chat_jsonl",
        f"dataset.path={data}", "dataset.validation_size=5", *FAST, *EVAL, *extra,
    ]  # fmt: skip


def fireworks_cfg(tmp_path: Path, cache_dir: Path, *extra: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = compose(*overrides(tmp_path, *extra), f"cache_dir={cache_dir}")
    cfg.output_dir = str(tmp_path / "run")
    return cfg


def test_prepare_estimates_before_anything_is_sent(fake, tmp_path, cache_dir, capsys):
    cfg = fireworks_cfg(tmp_path, cache_dir)
    assert cloud.run(cfg, "prepare") is None
    out = capsys.readouterr().out
    assert f"fireworks {MODEL}: 15 training" in out and "$0.5/1M" in out
    assert fake.requests == []
    estimate = json.loads((Path(cfg.output_dir) / "cloud_estimate.json").read_text())["estimate"]
    assert estimate["epochs"] == 1 and estimate["usd"] == round(estimate["billed_tokens"] / 1e6 * 0.50, 4)
    from launchers.cloud import provider

    dpo = fireworks_cfg(tmp_path / "dpo", cache_dir, "objective=dpo")
    assert provider.get(dpo.hardware).price_table(dpo)[MODEL] == pytest.approx(0.50 * 2.0)


@pytest.mark.slow  # trains the tiny adapter in the fake, evaluates the tiny model
def test_end_to_end_adapter_downloaded_loaded_and_evaluated_here(fake, tmp_path, cache_dir, capsys, caplog):
    caplog.set_level("DEBUG")
    cfg = fireworks_cfg(tmp_path, cache_dir, "hardware.lora_rank=4", "hardware.upload_validation=true")
    cloud.run(cfg, "train")
    run_dir = Path(cfg.output_dir)
    assert (fake.counters["uploads"], fake.counters["jobs_created"], fake.counters["downloads"]) == (2, 1, 1)
    (request,) = fake.job_requests
    job_id = request["outputModel"]
    files = fake.models[job_id]["_files"]  # adapter_config.json, adapter_model.safetensors, README.md
    assert fake.counters["signed_with_credentials"] == 0 and fake.counters["signed_gets"] == len(files) == 3
    assert (request["baseModel"], request["loraRank"], request["epochs"], request["earlyStop"]) == (MODEL, 4, 1, False)
    assert request["dataset"] == f"accounts/{ACCOUNT}/datasets/{job_id}" and job_id.startswith("hydratune-")
    assert request["evaluationDataset"].startswith(f"accounts/{ACCOUNT}/datasets/hydratune-")
    losses = fake.losses[job_id]
    assert len(losses) == 4 and losses[-1] < losses[0]  # the fake really trained the adapter it hands out

    # the adapter is in the run dir in save_pretrained layout, and loads with peft on the tiny base
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainer.models import resolve_path

    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (run_dir / "model").iterdir()}
    base = AutoModelForCausalLM.from_pretrained(resolve_path(compose("model=tiny_random").model, cache_dir))
    assert PeftModel.from_pretrained(base, str(run_dir / "model")).peft_config["default"].r == 4

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["job"]["weights"] == "model" and metrics["job"]["weights_kind"] == "adapter"
    assert metrics["job"]["id"] == f"accounts/{ACCOUNT}/supervisedFineTuningJobs/{job_id}"
    assert metrics["job"]["fine_tuned_model"] == f"accounts/{ACCOUNT}/models/{job_id}"
    assert set(metrics["base"]) == set(metrics["finetuned"]) >= {"eval_loss", "exact_match", "token_f1"}
    assert metrics["base"]["eval_loss"] != metrics["finetuned"]["eval_loss"]  # the downloaded adapter changed it
    assert metrics["finetuned"]["examples"] == 4
    assert "fine-tuned" in (run_dir / "report.md").read_text()
    events = [json.loads(line) for line in (run_dir / "cloud_events.jsonl").read_text().splitlines()]
    assert len({e["id"] for e in events}) == len(events)
    assert [e["message"] for e in events if e["type"] == "status"][-1] == "JOB_STATE_COMPLETED"

    cfg.eval.enabled = False
    cloud.run(cfg, "eval")  # the recorded job's result again: no upload, no job, no second download
    assert (fake.counters["uploads"], fake.counters["jobs_created"], fake.counters["downloads"]) == (2, 1, 1)
    assert files_containing(run_dir, API_KEY) == []
    assert API_KEY not in caplog.text + "".join(capsys.readouterr())


@pytest.mark.slow  # trains the tiny adapter with the DPO loss in the fake
def test_dpo_job_with_its_own_hyperparameters(fake, tmp_path, cache_dir, monkeypatch):
    monkeypatch.setattr("launchers.cloud.prepare.load_examples", lambda *a: preference_examples())
    extra = ["dataset.format=preference", "objective=dpo", "hardware.dpo_beta=0.2", "eval.enabled=false"]
    cfg = fireworks_cfg(tmp_path, cache_dir, *extra)
    cloud.run(cfg, "train")
    (request,) = fake.job_requests
    assert request["lossConfig"] == {"method": "DPO", "dpo": {"beta": 0.2}}  # unset, Fireworks would train GRPO
    assert request["trainingConfig"]["baseModel"] == MODEL and "evaluationDataset" not in request
    (dataset,) = fake.datasets.values()
    assert set(json.loads(dataset["_content"].splitlines()[0])) == {"input", "preferred_output", "non_preferred_output"}
    assert (
        fake.losses[request["trainingConfig"]["outputModel"]][-1]
        < fake.losses[request["trainingConfig"]["outputModel"]][0]
    )
    assert (Path(cfg.output_dir) / "model" / "adapter_config.json").is_file()


def test_function_calling_rows_keep_their_tools_in_fireworks_format(fake, tmp_path, cache_dir):
    cfg = compose("hardware=fireworks", "model=fireworks_qwen2_5_7b_instruct", "dataset=function_calling", *FAST)
    cfg.cache_dir, cfg.output_dir = str(cache_dir), str(tmp_path / "run")
    check_cloud(cfg)  # accepted: Fireworks' SFT format is OpenAI's, tools included
    cloud.run(cfg, "prepare")
    rows = [json.loads(line) for line in (tmp_path / "run" / "provider_train.jsonl").read_text().splitlines()]
    called = [r for r in rows if any(m.get("tool_calls") for m in r["messages"])]
    assert called and all(r["tools"][0]["type"] == "function" for r in called)
    call = next(m for m in called[0]["messages"] if m.get("tool_calls"))["tool_calls"][0]
    assert isinstance(call["function"]["arguments"], str) and isinstance(
        json.loads(call["function"]["arguments"]), dict
    )


@pytest.mark.slow  # trains the tiny adapter in the fake
def test_bursts_of_429_and_5xx_timeouts_and_a_lost_answer_are_survived(fake, tmp_path, cache_dir):
    used = [r for r in ALL_ROUTES if not r.startswith("dpo.") and r != "sft.cancel"]
    for route in used:
        fake.inject(route, 429, 503)
    fake.stall("sft.create", 2.0)  # the client gives up (hardware.timeout_s=1) and asks again
    fake.stall("datasets.get", 2.0)
    fake.create_500_after_commit = 1  # then the job is created and the answer is lost
    extra = ["eval.enabled=false", "hardware.max_retries=8", "hardware.timeout_s=1", "hardware.upload_validation=true"]
    cfg = fireworks_cfg(tmp_path, cache_dir, *extra)
    cloud.run(cfg, "train")
    assert fake.pending_injections() == {}
    assert all(fake.counters[f"injected.{r}"] == 2 for r in used)
    assert fake.counters["stalled.sft.create"] == fake.counters["stalled.datasets.get"] == 1
    assert (fake.counters["uploads"], fake.counters["jobs_created"], fake.counters["downloads"]) == (2, 1, 1)
    assert (Path(cfg.output_dir) / "model" / "adapter_config.json").is_file()


def test_failed_job_and_bad_configs_are_one_paragraph(fake, tmp_path, cache_dir, monkeypatch):
    fake.fail = "The dataset has no assistant messages."
    with pytest.raises(UserError, match="failed: The dataset has no assistant messages. .code INVALID_ARGUMENT"):
        cloud.run(fireworks_cfg(tmp_path, cache_dir, "eval.enabled=false"), "train")
    base = compose(*overrides(tmp_path, "dataset=quickstart_pairs"))
    for key, value, message in [
        ("method.name", "full", "method=full asks for full fine-tuning; hardware=fireworks trains LoRA"),
        ("model.weights", None, "model.weights is not set"),
        ("hardware.early_stop", True, "needs hardware.upload_validation=true"),
        ("hardware.epochs", 0, "hardware.epochs"),
        ("objective.name", "dpo", "dpo_beta=0.5 must be below 0.5"),
    ]:
        cfg = copy.deepcopy(base)
        OmegaConf.update(cfg, key, value)
        cfg.hardware.dpo_beta = 0.5  # read with objective=dpo only
        with pytest.raises(UserError, match=message):
            check_cloud(cfg)
    cfg = fireworks_cfg(tmp_path / "noaccount", cache_dir)
    monkeypatch.delenv("FIREWORKS_ACCOUNT_ID")
    with pytest.raises(UserError, match="set the environment variable FIREWORKS_ACCOUNT_ID"):
        cloud.run(cfg, "train")
    monkeypatch.delenv("FIREWORKS_API_KEY")
    cfg.output_dir = str(tmp_path / "nokey")
    with pytest.raises(UserError, match="set the environment variable FIREWORKS_API_KEY"):
        cloud.run(cfg, "train")
    assert fake.counters["jobs_created"] == 1  # the failed job only


@pytest.mark.parametrize("model", ["fireworks_llama3_1_8b_instruct", "fireworks_llama3_2_3b_instruct", "fireworks_qwen2_5_7b_instruct"])  # fmt: skip
def test_every_fireworks_model_option_composes_priced_with_open_weights(model):
    cfg = compose("hardware=fireworks", f"model={model}")
    check_cloud(cfg)
    assert cfg.model.name_or_path in cfg.hardware.price_per_million_training_tokens
    assert cfg.model.weights.source == "hf" and cfg.model.weights.name_or_path


@pytest.mark.slow
def test_kill_9_after_the_job_is_created_then_rerun(fake, tmp_path, cache_dir):
    """The job exists at Fireworks, its id never reached the run dir: the rerun finds it (one upload, one job)."""
    fake.create_delay_s = 30.0
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FIREWORKS_")},
        "FIREWORKS_API_KEY": API_KEY,
        "FIREWORKS_ACCOUNT_ID": ACCOUNT,
        "FIREWORKS_BASE_URL": fake.url,
        "HYDRATUNE_CACHE": str(cache_dir),
    }
    run = [*overrides(tmp_path), "eval.enabled=false", f"hydra.run.dir={tmp_path / 'run'}"]
    done = kill_9_once_a_job_exists(fake, run, env, tmp_path / "run", tmp_path / "first.log")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (fake.counters["uploads"], fake.counters["jobs_created"]) == (1, 1)
    assert "found job accounts/" in done.stdout + done.stderr
    assert (tmp_path / "run" / "model" / "adapter_model.safetensors").is_file()
    assert files_containing(tmp_path / "run", API_KEY) == []
    assert API_KEY not in done.stdout + done.stderr + (tmp_path / "first.log").read_text()


@pytest.mark.slow  # evaluates the tiny model twice and trains it locally for 2 steps
def test_a_fireworks_dpo_run_reports_the_same_pair_metrics_as_a_local_dpo_run(fake, tmp_path, cache_dir, capsys):
    """One engine path: DPO weights downloaded from Fireworks are evaluated by the objective's own evaluation."""
    from tests.helpers import cli_run

    small = ["dataset.validation_size=8", "dataset.max_train_examples=16"]  # the metrics' keys, not their values
    shared = ["dataset=quickstart_pairs", *small, "objective=dpo", *EVAL, "eval.few_shot=0"]
    cfg = compose("hardware=fireworks", "model=fireworks_llama3_1_8b_instruct", *TINY, *FAST, *shared)
    cfg.cache_dir, cfg.output_dir = str(cache_dir), str(tmp_path / "provider")
    cloud.run(cfg, "train")
    provider = json.loads((tmp_path / "provider" / "metrics.json").read_text())
    local_dir = tmp_path / "local"
    code, _, err = cli_run(capsys, "model=tiny_random", "hardware=cpu", *shared, "train.max_steps=2",
                           f"hydra.run.dir={local_dir}", f"cache_dir={cache_dir}")  # fmt: skip
    assert code == 0, err[-3000:]
    local = json.loads((local_dir / "metrics.json").read_text())
    for section in ("base", "finetuned"):
        assert "pair_accuracy" in provider[section], provider[section]
        assert set(provider[section]) == set(local[section]), (section, set(provider[section]) ^ set(local[section]))
    assert provider["objective"] == local["objective"]


def test_a_job_is_found_by_its_training_dataset_and_cancelled(fake, tmp_path, cache_dir):
    from launchers.cloud import provider as provider_api
    from launchers.cloud import uploads
    from launchers.cloud.retrying import Retry

    cfg = fireworks_cfg(tmp_path, cache_dir, "objective=dpo", "dataset=quickstart_pairs")
    provider, retry = provider_api.get(cfg.hardware), Retry.from_hw(cfg.hardware)
    data = tmp_path / "pairs.jsonl"
    row = {"input": {"messages": [{"role": "user", "content": "hi"}]}, "preferred_output": [{"role": "assistant",
           "content": "hello"}], "non_preferred_output": [{"role": "assistant", "content": "no"}]}  # fmt: skip
    data.write_text(3 * (json.dumps(row) + "\n"))  # Fireworks takes 3 examples at least
    assert provider.find_file(retry, "hydratune-abc-train-0123.jsonl") is None
    file_id = uploads.wait_processed(provider, retry, provider.create_file(data, "hydratune-abc-train-0123.jsonl"))
    assert provider.find_file(retry, "hydratune-abc-train-0123.jsonl") == file_id
    assert provider.find_job(retry, file_id) is None
    job_id = provider.create_job(provider.job_args(cfg, MODEL, file_id, None, "abc"))
    assert job_id == f"accounts/{ACCOUNT}/dpoJobs/hydratune-abc-train-0123"
    assert provider.find_job(retry, file_id) == job_id  # a rerun attaches to it
    job = provider.cancel(retry, job_id)
    assert (job.status, job.provider_status, fake.counters["cancels"]) == ("cancelled", "JOB_STATE_CANCELLED", 1)
