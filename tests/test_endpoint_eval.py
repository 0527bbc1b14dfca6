"""eval.compare_models and eval.endpoint: models behind OpenAI-compatible APIs (here the fake provider, a real
HTTP server) asked the run's own held-out queries and scored with its metrics."""

from __future__ import annotations

import json
import socket

import pytest

from tests.fake_provider import BASE_ANSWER, FakeProvider, files_containing, write_chat_dataset
from tests.helpers import compose, hydratune
from trainer.config.checks import check_config
from trainer.config.errors import UserError
from trainer.evaluation import endpoint as endpoint_eval
from trainer.evaluation import local as evaluation

KEY = "sk-compare-KEY-5566778899"
TUNED = "ft:base-model:acme::abc123"


@pytest.fixture
def fake(monkeypatch):
    with FakeProvider(api_key=KEY) as server:
        # a fine-tuned model that answers every known prompt with its reference, and its base model
        server.jobs["ftjob-known"] = {"model": "base-model", "fine_tuned_model": TUNED}
        yield server


def endpoints(fake: FakeProvider, **extra: str) -> str:
    entries = [
        {"name": "provider-base", "base_url": fake.openai_url, "model": "base-model", "api_key_env": "COMPARE_KEY"},
        {"name": "provider-ft", "base_url": fake.openai_url, "model": TUNED, "api_key_env": "COMPARE_KEY", **extra},
    ]
    items = ("{" + ", ".join(f"{k}: '{v}'" for k, v in e.items()) + "}" for e in entries)
    return "eval.compare_models=[" + ", ".join(items) + "]"


@pytest.mark.slow
def test_compared_models_are_columns_of_a_local_run(fake, tmp_path, cache_dir):
    data = tmp_path / "data.jsonl"
    write_chat_dataset(data, 12, fake)
    fake.inject("chat", 429, 500)  # retried by the SDK (Retry-After honoured)
    run_dir = tmp_path / "run"
    result = hydratune(
        "model=tiny_random", "dataset=chat_jsonl", f"dataset.path={data}", "dataset.validation_size=4",
        "train.max_steps=1", "eval.generation.max_new_tokens=4", "hardware.threads=1", endpoints(fake),
        f"hydra.run.dir={run_dir}", cache=cache_dir, env={"COMPARE_KEY": KEY},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    base, tuned = metrics["compare"]["provider-base"], metrics["compare"]["provider-ft"]
    assert (base["exact_match"], tuned["exact_match"], tuned["token_f1"]) == (0.0, 1.0, 1.0)
    assert base["examples"] == tuned["examples"] == metrics["finetuned"]["examples"] == 4
    generation = {"exact_match", "token_f1", "prompt_tokens_per_query", "examples", "samples"}
    assert generation <= metrics["finetuned"].keys() and generation <= tuned.keys()
    assert [s["reference"] for s in tuned["samples"]] == [s["reference"] for s in metrics["finetuned"]["samples"]]
    assert {s["prediction"] for s in base["samples"]} == {BASE_ANSWER}
    assert fake.counters["chat"] == 8 and fake.pending_injections() == {}
    report = (run_dir / "report.md").read_text()
    assert "| metric | base model | fine-tuned | change | provider-base | provider-ft |" in report
    assert "| exact_match |" in report and "| 0.0000 | 1.0000 |" in report
    predictions = [json.loads(line) for line in (run_dir / "predictions_provider-ft.jsonl").read_text().splitlines()]
    assert all(p["prediction"] == p["reference"] for p in predictions) and len(predictions) == 4
    assert files_containing(run_dir, KEY) == [] and KEY not in result.stderr + result.stdout


def test_eval_endpoint_is_evaluated_without_loading_a_model(fake, tmp_path, monkeypatch):
    from launchers import launch

    def no_weights(*args, **kwargs):
        raise AssertionError("eval.endpoint must not load a local model")

    monkeypatch.setattr("trainer.models.load_model", no_weights)
    monkeypatch.setenv("COMPARE_KEY", KEY)
    data = tmp_path / "data.jsonl"
    write_chat_dataset(data, 10, fake)
    cfg = compose(
        "model=tiny_random", "dataset=chat_jsonl", f"dataset.path={data}", "dataset.validation_size=5",
        f"eval.endpoint.base_url={fake.openai_url}", f"eval.endpoint.model={TUNED}", "eval.endpoint.name=served",
        "eval.endpoint.api_key_env=COMPARE_KEY", "eval.endpoint.concurrency=2",
    )  # fmt: skip
    cfg.output_dir = str(tmp_path / "run")
    launch(cfg, "eval")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(metrics) == ["compare"] and metrics["compare"]["served"]["exact_match"] == 1.0
    assert metrics["compare"]["served"]["examples"] == 5
    assert "| metric | served |" in (tmp_path / "run" / "report.md").read_text()


def test_same_queries_as_the_in_process_evaluation(fake, tmp_path):
    """The questions the endpoint is asked are evaluation.queries() of the held-out rows, few-shot included."""
    rows = write_chat_dataset(tmp_path / "data.jsonl", 6, fake)
    qs = evaluation.queries(rows[:3], None)
    demos = evaluation.queries(rows[3:], 2)
    shots = [evaluation.with_demonstrations(q, demos) for q in qs]
    import openai

    client = openai.OpenAI(base_url=fake.openai_url, api_key=KEY, max_retries=0)
    answers = endpoint_eval.answer_all(client, TUNED, shots, {"max_tokens": 8, "temperature": 0.0}, concurrency=3)
    assert [a.text for a in answers] == [q.reference for q in qs]  # in order, although 3 were in flight
    plain = endpoint_eval.answer_all(client, TUNED, qs, {"max_tokens": 8}, concurrency=1)
    assert all(s.prompt_tokens > p.prompt_tokens for s, p in zip(answers, plain, strict=True))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_is_one_paragraph(tmp_path):
    cfg = compose(f"eval.endpoint.base_url=http://127.0.0.1:{_closed_port()}/v1", "eval.endpoint.model=m",
                  "eval.endpoint.max_retries=0")  # fmt: skip
    qs = [evaluation.Query([{"role": "user", "content": "hi"}], "hello")]
    with pytest.raises(
        UserError,
        match=r"eval.endpoint \(endpoint: model m at http://127.0.0.1:\d+/v1\) failed after 0 retries: APIConnectionError",
    ):
        endpoint_eval.compare_models(cfg.eval, qs, run_dir=tmp_path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('eval.compare_models=[{name: a, base_url: "http://x/v1"}]', r"eval.compare_models\[0\].model is not set"),
        ("eval.endpoint.base_url=http://x/v1", r"eval.endpoint.model is not set"),
        (
            'eval.compare_models=[{name: a, base_url: "http://x/v1", model: m, api_key_env: HYDRATUNE_UNSET_KEY}]',
            r"api_key_env=HYDRATUNE_UNSET_KEY: that environment variable is not set",
        ),
        (
            'eval.compare_models=[{name: a, base_url: "http://x/v1", model: m}, {name: a, base_url: "http://y/v1", model: n}]',
            r"eval.compare_models\[1\].name=a is also the name of eval.compare_models\[0\]",
        ),
    ],
)
def test_bad_endpoint_config_fails_before_anything_runs(override, message):
    with pytest.raises(UserError, match=message):
        check_config(compose(override))


