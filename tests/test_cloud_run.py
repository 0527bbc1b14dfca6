"""Provider runs in process against the fake server: OpenAI and Azure end to end, faults, failures, secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launchers import cloud
from launchers.cloud import client as cloud_client
from launchers.cloud import jobs
from tests.fake_provider import ALL_ROUTES, FakeProvider, files_containing, write_chat_dataset
from tests.helpers import compose, preference_examples
from trainer.config.checks import check_config
from trainer.config.errors import UserError

API_KEY = "sk-test-KEY-0123456789abcdef"
MGMT_TOKEN = "mgmt-TOKEN-fedcba9876543210"
FAST = ["hardware.poll_interval_s=0.01", "hardware.max_poll_interval_s=0.02", "hardware.retry_backoff_s=0.01"]
ENV_VARS = [
    "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_AD_TOKEN", "AZURE_OPENAI_ENDPOINT", "OPENAI_API_VERSION", "AZURE_MANAGEMENT_TOKEN",
]  # fmt: skip
AZURE_DEPLOY = [
    "hardware.base_deployment=gpt-4o-mini-base", "hardware.deployment.create=true",
    "hardware.deployment.subscription_id=sub-1", "hardware.deployment.resource_group=rg-1",
    "hardware.deployment.resource_name=res-1",
]  # fmt: skip


@pytest.fixture
def fake(monkeypatch, tmp_path):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    with FakeProvider(api_key=API_KEY, management_token=MGMT_TOKEN) as server:
        server.base_deployments["gpt-4o-mini-base"] = "gpt-4o-mini-2024-07-18"
        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_url)
        yield server


@pytest.fixture
def azure_env(fake, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", fake.url)
    monkeypatch.setenv("AZURE_MANAGEMENT_TOKEN", MGMT_TOKEN)
    return fake


def cloud_cfg(tmp_path: Path, fake: FakeProvider, *overrides: str, hardware: str = "openai"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "data.jsonl"
    write_chat_dataset(data, 20, fake)
    cfg = compose(
        f"hardware={hardware}", "model=gpt_4o_mini", "dataset=chat_jsonl", f"dataset.path={data}",
        "dataset.validation_size=5", *FAST, *overrides,
    )  # fmt: skip
    if hardware == "azure_openai":
        cfg.hardware.deployment.management_url = fake.url
    cfg.output_dir = str(tmp_path / "run")
    return cfg


def assert_no_secrets(run_dir, *texts):
    assert files_containing(run_dir, API_KEY, MGMT_TOKEN) == []
    for text in texts:
        assert API_KEY not in text and MGMT_TOKEN not in text


def test_openai_end_to_end(fake, tmp_path, capsys, caplog):
    caplog.set_level("DEBUG")
    cfg = cloud_cfg(tmp_path, fake, "hardware.suffix=recipes", "hardware.seed=7")
    cloud.run(cfg, "train")
    run_dir = Path(cfg.output_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (fake.counters["uploads"], fake.counters["jobs_created"]) == (2, 1)
    assert metrics["base"]["exact_match"] == 0.0 and metrics["finetuned"]["exact_match"] == 1.0
    assert set(metrics["base"]) == set(metrics["finetuned"]) >= {"exact_match", "token_f1", "prompt_tokens_per_query"}
    assert metrics["cost"]["examples"] == 15 and metrics["cost"]["epochs"] == 6 and metrics["cost"]["usd"] > 0
    assert metrics["job"]["fine_tuned_model"].startswith("ft:gpt-4o-mini-2024-07-18")
    assert len(metrics["job"]["checkpoints"]) == 2
    assert metrics["job"]["final"]["eval_loss"] == pytest.approx(0.55)  # the last validation loss in the events
    assert "beat the base model" in (run_dir / "report.md").read_text()
    assert metrics["lifecycle"]["days_to_training_close"] == 36  # HYDRATUNE_TODAY=2026-12-01 (tests/conftest.py)
    assert "2027-01-06 (36 days left)" in (run_dir / "report.md").read_text()
    assert (run_dir / "loss_curve.png").is_file()
    # break-even: the tokens the provider billed (the fake reports 1,234) x the training price, against 3-shot
    # prompts whose tokens are scaled from the zero-shot prompts' tokens per character
    even = metrics["break_even"]
    assert metrics["job"]["trained_tokens"] == 1234
    assert even["training"]["usd"] == pytest.approx(1234 / 1e6 * metrics["cost"]["usd_per_million"])
    assert "1,234 training tokens (billed by the provider)" in even["training"]["how"]
    few, tuned = even["per_1000_queries"]["few_shot"], even["per_1000_queries"]["finetuned"]
    assert even["shots"] == 3 and few["prompt_tokens"] > 2 * tuned["prompt_tokens"]
    assert "tokens per character" in even["few_shot_tokens"] and even["break_even_queries"] > 0
    assert "## Cost and break-even" in (run_dir / "report.md").read_text()
    (request,) = fake.job_requests
    assert request["method"] == {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
        },
    }
    state = json.loads((run_dir / "cloud_state.json").read_text())
    assert state["job"]["status"] == "succeeded" and len(state["files"]) == 2
    assert (request["suffix"], request["seed"]) == ("recipes", 7)
    assert {request["training_file"], request["validation_file"]} == {f["id"] for f in state["files"].values()}
    assert request["metadata"] == {"hydratune_run": state["run_id"]}
    events = [json.loads(line) for line in (run_dir / "cloud_events.jsonl").read_text().splitlines()]
    assert len({e["id"] for e in events}) == len(events) and sum(e["type"] == "metrics" for e in events) == 4
    chats = fake.counters["chat"]
    cloud.run(cfg, "eval")  # evaluates the recorded fine-tuned model again: no upload, no job
    assert (fake.counters["uploads"], fake.counters["jobs_created"], fake.counters["chat"]) == (2, 1, 2 * chats)
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4] == [r["step"] for r in log if "eval_loss" in r]
    assert "cost estimate" in capsys.readouterr().out
    assert_no_secrets(run_dir, caplog.text, capsys.readouterr().out)


def test_prepare_validates_counts_and_prices_without_calling_the_provider(fake, tmp_path, capsys):
    cfg = cloud_cfg(tmp_path, fake)
    assert cloud.run(cfg, "prepare") is None
    out = capsys.readouterr().out
    assert "15 training / 5 validation examples" in out and "billed tokens" in out and "$3/1M" in out
    assert "WARNING: gpt-4o-mini-2024-07-18 at openai: new fine-tuning jobs stop on 2027-01-06 (36 days left)" in out
    assert fake.requests == []
    estimate = json.loads((Path(cfg.output_dir) / "cloud_estimate.json").read_text())
    assert estimate["estimate"]["billed_tokens"] == estimate["estimate"]["tokens_per_epoch"] * 6
    assert estimate["lifecycle"]["days_to_shutdown"] == 44 and "44 days left" in estimate["lifecycle"]["warning"]


def test_bursts_of_429_and_500_on_every_endpoint_are_survived(fake, tmp_path):
    used = [r for r in ALL_ROUTES if r != "jobs.cancel" and not r.startswith("deploy.")]
    for route in used:
        fake.inject(route, 429, 500, 503, 429)
    fake.upload_500_after_commit = 1  # the upload happened, the answer was lost
    fake.create_500_after_commit = 1  # same for the job
    cfg = cloud_cfg(tmp_path, fake)
    cloud.run(cfg, "train")
    assert fake.pending_injections() == {}
    assert all(fake.counters[f"injected.{r}"] == 4 for r in used)
    assert (fake.counters["uploads"], fake.counters["jobs_created"]) == (2, 1)
    assert json.loads((Path(cfg.output_dir) / "metrics.json").read_text())["finetuned"]["exact_match"] == 1.0


def test_retry_after_is_honoured(monkeypatch):
    import httpx2
    import openai

    waits = []
    monkeypatch.setattr(cloud_client.time, "sleep", waits.append)
    request = httpx2.Request("GET", "http://127.0.0.1/v1/files")
    answers = [
        openai.RateLimitError("slow down", response=httpx2.Response(429, headers={"Retry-After": "7"}, request=request), body=None),
        openai.InternalServerError("oops", response=httpx2.Response(502, request=request), body=None),
        "ok",
    ]  # fmt: skip

    def flaky():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert cloud_client.call(flaky, retries=3, backoff_s=0.5) == "ok"
    assert waits[0] == 7.0 and 0.375 <= waits[1] <= 1.0  # Retry-After, then backoff 0.5 * 2 with jitter
    bad = openai.BadRequestError("no", response=httpx2.Response(400, request=request), body=None)
    with pytest.raises(openai.BadRequestError):
        cloud_client.call(lambda: (_ for _ in ()).throw(bad), retries=3, backoff_s=0.5)
    assert len(waits) == 2


def test_failed_job_shows_the_providers_error(fake, tmp_path):
    fake.fail = {
        "code": "invalid_training_file",
        "message": "Example 3 has no assistant turn",
        "param": "training_file",
    }
    cfg = cloud_cfg(tmp_path, fake)
    with pytest.raises(
        UserError, match=r"failed: Example 3 has no assistant turn \(code invalid_training_file, param training_file\)"
    ):
        cloud.run(cfg, "train")
    assert json.loads((Path(cfg.output_dir) / "cloud_state.json").read_text())["job"]["status"] == "failed"
    assert not (Path(cfg.output_dir) / "metrics.json").exists()


def test_missing_credentials_name_the_variable(fake, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(UserError, match="set the environment variable OPENAI_API_KEY"):
        cloud.run(cloud_cfg(tmp_path, fake), "train")
    with pytest.raises(UserError, match="AZURE_OPENAI_API_KEY"):
        cloud.run(cloud_cfg(tmp_path, fake, hardware="azure_openai"), "train")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
    with pytest.raises(UserError, match="AZURE_OPENAI_ENDPOINT"):
        cloud.run(cloud_cfg(tmp_path, fake, hardware="azure_openai"), "train")
    assert fake.requests == []


def test_azure_end_to_end_with_deployment_created_and_deleted(azure_env, tmp_path, caplog, capsys):
    fake = azure_env
    caplog.set_level("DEBUG")
    for route in [r for r in ALL_ROUTES if r != "jobs.cancel"]:
        fake.inject(route, 429, 500)
    cfg = cloud_cfg(tmp_path, fake, *AZURE_DEPLOY, hardware="azure_openai")
    cloud.run(cfg, "train")
    run_dir = Path(cfg.output_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["base"]["exact_match"] == 0.0 and metrics["finetuned"]["exact_match"] == 1.0
    assert metrics["job"]["fine_tuned_model"].startswith("gpt-4o-mini-2024-07-18.ft-")
    assert (fake.counters["deployments_created"], fake.counters["deployments_deleted"]) == (1, 1)
    assert fake.deployments == {} and fake.pending_injections() == {}
    state = json.loads((run_dir / "cloud_state.json").read_text())
    assert state["deployment"]["status"] == "deleted"
    assert any(path.startswith("/openai/deployments/") for _, path, _ in fake.requests)
    assert any(path.startswith("/subscriptions/sub-1/") for _, path, _ in fake.requests)
    assert_no_secrets(run_dir, caplog.text, "".join(capsys.readouterr()))


def test_azure_deployment_is_deleted_even_when_evaluation_fails(azure_env, tmp_path):
    fake = azure_env
    overrides = ["hardware.max_retries=1", "hardware.eval_concurrency=1", "eval.compare_base=false"]
    cfg = cloud_cfg(tmp_path, fake, *AZURE_DEPLOY, *overrides, hardware="azure_openai")
    fake.inject("chat", 500, 500)
    with pytest.raises(UserError, match="kept failing .HTTP 500 Injected failure.*Run the same command again"):
        cloud.run(cfg, "train")
    assert (fake.counters["deployments_created"], fake.counters["deployments_deleted"]) == (1, 1)


def test_few_shot_column_and_dpo_objective(fake, tmp_path, monkeypatch):
    cfg = cloud_cfg(tmp_path, fake, "eval.few_shot=2")
    cloud.run(cfg, "train")
    metrics = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())
    assert metrics["few_shot"]["prompt_tokens_per_query"] > metrics["base"]["prompt_tokens_per_query"]
    few = metrics["break_even"]["per_1000_queries"]["few_shot"]  # the 2-shot prompts as the provider counted them
    assert (
        few["prompt_tokens"] == metrics["few_shot"]["prompt_tokens_per_query"] and metrics["break_even"]["shots"] == 2
    )

    examples = preference_examples()
    pref = examples.train[0]
    monkeypatch.setattr("launchers.cloud.prepare.load_examples", lambda *a: examples)
    cfg = cloud_cfg(tmp_path / "dpo", fake, "objective=dpo", "dataset.format=preference", "hardware.dpo_beta=0.1")
    check_config(cfg)
    cloud.run(cfg, "train")
    job = fake.job_requests[-1]
    assert job["method"]["type"] == "dpo"
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.1
    uploaded = fake.files[job["training_file"]]["_content"].decode().splitlines()
    assert json.loads(uploaded[0]) == {  # OpenAI's preference format
        "input": {"messages": pref["prompt"]},
        "preferred_output": pref["chosen"],
        "non_preferred_output": pref["rejected"],
    }
    metrics = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())
    assert metrics["finetuned"]["exact_match"] == 1.0


@pytest.mark.parametrize("on_interrupt", ["detach", "cancel"])
def test_ctrl_c_detaches_or_cancels(fake, tmp_path, monkeypatch, on_interrupt, capsys):
    fake.polls_per_state = 1000  # the job stays in validating_files
    cfg = cloud_cfg(tmp_path, fake, f"hardware.on_interrupt={on_interrupt}")
    real_follow = jobs.follow

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "follow", interrupted)
    with pytest.raises(
        UserError, match="detached from fine-tuning job .* job-attach" if on_interrupt == "detach" else "was cancelled"
    ):
        cloud.run(cfg, "train")
    assert fake.counters["cancels"] == (1 if on_interrupt == "cancel" else 0)
    assert cloud.job_command(cfg, "status")["status"] == (
        "cancelled" if on_interrupt == "cancel" else "validating_files"
    )
    if on_interrupt == "detach":
        monkeypatch.setattr(jobs, "follow", real_follow)
        cfg.hardware.n_epochs = 2
        with pytest.raises(
            UserError, match=r"created with other settings \(method changed since\). Nothing was uploaded"
        ):
            cloud.run(cfg, "train")
        cfg.hardware.n_epochs = "auto"
        fake.polls_per_state = 1
        cloud.job_command(cfg, "attach")
        assert (fake.counters["uploads"], fake.counters["jobs_created"]) == (2, 1)
        assert (Path(cfg.output_dir) / "metrics.json").is_file()
        fake.inject("jobs.cancel", 429, 500)
        with pytest.raises(UserError, match="already completed"):
            cloud.job_command(cfg, "cancel")


def test_function_calling_rows_are_uploaded_with_their_tools_and_calls(fake, tmp_path):
    """dataset=function_calling to OpenAI: every uploaded row carries the tools, assistant calls with their arguments
    as JSON strings and the tool results; the estimate counts the tools (by OpenAI's rule) on every row."""
    from launchers.cloud import tokens

    cfg = compose("hardware=openai", "model=gpt_4o_mini", "dataset=function_calling", "eval.enabled=false", *FAST)
    cfg.output_dir = str(tmp_path / "run")
    cloud.run(cfg, "train")
    job = fake.job_requests[-1]
    rows = [json.loads(line) for line in fake.files[job["training_file"]]["_content"].decode().splitlines()]
    assert len(rows) == 312 and all(r["tools"] and len(r["tools"]) == 4 for r in rows)
    calls = [c for r in rows for m in r["messages"] for c in m.get("tool_calls", [])]
    assert len(calls) > 300 and all(isinstance(json.loads(c["function"]["arguments"]), dict) for c in calls)
    assert any(m["role"] == "tool" and m["tool_call_id"] for r in rows for m in r["messages"])
    stats = json.loads((Path(cfg.output_dir) / "cloud_estimate.json").read_text())["stats"]
    enc = tokens.get_encoding("o200k_base")
    bare = tokens.count_examples([{"messages": r["messages"]} for r in rows], enc)[0]
    tools = tokens.openai_tool_tokens(rows[0]["tools"], enc)
    assert stats["tokens"]["min"] == min(bare) + tools and stats["tokens"]["max"] == max(bare) + tools
