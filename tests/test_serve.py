"""`hydratune serve` and `hydratune export` on a tiny model trained until it has learned one behaviour.

The base model ends its sequences with <|endoftext|>; training uses the ChatML template, whose answers end with
<|im_end|>. The served and exported model must stop at <|im_end|> (the training EOS), where the base model's own
generation config would run on to the token limit.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.fake_hub import FakeHub
from tests.fake_provider import files_containing
from tests.helpers import compose, hydratune, served_cli
from trainer.config.errors import UserError
from trainer.evaluation import endpoint as endpoint_eval
from trainer.evaluation import local as evaluation
from trainer.hosting import export
from trainer.hosting import serve as serving

ANSWER = '["flour", "salt"]'
SYSTEM = "List the generic ingredients as JSON."
HELD_OUT = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Recipe 77: 3 cups flour, a pinch of salt"},
]
GEN = "eval.generation.max_new_tokens=24"


def data_overrides(run: Path) -> list[str]:
    return ["dataset=chat_jsonl", f"dataset.path={run.parent / 'data.jsonl'}", "dataset.validation_size=8"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cache_dir) -> Path:
    """A LoRA run on a tiny Llama whose base EOS (<|endoftext|>) is not the template's turn end (<|im_end|>)."""
    from trainer.models import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("served")
    tokenizer = tiny_tokenizer()
    tokenizer.eos_token = "<|endoftext|>"
    model = tiny_model(tokenizer)
    model.generation_config.eos_token_id = model.config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    rows = [
        {"messages": [{"role": "system", "content": SYSTEM},
                      {"role": "user", "content": f"Recipe {i}: {i + 1} cups flour, a pinch of salt"},
                      {"role": "assistant", "content": ANSWER}]}
        for i in range(40)
    ]  # fmt: skip
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = root / "run"
    result = hydratune(
        "model=hf", f"model.name_or_path={root / 'base'}", "model.chat_template=chatml", *data_overrides(run),
        "train.max_steps=60", "train.learning_rate=1e-2", "hardware.threads=1", GEN, f"hydra.run.dir={run}",
        cache=cache_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run


#: The default job's data (dataset=quickstart) on the tiny model: a few LoRA steps at a high learning rate teach it
#: the answers' JSON-list opening, which the base model never writes (it learns no recipe: 4 held-out examples).
QUICKSTART = [
    "model=tiny_random",
    "hardware.threads=1",
    "logger=none",
    "dataset.validation_size=4",
    "eval.generation.max_new_tokens=12",
    "++train.max_steps=20",
    "train.learning_rate=1e-2",
    "train.per_device_train_batch_size=4",
]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory, cache_dir) -> Path:
    """A finished quickstart run (trained in this process: no `hydratune` start-up to pay)."""
    from trainer.config.checks import check_config
    from trainer.engine import pipeline as engine
    from trainer.run import rundir

    run = tmp_path_factory.mktemp("quickstart") / "run"
    cfg = compose(*QUICKSTART, f"output_dir={run}", f"cache_dir={cache_dir}")
    check_config(cfg)
    rundir.start(cfg, run, "train")
    engine.train(cfg, run, "cpu")
    return run


@pytest.fixture(scope="module")
def server(quickstart_run, cache_dir):
    """`hydratune serve` on the finished quickstart run, in a subprocess; stopped (and killed if need be) at the end.
    (The tiny-model run that stops at its EOS is served by the --bench test.)"""
    args = [f"hydra.run.dir={quickstart_run}", "serve.port=0"]
    state, log = quickstart_run / "serve.json", quickstart_run / "serve_cli.log"
    with served_cli(args, state, log, cache_dir) as (process, info):
        yield process, info


@pytest.mark.slow
def test_served_quickstart_run_gives_its_fine_tuned_answers_to_held_out_prompts(server, quickstart_run):
    """`hydratune serve` on a finished quickstart run: the OpenAI SDK's answers to held-out recipes are the run's own
    fine-tuned answers (examples.jsonl), not the base model's."""
    import openai

    from trainer import data

    _, info = server
    assert info["model"] == "quickstart-lora" and info["base_url"].startswith("http://127.0.0.1:")
    examples = [json.loads(line) for line in (quickstart_run / "examples.jsonl").read_text().splitlines()]
    queries = evaluation.queries(data.load_examples(compose(*QUICKSTART).dataset).validation, 4)
    assert [q.reference for q in queries] == [e["reference"] for e in examples]  # the run's held-out recipes
    client = openai.OpenAI(base_url=info["base_url"], api_key="unused")
    answers = [
        client.chat.completions.create(model=info["model"], messages=q.prompt, max_tokens=12, temperature=0)
        .choices[0]
        .message.content
        for q in queries
    ]
    tuned = [e["answers"]["finetuned"]["prediction"] for e in examples]
    base = [e["answers"]["base"]["prediction"] for e in examples]
    assert answers == tuned
    assert all(a.startswith('["') for a in answers)  # the quickstart answers' JSON list, learned ...
    assert not any(b.startswith('["') for b in base)  # ... where the base model writes something else