def test_unknown_endpoint_key_fails_at_compose_time():
    with pytest.raises(Exception, match="modle"):
        compose('eval.compare_models=[{name: a, base_url: "http://x/v1", modle: m}]')


def test_a_function_calling_query_is_asked_with_its_tools_and_scored_on_the_calls_it_gets_back():
    """The chat API's answer with tool_calls becomes the <tool_call> text the tool-call metrics parse, so an
    endpoint is scored as the in-process model is; arguments that are not JSON stay text and score as invalid; the
    query's earlier calls go out in the API's shape (arguments as JSON strings)."""
    from openai.types.chat import ChatCompletionMessage

    from trainer.evaluation import metrics as tool_metrics

    called = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    reference = evaluation.queries([{"messages": [{"role": "user", "content": "Oslo?"},
                                                  {"role": "assistant", "content": None, "tool_calls": [called]}]}],
                                   None)[0].reference  # fmt: skip

    def answered(arguments: str) -> str:
        call = {"id": "x", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
        message = ChatCompletionMessage.model_validate({"role": "assistant", "content": None, "tool_calls": [call]})
        return endpoint_eval.answer_text(message)

    match = tool_metrics.ToolCallMatch()
    valid = tool_metrics.ToolCallValid()
    assert answered('{"city": "Oslo"}') == reference
    assert match(answered('{"city":"Oslo"}'), reference) == 1.0  # the JSON's spacing does not matter
    assert match(answered('{"city": "Lima"}'), reference) == 0.0
    assert valid(answered('{"city": Oslo}'), reference) == 0.0
    plain = ChatCompletionMessage.model_validate({"role": "assistant", "content": "Sunny."})
    assert endpoint_eval.answer_text(plain) == "Sunny."
    history = [{"role": "assistant", "content": None, "reasoning_content": "r", "tool_calls": [called]},
               {"role": "tool", "tool_call_id": "c1", "content": "12 C"}]  # fmt: skip
    assert endpoint_eval.openai_messages(history) == [
        {
            "role": "assistant",
            "tool_calls": [{**called, "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}],
        },
        history[1],
    ]
