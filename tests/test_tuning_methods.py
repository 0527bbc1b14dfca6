"""What a run trains, on the tiny model in this process: added special tokens (their embedding and output rows train
with the adapter and survive the merge and the export), freeze tuning (only the chosen layers change) and training
that starts from an existing adapter (the adapter is loaded, not initialised afresh)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import compose

pytestmark = pytest.mark.slow  # each fixture trains the tiny model a few steps

BASE = [
    "model=tiny_random",
    "hardware=cpu",
    "hardware.threads=1",
    "logger=none",
    "eval.enabled=false",
    "++train.logging_steps=1",
    "++train.save_strategy=no",
    "train.per_device_train_batch_size=2",
    "train.warmup_steps=0",
    "dataset.max_train_examples=16",
]
NEW_TOKENS = ["<tool>", "</tool>"]
ADD_TOKENS = "model.add_special_tokens=[" + ",".join(f"'{t}'" for t in NEW_TOKENS) + "]"
FAST = "train.learning_rate=1e-2"  # 3 steps move the loss well above its noise


def train(run_dir: Path, cache_dir: Path, *overrides: str):
    """engine.train in this process, as `hydratune train` runs it; returns (config, run dir, losses by step)."""
    from trainer.config.checks import check_config
    from trainer.engine import pipeline, training
    from trainer.run import journal, rundir

    cfg = compose(*BASE, *overrides, f"output_dir={run_dir}", f"cache_dir={cache_dir}")
    check_config(cfg)
    rundir.start(cfg, run_dir, "train")
    pipeline.train(cfg, run_dir, "cpu")
    history = journal.read(run_dir)[training.PHASE]["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    return cfg, run_dir, losses


@pytest.fixture(scope="module")
def tokens_run(tmp_path_factory, cache_dir):
    """LoRA with 2 added tokens, 3 steps (also the adapter that method.init_adapter goes on from below)."""
    return train(tmp_path_factory.mktemp("tokens"), cache_dir, ADD_TOKENS, FAST, "++train.max_steps=3")


def test_added_tokens_train_and_survive_the_merged_export(tokens_run, cache_dir):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer import models
    from trainer.hosting import export

    cfg, run_dir, _ = tokens_run
    base_folder = models.resolve_path(cfg.model, cache_dir)
    base = AutoModelForCausalLM.from_pretrained(base_folder)
    base_vocab = base.get_input_embeddings().num_embeddings

    out = run_dir / "exported"
    export.main([f"hydra.run.dir={run_dir}", f"export.dir={out}", "export.dtype=float32"])
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    ids = tokenizer.convert_tokens_to_ids(NEW_TOKENS)
    assert ids == [base_vocab, base_vocab + 1]  # new to the vocabulary, in order
    assert [tokenizer.decode([i]) for i in ids] == NEW_TOKENS and set(NEW_TOKENS) <= set(tokenizer.all_special_tokens)
    assert merged.get_input_embeddings().num_embeddings == len(tokenizer) == base_vocab + 2
    assert merged.config.vocab_size == len(tokenizer)

    # the adapter saved the whole trained embedding and output layers; the export holds exactly those rows
    saved = load_file(run_dir / "model" / "adapter_model.safetensors")
    (head_key,) = [k for k in saved if k.endswith("lm_head.modules_to_save.weight")]
    (embed_key,) = [k for k in saved if k.endswith("embed_tokens.modules_to_save.weight")]
    assert torch.equal(merged.lm_head.weight[ids], saved[head_key][ids])
    assert torch.equal(merged.get_input_embeddings().weight[ids], saved[embed_key][ids])
    # resizing starts a new row at the mean of the old ones (transformers' mean_resizing): the output rows moved
    start = base.lm_head.weight.mean(dim=0)
    moved = (merged.lm_head.weight[ids] - start).abs().max().item()
    assert moved > 1e-4, moved


# ---------------------------------------------------------------- method=freeze


@pytest.fixture(scope="module")
def freeze_run(tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("freeze")
    overrides = ["method=freeze", "method.freeze.trainable_layers=1", "method.freeze.trainable_modules=[norm]"]
    return train(run_dir, cache_dir, *overrides, "++train.max_steps=2", "train.learning_rate=1e-3")


def test_freeze_trains_only_the_chosen_layers(freeze_run, cache_dir):
    import torch
    from safetensors.torch import load_file

    from trainer import models

    cfg, run_dir, _ = freeze_run
    base = load_file(Path(models.resolve_path(cfg.model, cache_dir)) / "model.safetensors")
    tuned = load_file(run_dir / "model" / "model.safetensors")  # a full model: every weight saved
    assert tuned.keys() == base.keys()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    chosen = {k for k in base if k.startswith("model.layers.1.") or k == "model.norm.weight"}
    assert changed == chosen  # the last of the 2 layers and the final norm; embeddings, layer 0 and lm_head kept
    hardware = json.loads((run_dir / "metrics.json").read_text())["hardware"]
    counts = (hardware["trainable_parameters"], hardware["parameters"])
    assert counts == (sum(base[k].numel() for k in chosen), sum(v.numel() for v in base.values()))


def test_freeze_refuses_more_layers_than_the_model_has(freeze_run, cache_dir):
    from trainer import models
    from trainer.config.errors import UserError
    from trainer.engine.before_weights import check_before_weights

    cfg = compose(*BASE, "method=freeze", "method.freeze.trainable_layers=3", f"cache_dir={cache_dir}")
    path = models.resolve_path(cfg.model, cache_dir)
    tokenizer, _ = models.load_tokenizer(cfg.model, path)
    with pytest.raises(UserError, match=r"trainable_layers=3: .* has 2 decoder layers \(model.layers\)"):
        check_before_weights(cfg, path, tokenizer, None, [])
    cfg = compose(*BASE, "method=freeze", "method.freeze.trainable_modules=[lm_haed]", f"cache_dir={cache_dir}")
    with pytest.raises(UserError, match=r"'lm_haed' matches no module .* Did you mean 'lm_head'"):
        check_before_weights(cfg, path, tokenizer, None, [])


# ---------------------------------------------------------------- method.init_adapter


@pytest.fixture(scope="module")
def continued_run(tmp_path_factory, cache_dir, tokens_run):
    """A run that starts from tokens_run's adapter (the same seed: the same data order, the same first batch)."""
    adapter = tokens_run[1] / "model"
    overrides = (ADD_TOKENS, FAST, f"method.init_adapter={adapter}", "++train.max_steps=1")
    return train(tmp_path_factory.mktemp("continued"), cache_dir, *overrides)