@pytest.mark.slow
def test_without_the_training_eos_the_model_runs_to_the_token_limit(trained_run, cache_dir):
    """The merged weights `hydratune serve` serves stop at the training EOS (the --bench test: every served answer
    ends with finish_reason stop); with the base model's EOS only they generate to the limit: the EOS handling
    matters."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = export.merged_folder(export.find(trained_run), str(cache_dir))
    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged)
    end, base_eos = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert model.generation_config.eos_token_id == [end, base_eos]
    ids = tokenizer.apply_chat_template(HELD_OUT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        base_only = model.generate(**ids, max_new_tokens=40, do_sample=False, eos_token_id=base_eos)
        trained = model.generate(**ids, max_new_tokens=40, do_sample=False)
    prompt = ids["input_ids"].shape[1]
    assert base_only.shape[1] - prompt == 40
    assert trained.shape[1] - prompt < 16 and trained[0, -1].item() == end


@pytest.mark.slow
def test_in_process_and_served_evaluation_agree(server, quickstart_run):
    """The quickstart run's in-process fine-tuned evaluation and eval.endpoint against the served model: same
    queries, same greedy answers, same exact match and token F1."""
    from trainer import data

    _, info = server
    cfg = compose(*QUICKSTART, f"eval.endpoint.base_url={info['base_url']}", f"eval.endpoint.model={info['model']}",
                  "eval.endpoint.name=served")  # fmt: skip
    queries = evaluation.queries(data.load_examples(cfg.dataset).validation, cfg.eval.max_examples)
    served = endpoint_eval.compare_models(cfg.eval, queries)["served"]
    in_process = json.loads((quickstart_run / "metrics.json").read_text())["finetuned"]
    assert served["examples"] == in_process["examples"] == 4
    assert served["exact_match"] == in_process["exact_match"] and served["token_f1"] == in_process["token_f1"]
    assert [s["prediction"] for s in served["samples"]] == [s["prediction"] for s in in_process["samples"]]


@pytest.mark.slow
def test_exported_model_gives_the_adapters_greedy_answers(trained_run, cache_dir, capsys):
    """`hydratune export`: merged weights that plain transformers loads, same greedy tokens as base + adapter on
    five held-out prompts."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer import data

    out = trained_run.parent / "exported"
    export.main([f"hydra.run.dir={trained_run}", f"export.dir={out}", "export.dtype=float32"])
    assert f"export: merged: {out / 'merged'}" in capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    base = AutoModelForCausalLM.from_pretrained(trained_run.parent / "base")
    adapter = PeftModel.from_pretrained(base, trained_run / "model")
    cfg = compose(*data_overrides(trained_run))
    queries = evaluation.queries(data.load_examples(cfg.dataset).validation, 5)
    assert len(queries) == 5
    for query in queries:
        ids = tokenizer.apply_chat_template(
            query.prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            a = merged.generate(**ids, max_new_tokens=20, do_sample=False)
            b = adapter.generate(
                **ids, max_new_tokens=20, do_sample=False, eos_token_id=merged.generation_config.eos_token_id
            )
        assert a.tolist() == b.tolist()
        assert tokenizer.decode(a[0, ids["input_ids"].shape[1] :], skip_special_tokens=True) == ANSWER


@pytest.mark.slow
def test_export_pushes_to_a_hub_with_the_token_from_the_environment_only(trained_run, cache_dir, tmp_path, monkeypatch):
    token = "hf_FAKE-write-token-0123456789"
    out, home = tmp_path / "pushed", tmp_path / "hf_home"
    with FakeHub(token) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": token, "HF_HUB_OFFLINE": "0", "HF_HOME": str(home)}
        args = ["export", f"hydra.run.dir={trained_run}", f"export.dir={out}", "export.push_to_hub=acme/tiny-chat"]
        result = hydratune(*args, cache=cache_dir, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    files = hub.repos["acme/tiny-chat"]
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
        "chat_template.jinja",
    } <= set(files)
    assert files["model.safetensors"] == (out / "merged" / "model.safetensors").read_bytes()
    assert hub.private["acme/tiny-chat"] and hub.unauthorized == []
    assert files_containing(tmp_path, token) == [] and files_containing(trained_run, token) == []
    assert token not in result.stdout + result.stderr
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(
        UserError, match="needs a Hugging Face token with write access in the environment variable HF_TOKEN"
    ):
        export.push(out / "merged", "acme/tiny-chat", True, [])


@pytest.mark.slow
def test_sigterm_stops_the_server_cleanly(server, quickstart_run):
    process, info = server
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    assert "hydratune: server stopped." in (quickstart_run / "serve_cli.log").read_text()
    assert "Application shutdown complete" in (quickstart_run / "serve.log").read_text()
    assert not (quickstart_run / "serve.json").exists()
    import urllib.request

    with pytest.raises(OSError):
        urllib.request.urlopen(info["base_url"].removesuffix("/v1") + "/health", timeout=2)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda(), reason="this machine has CUDA: serve=vllm is allowed here")
