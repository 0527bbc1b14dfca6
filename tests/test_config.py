"""Every option of every group composes and the library objects it names can be constructed; user mistakes
give one-paragraph errors with the key, the value and what is allowed."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.helpers import REPO, compose, compose_checked, hydratune
from trainer.config.checks import check_config, check_schema
from trainer.config.errors import UserError
from trainer.config.schema import SCHEMAS, RootSchema

GROUPS = ["model", "dataset", "method", "hardware", "logger", "eval", "objective", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


def required_overrides(group: str, option: str) -> list[str]:
    """The option, plus a value for each mandatory key it leaves to the user (a dataset's path, a model's id)."""
    extra = [f"{group}={option}"]
    own = yaml.safe_load((REPO / "conf" / group / f"{option}.yaml").read_text()) or {}
    if group == "model" and "name_or_path" not in own:
        extra.append("model.name_or_path=some-org/some-model")
    if group == "dataset" and "path" not in own:
        extra.append("dataset.path=data.jsonl")
    if group == "objective" and "teacher" in own:
        extra.append("objective.teacher.name_or_path=some-org/some-teacher")
    return extra


CASES = [(g, o) for g in GROUPS for o in options(g)]


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_option_composes(group, option, tmp_path):
    cfg = compose(*required_overrides(group, option), f"output_dir={tmp_path}")
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    check_schema(cfg)
    if group == "experiment":
        overlay = yaml.safe_load((REPO / "conf" / group / f"{option}.yaml").read_text())
        for key in set(overlay) - {"defaults", "hydra"}:
            assert key in resolved, f"experiment={option} sets '{key}', missing from the composed config"
        return
    schema = OmegaConf.get_type(cfg[group])  # the option's own schema, a subclass of the root's typed field
    assert schema in SCHEMAS.values() and issubclass(schema, typing.get_type_hints(RootSchema)[group])


@pytest.mark.parametrize("option", options("method"))
def test_method_objects_construct(option):
    cfg = compose(f"method={option}")
    for node in ("peft", "quantization"):
        if cfg.method[node] is not None:
            obj = instantiate(cfg.method[node])
            assert type(obj).__name__ == cfg.method[node]._target_.rsplit(".", 1)[1]
    if option == "dora":
        assert instantiate(cfg.method.peft).use_dora is True


def test_train_node_constructs_sft_config(tmp_path):
    from trl import SFTConfig

    cfg = compose()
    train = OmegaConf.to_container(cfg.train, resolve=True) | {"bf16": False}
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, **train)
    assert args.learning_rate == cfg.train.learning_rate


def test_metrics_construct():
    cfg = compose()
    metrics = [instantiate(m) for m in cfg.eval.metrics]
    assert [m.name for m in metrics] == ["exact_match", "token_f1"]


def test_library_args_file_matches_installed_libraries():
    from trainer.config.library_args import TARGETS, describe, recorded

    for target in TARGETS:
        assert recorded()[target] == describe(target), (
            f"run `python -m trainer.config.library_args` after upgrading {target}"
        )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["method=qlora", "hardware=cpu"], "needs a CUDA GPU"),
        (["train.lerning_rate=1e-4"], "Did you mean 'learning_rate'"),
        (["+train.max_stepz=3"], "Did you mean 'max_steps'"),
        (["train.learning_rate=fast"], "takes float"),
        (["+method.peft.rank=8"], "not an argument of peft.LoraConfig"),
        (["dataset.on_error=ignore"], "Allowed: fail, skip"),
        (["model.dtype=bfloat"], "Did you mean 'bfloat16'"),
        (["+unknown_key=1"], "Unknown config key 'unknown_key': the root config has no key 'unknown_key'"),
        (["+model.dtyp=float32"], "Unknown config key 'model.dtyp'"),
        (["+eval.generation.temprature=0.5"], "Did you mean 'temperature'?"),
        (["eval.few_shot=-1"], "eval.few_shot=-1 is out of range: it must be at least 0"),
        (["eval.batch_size=0"], "eval.batch_size=0 is out of range: it must be at least 1"),
        (["eval.generation.top_p=0"], "eval.generation.top_p=0.0 is out of range: it must be greater than 0"),
        (["train.per_device_train_batch_size=0"], "train.per_device_train_batch_size=0 is out of range"),
        (["dataset.max_train_examples=-1"], "dataset.max_train_examples=-1 is out of range"),
        (["dataset.mix=[{path:a.jsonl,weight:-1}]"], "dataset.mix[0].weight=-1.0 is out of range"),
        (["seed=-1"], "seed=-1 is out of range"),
        (["seed=4294967296"], "seed=4294967296 is out of range: it must be at least 0 and at most 4294967295"),
        (["++train.seed=4294967296"], "(numpy's seed range, 0 <= seed < 2**32)"),
        (["method.peft.lora_alpha=[1,2]"], "method.peft.lora_alpha=[1, 2] has the wrong type"),
        (["model=tiny_random", "eval.few_shot=1000000"], "eval.few_shot=1000000 demonstrations cannot fit"),
        (["hardware=ddp", "hardware.num_nodes=0"], "hardware.num_nodes=0 is out of range"),
        (["+hardware.num_nodes=2"], "'hardware' (LocalHardwareSchema) has no key 'num_nodes'"),
        (["method=lora_int8", "hardware=cpu"], "method=lora_int8 quantizes the base model to 8 bits"),
        (["method=freeze", "method.freeze.trainable_layers=0"], "method=freeze trains nothing"),
        (["method=freeze", "method.quantization={load_in_4bit: true}"], "method=freeze trains whole layers"),
        (["method=lora", "+method.freeze.trainable_layers=1"], "'method' (MethodSchema) has no key 'freeze'"),
        (["method=full", "method.init_adapter=."], "method=full trains no adapter"),
        (["method.init_adapter=no/such/dir"], "method.init_adapter=no/such/dir is not a folder"),
        (["method.init_adapter=."], "method.init_adapter=. has no adapter_config.json"),
        (["model.add_special_tokens=['<a>','']"], "model.add_special_tokens holds an empty token ('')"),
    ],
)
def test_bad_values_and_combinations_are_user_errors(overrides, expected):
    with pytest.raises(UserError, match=re.escape(expected)):
        check_config(compose_checked(*overrides))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["method=lorra"], "There is no option 'lorra' in config group 'method'. Did you mean 'lora'?"),
        (["model.dtyp=float32"], "Unknown config key 'model.dtyp'. Did you mean 'dtype'?"),
        (["eval.batch_size=many"], "Wrong type for config key 'eval.batch_size': got 'many'"),
        (
            ["train.lerning_rate=1"],
            "'train.lerning_rate' is not an argument of trl.SFTConfig. Did you mean 'learning_rate'?",
        ),
        (["method=qlora", "hardware=cpu"], "needs a CUDA GPU"),
        (["frobnicate"], "Unknown command 'frobnicate'"),
        (["+unknown_key=1"], "Unknown config key 'unknown_key'"),
        (["eval.few_shot=-1"], "eval.few_shot=-1 is out of range"),
        (["--cfg", "job", "+unknown_key=1"], "Unknown config key 'unknown_key'"),
        (["--help", "method=dorra"], "There is no option 'dorra' in config group 'method'"),
        (["eval.judge.rubric=a=b"], """Cannot read the override 'eval.judge.rubric=a=b'"""),
    ],
)
def test_cli_errors_are_one_paragraph_without_traceback(args, expected, tmp_path):
    result = hydratune(*args, f"hydra.run.dir={tmp_path}", cache=tmp_path)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("hydratune: error: ")


def test_help_cfg_and_config_mistakes_do_not_import_torch(tmp_path):
    """--help, --cfg and a config mistake found by the checks (one that composes) answer without torch/transformers."""
    import subprocess
    import sys

    code = (
        "import sys; from trainer import cli\n"
        f"for argv in (['--cfg', 'job'], ['--help'], ['eval.few_shot=-1', 'hydra.run.dir={tmp_path}']):\n"
        "    sys.argv = ['hydratune', *argv]\n"
        "    try:\n        cli.main()\n    except SystemExit:\n        pass\n"
        "    assert not {'torch', 'transformers'} & set(sys.modules), f'{argv}: torch or transformers imported'\n"
        "print('OK')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "eval.few_shot=-1 is out of range" in result.stderr
    assert "Configuration groups" in result.stdout and "OK" in result.stdout
    assert "model: smollm2_135m" not in result.stdout  # --cfg prints the config, not choices
    assert (
        "method: dora, freeze, full, lora, lora_int8, qlora, qlora_fp16\n" in result.stdout
    )  # options only, no schema_* entries
    assert Path(REPO / "conf" / "config.yaml").exists()


@pytest.mark.slow
def test_tf32_on_the_cpu_is_a_user_error(tmp_path):
    result = hydratune(
        "model=tiny_random", "train.tf32=true", "hardware=cpu", f"hydra.run.dir={tmp_path}", cache=tmp_path
    )
    assert result.returncode == 2 and "train.tf32=true" in result.stderr and "Traceback" not in result.stderr