def test_training_goes_on_from_the_adapter(tokens_run, continued_run):
    first, second = tokens_run[2], continued_run[2]
    assert first[0] - first[-1] > 0.05, first  # the first run learned something on its 3 steps
    # the same first batch: a fresh adapter (lora_B = 0) would score it as the base model did in the first run
    assert abs(second[0] - first[-1]) < abs(second[0] - first[0]), (first, second)
    assert second[0] < first[0] - 0.05, (first, second)
    saved = json.loads((continued_run[1] / "model" / "adapter_config.json").read_text())
    assert sorted(saved["modules_to_save"]) == ["embed_tokens", "lm_head"]  # the added tokens' rows went on training


def test_an_adapter_that_does_not_fit_is_refused_naming_the_difference(tokens_run, tmp_path, cache_dir):
    import shutil

    from trainer import models
    from trainer.config.checks import check_config
    from trainer.config.errors import UserError

    adapter = tokens_run[1] / "model"
    cfg = compose(*BASE, ADD_TOKENS, f"method.init_adapter={adapter}", "method.peft.r=8")
    with pytest.raises(UserError, match=r"method.peft.r: the adapter's 16, the config's 8"):
        check_config(cfg)

    moved = tmp_path / "adapter"
    shutil.copytree(adapter, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "someone/other"}))
    cfg = compose(
        *BASE, f"method.init_adapter={moved}", "method.peft.target_modules=[q_proj]", f"cache_dir={cache_dir}"
    )
    path = models.resolve_path(cfg.model, cache_dir)
    with pytest.raises(UserError) as refused:  # without the added tokens, on another base, other target modules
        models.check_init_adapter(cfg.model, cfg.method, path, models.model_config(cfg.model, path), 0)
    message = str(refused.value)
    assert "base model: the adapter's someone/other, the config's tiny-random-llama" in message
    assert "target_modules: the adapter wraps down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in message
    assert (
        "modules_to_save, trained when tokens are added" in message
        and "the adapter's ['embed_tokens', 'lm_head'], the config's []" in message
    )