def test_vllm_without_cuda_is_refused_when_the_config_is_composed(tmp_path):
    """Refused right after composition, before the target is even looked at (an empty folder here), so before any
    model loads; vLLM itself cannot be tested on a machine without CUDA."""
    with pytest.raises(UserError, match="serve=vllm needs a CUDA GPU and torch sees none on this machine"):
        serving.main([f"hydra.run.dir={tmp_path}", "serve=vllm"])


def test_serve_refuses_a_folder_that_holds_no_model(tmp_path, cache_dir):
    result = hydratune("serve", str(tmp_path), cache=cache_dir)
    assert result.returncode == 2 and "neither a finished run dir" in result.stderr


@pytest.mark.slow
def test_bench_runs_concurrent_clients_for_30_s_without_errors(trained_run, cache_dir):
    result = hydratune(
        "serve", "--bench", f"hydra.run.dir={trained_run}", "serve.port=0", "serve.bench.clients=4",
        "serve.bench.seconds=30", "serve.bench.max_tokens=16", "serve.bench.usd_per_hour=0.25", cache=cache_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    bench = json.loads((trained_run / "serve_bench.json").read_text())
    assert bench["errors"] == 0 and bench["requests"] >= 4 and bench["elapsed_s"] >= 30
    assert 0 < bench["ttft_p50_s"] <= bench["latency_p50_s"] <= bench["latency_p95_s"]
    assert bench["output_tokens_per_request"] < 16  # answers stop at the training EOS, not at max_tokens ...
    assert bench["stopped"] == bench["requests"]  # ... every one with finish_reason "stop"
    (cost,) = bench["cost_per_1k_queries"]
    assert cost["usd_per_1k_queries"] == pytest.approx(0.25 / 3600 / bench["requests_per_s"] * 1000)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["serving"]["requests"] == bench["requests"] and "finetuned" in metrics
    report = (trained_run / "report.md").read_text()
    assert "## Serving (`hydratune serve --bench`)" in report and "| fine-tuned, served here |" in report
    assert "![loss curve](loss_curve.png)" in report  # the run's report is kept, with the serving section added


def test_cost_per_1000_queries_beside_provider_prices():
    from omegaconf import OmegaConf

    from trainer.hosting.bench import costs

    eval_cfg = OmegaConf.create(
        {"compare_models": [{"name": "gpt", "usd_per_million_input_tokens": 0.15, "usd_per_million_output_tokens": 0.6},
                            {"name": "unpriced", "usd_per_million_input_tokens": None, "usd_per_million_output_tokens": None}]}
    )  # fmt: skip
    metrics = {
        "base": {"prompt_tokens_per_query": 40.0},
        "few_shot": {"prompt_tokens_per_query": 140.0},
        "compare": {"gpt": {"prompt_tokens_per_query": 50.0, "completion_tokens_per_query": 10.0}, "unpriced": {}},
    }
    rows = costs({"requests_per_s": 2.0}, 0.72, metrics, eval_cfg)
    assert [r["model"] for r in rows] == ["fine-tuned, served here", "gpt", "gpt + few-shot prompt (estimate)"]
    served, zero_shot, few_shot = (r["usd_per_1k_queries"] for r in rows)
    assert served == pytest.approx(0.72 / 3600 / 2.0 * 1000)  # 0.1 USD
    assert zero_shot == pytest.approx((50 * 0.15 + 10 * 0.6) / 1000)
    assert few_shot == pytest.approx((150 * 0.15 + 10 * 0.6) / 1000)  # 100 more prompt tokens per query
