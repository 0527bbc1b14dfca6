"""`hydratune import`: every published LLaMA-Factory and Axolotl config kept under tests/assets/peer_configs (and
the AutoTrain ones) converts to an experiment that composes and passes the check pass, or is refused key by key
with exit 2; never a traceback. The header accounts for every source key. Two of each peer's train 3 steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import ASSETS, compose, hydratune
from trainer import cli
from trainer.config import machine
from trainer.config.checks import check_config

PEERS = ASSETS / "peer_configs"
FIXTURES = sorted([*PEERS.glob("llamafactory/*.yaml"), *PEERS.glob("axolotl/*.y*ml")])
#: Refused, and the keys the refusal must name.
REFUSED = {"qwen3vl_lora_sft.yaml": ("image_max_pixels", "video_max_pixels")}


def _import(capsys, path: Path, out: Path) -> tuple[int, str, str]:
    try:
        cli.main(["import", str(path), "--out", str(out)])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    o, e = capsys.readouterr()
    return code, o, e


def test_a_dozen_of_each_peers_published_configs_are_kept():
    assert len([f for f in FIXTURES if f.parent.name == "llamafactory"]) >= 10
    assert len([f for f in FIXTURES if f.parent.name == "axolotl"]) >= 12


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_peer_config_converts_or_is_refused_key_by_key(tmp_path, capsys, monkeypatch, path):
    out = tmp_path / "experiment" / "imported.yaml"
    code, stdout, stderr = _import(capsys, path, out)
    if path.name in REFUSED:
        assert code == 2 and not out.exists()
        assert stderr.startswith("hydratune: error: ") and all(f"{k}:" in stderr for k in REFUSED[path.name])
        return
    assert code == 0, stderr
    text = out.read_text()
    header = text.split("\ndefaults:", 1)[0]
    spec = yaml.safe_load(path.read_text())
    for key, value in spec.items():
        if value not in (None, "", []):
            assert f"#   {key}" in header, f"{key} is neither mapped nor listed with a reason"
    # Checked as on the GPU machine the config is written for (this machine's packages: tests/test_machine.py).
    monkeypatch.setattr(machine, "installed", lambda module: True)
    monkeypatch.setattr(machine, "runs_on_cpu", lambda cfg: False)
    cfg = compose("experiment=imported", f"hydra.searchpath=[file://{tmp_path}]", "hardware=single_gpu")
    check_config(cfg)
    if "base_model" in spec or "model_name_or_path" in spec:
        assert cfg.model.name_or_path == spec.get("base_model", spec.get("model_name_or_path"))


def test_the_mapping_of_a_lora_sft_config(tmp_path, capsys):
    out = tmp_path / "experiment" / "lf.yaml"
    assert _import(capsys, PEERS / "llamafactory" / "qwen3_lora_sft.yaml", out)[0] == 0
    cfg = compose("experiment=lf", f"hydra.searchpath=[file://{tmp_path}]")
    assert (cfg.method.name, cfg.method.peft.r, cfg.method.peft.target_modules) == ("lora", 8, "all-linear")
    assert (cfg.train.max_length, cfg.train.gradient_accumulation_steps, cfg.train.lr_scheduler_type) == (
        2048,
        8,
        "cosine",
    )
    out = tmp_path / "experiment" / "ax.yaml"
    assert _import(capsys, PEERS / "axolotl" / "llama-3__qlora-1b.yml", out)[0] == 0
    cfg = compose("experiment=ax", f"hydra.searchpath=[file://{tmp_path}]")
    assert cfg.method.name == "qlora" and cfg.train.packing is True and cfg.dataset.format == "alpaca"
    assert "method=lora" not in out.read_text()
    assert compose("experiment=ax", f"hydra.searchpath=[file://{tmp_path}]", "method=lora").method.quantization is None


def test_an_unknown_format_and_bad_yaml_are_one_paragraph(tmp_path, capsys):
    other = tmp_path / "other.yaml"
    other.write_text("foo: 1\n")
    code, _, err = _import(capsys, other, tmp_path / "x.yaml")
    assert code == 2 and "LLaMA-Factory" in err and "Axolotl" in err and "Traceback" not in err
    other.write_text("a: [1\n")
    code, _, err = _import(capsys, other, tmp_path / "x.yaml")
    assert code == 2 and "not valid YAML" in err


def test_autotrain_configs_import_too(tmp_path, capsys):
    out = tmp_path / "experiment" / "at.yaml"
    code, _, err = _import(capsys, ASSETS / "autotrain" / "plain_text.yml", out)
    assert code == 0, err
    assert "AutoTrain" in out.read_text().splitlines()[1]


#: (config, overrides for this CPU): the 8-bit Axolotl config trains its LoRA unquantized here (method=lora drops the
#: quantization the converted experiment picked).
TRAINED = [
    ("llamafactory/qwen3_lora_sft.yaml", ()),
    ("llamafactory/qwen3_full_sft.yaml", ()),
    ("axolotl/llama-3__lora-1b.yml", ()),
    ("axolotl/tiny-llama__lora.yml", ("method=lora",)),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "extra"), TRAINED, ids=[name for name, _ in TRAINED])
def test_two_of_each_peers_converted_configs_train_three_steps(tmp_path, cache_dir, name, extra):
    out = tmp_path / "conf" / "experiment" / "peer.yaml"
    result = hydratune("import", str(PEERS / name), "--out", str(out), cache=cache_dir)
    assert result.returncode == 0, result.stderr
    # The tiny model and the quickstart data instead of the config's hub model and data (an option picked on the
    # command line keeps the values the experiment set: dataset.path too); this CPU's settings.
    result = hydratune(
        "experiment=peer", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=tiny_random",
        "model.name_or_path=tiny-random-llama", "model.trust_remote_code=false", "model.attn_implementation=null",
        "dataset=quickstart", "dataset.path=${asset:quickstart/recipes.jsonl}", "hardware=cpu", "train.max_steps=3",
        "train.bf16=false", "train.optim=adamw_torch", "train.dataloader_num_workers=0", "train.max_length=256",
        "eval=none", f"hydra.run.dir={tmp_path / 'run'}", *extra,
        cache=cache_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "status.json").read_text().count('"ok"') >= 1


def test_a_llamafactory_dataset_registry_becomes_dataset_options(tmp_path, capsys, monkeypatch):
    """dataset_info.json entries (the shapes of LLaMA-Factory's own data/dataset_info.json) -> conf/dataset options
    that compose and read their rows; entries hydratune would read differently are listed, not written."""
    import json

    from trainer import data

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    rows = {
        "identity.json": [{"instruction": f"who {i}", "input": "", "output": "me"} for i in range(4)],
        "chat.json": [
            {"dialog": [{"role": "user", "content": "hi"}, {"role": "bot", "content": f"yo {i}"}]} for i in range(4)
        ],  # fmt: skip
        "c4.jsonl": [{"body": f"raw text {i}"} for i in range(4)],
    }
    for name, content in rows.items():
        (tmp_path / "data" / name).write_text(json.dumps(content) if name.endswith(".json") else
                                              "\n".join(json.dumps(r) for r in content))  # fmt: skip
    registry = {
        "identity": {"file_name": "identity.json"},
        "chat": {"file_name": "chat.json", "formatting": "sharegpt", "columns": {"messages": "dialog"},
                 "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "bot"}},
        "c4": {"file_name": "c4.jsonl", "columns": {"prompt": "body"}},
        "mllm": {"file_name": "m.json", "formatting": "sharegpt", "columns": {"messages": "m", "images": "images"}},
        "belle": {"script_url": "llamafactory/belle_multiturn"},
    }  # fmt: skip
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps(registry))
    code, out, err = _import(capsys, Path("data/dataset_info.json"), tmp_path / "conf" / "dataset")
    assert code == 0, err
    assert "wrote 3 dataset option(s)" in out and "identity, chat, c4" in out
    assert "not imported: mllm: columns.images" in out and "not imported: belle: script_url" in out
    assert not (tmp_path / "conf" / "dataset" / "mllm.yaml").exists()
    expected = {
        "identity": ("alpaca", "data/identity.json", {"role": "assistant", "content": "me"}),
        "chat": ("sharegpt", "data/chat.json", {"role": "assistant", "content": "yo 0"}),  # the bot tag's role
        "c4": ("text", "data/c4.jsonl", None),
    }
    for name, (fmt, path, answer) in expected.items():
        cfg = compose(f"dataset={name}", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "dataset.validation_size=0")
        assert (cfg.dataset.name, cfg.dataset.format, cfg.dataset.path) == (name, fmt, path)
        train = data.load_examples(cfg.dataset, None).train
        assert len(train) == 4
        if answer is not None:
            assert any(row["messages"][-1] == answer for row in train), train
    code, _, err = _import(capsys, Path("data/dataset_info.json"), tmp_path / "conf" / "dataset")
    assert code == 2 and err.count("already exists (--force overwrites it)") == 3


def test_freeze_tuning_added_tokens_and_a_starting_adapter_are_imported(tmp_path, capsys):
    lf = {
        "model_name_or_path": "Qwen/Qwen3-4B-Instruct-2507",
        "stage": "sft",
        "finetuning_type": "freeze",
        "freeze_trainable_layers": 4,
        "freeze_trainable_modules": "all",
        "freeze_extra_modules": "lm_head,norm",
        "new_special_tokens": "<tool>,</tool>",
    }
    source = tmp_path / "lf_freeze.yaml"
    source.write_text(yaml.safe_dump(lf))
    assert _import(capsys, source, tmp_path / "experiment" / "lf_freeze.yaml")[0] == 0
    cfg = compose("experiment=lf_freeze", f"hydra.searchpath=[file://{tmp_path}]")
    assert cfg.method.name == "freeze" and cfg.method.freeze.trainable_layers == 4
    assert list(cfg.method.freeze.trainable_modules) == ["lm_head", "norm"]
    assert list(cfg.model.add_special_tokens) == ["<tool>", "</tool>"]

    source.write_text(yaml.safe_dump({**lf, "freeze_trainable_modules": "mlp"}))
    code, _, err = _import(capsys, source, tmp_path / "experiment" / "part.yaml")
    assert code == 2 and "freeze_trainable_modules: mlp trains part of each chosen layer" in err

    ax = {"base_model": "NousResearch/Llama-3.2-1B", "adapter": "lora", "lora_model_dir": "outputs/lora-out",
          "tokens": ["<tool>"], "lora_r": 16}  # fmt: skip
    source = tmp_path / "ax.yml"
    source.write_text(yaml.safe_dump(ax))
    assert _import(capsys, source, tmp_path / "experiment" / "ax.yaml")[0] == 0
    cfg = compose("experiment=ax", f"hydra.searchpath=[file://{tmp_path}]")
    assert cfg.method.init_adapter == "outputs/lora-out" and list(cfg.model.add_special_tokens) == ["<tool>"]
