"""CONTRIBUTING.md's "where to add" table holds: each row adds a throwaway option the way the table says (through the
registry API, or as a YAML file in a temporary config dir on Hydra's search path) and shows the rest of hydratune
picks it up with nothing else edited."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import REPO, compose
from trainer.config.errors import UserError


def search(tmp_path: Path, group: str, name: str, text: str) -> str:
    """A YAML option ``group/name`` in a temporary config dir, and the override that puts the dir on the path."""
    (tmp_path / "extra" / group).mkdir(parents=True, exist_ok=True)
    (tmp_path / "extra" / group / f"{name}.yaml").write_text(text)
    return f"hydra.searchpath=[file://{tmp_path / 'extra'}]"


def test_the_table_names_what_these_tests_check():
    text = (REPO / "CONTRIBUTING.md").read_text()
    rows = (
        "a dataset format",
        "an objective on an existing data shape",
        "a model",
        "a config rule",
        "a serving engine",
        "a chat template",
        "a provider",
    )
    for row in rows:
        assert f"| {row} |" in text, row


@pytest.fixture
def csv_format():
    """A throwaway format through the registry API: 'question,answer' rows become a chat exchange."""
    from trainer.data import formats

    @formats.data_format("qa_pairs", columns={"question": "question", "answer": "answer"}, shapes=("supervised",))
    def qa_pairs(spec, ignored: Counter):
        def normalise(row):
            return {
                "messages": [
                    {"role": "user", "content": row[spec.columns["question"]]},
                    {"role": "assistant", "content": row[spec.columns["answer"]]},
                ]
            }

        return normalise

    yield qa_pairs
    del formats.FORMATS["qa_pairs"]


def test_a_dataset_format_is_one_registered_function_and_one_yaml(csv_format, tmp_path):
    from launchers import check
    from trainer.data import load_examples

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}?", "answer": f"a{i}"}) + "\n" for i in range(20)))
    option = "defaults:\n  - schema_dataset\n  - _self_\nname: qa\nformat: qa_pairs\npath: ???\nvalidation_size: 4\n"
    cfg = compose(search(tmp_path, "dataset", "qa", option), "dataset=qa", f"dataset.path={data}")
    check(cfg)  # the one check pass knows the format
    examples = load_examples(cfg.dataset, None)
    assert len(examples.train) == 16 and len(examples.validation) == 4
    assert examples.train[0]["messages"][1]["role"] == "assistant"
    with pytest.raises(UserError, match="objective=dpo trains on preference pairs .* dataset.format=qa_pairs"):
        check(compose(search(tmp_path, "dataset", "qa", option), "dataset=qa", f"dataset.path={data}", "objective=dpo"))


def test_an_objective_on_an_existing_shape_is_one_yaml(tmp_path):
    """IPO is DPO with another loss: one YAML naming TRL's trainer and config class, its args checked by signature."""
    from launchers import check
    from trainer.engine import objectives

    option = (
        "defaults:\n  - schema_objective\n  - _self_\nname: ipo\ntrainer: trl.DPOTrainer\nconfig: trl.DPOConfig\n"
        "data: preference\nargs:\n  loss_type: [ipo]\n  beta: 0.1\nheadline: [pair_accuracy]\n"
    )
    path = search(tmp_path, "objective", "ipo", option)
    cfg = compose(path, "objective=ipo", "dataset=quickstart_pairs")
    check(cfg)
    assert objectives.trainer_class(cfg.objective).__name__ == "DPOTrainer"
    with pytest.raises(UserError, match="objective.args"):
        check(compose(path, "objective=ipo", "dataset=quickstart_pairs", "+objective.args.betta=0.2"))


def test_a_model_is_one_yaml(tmp_path):
    from launchers import check

    option = "defaults:\n  - schema_model\n  - _self_\nsource: tiny_random\nname_or_path: my-tiny\n"
    cfg = compose(search(tmp_path, "model", "mine", option), "model=mine")
    check(cfg)
    assert cfg.model.name_or_path == "my-tiny"


def test_a_config_rule_is_one_function_in_the_check_pass():
    """Rules run in one pass and report together: a rule function handed to check_config joins the others."""
    from trainer.config.checks import check_config

    def no_seed_7(cfg):
        if cfg.seed == 7:
            raise UserError("seed=7 is refused by this throwaway rule.")

    with pytest.raises(UserError) as caught:
        check_config(compose("seed=7", "eval.few_shot=-1"), no_seed_7)
    assert "2 mistakes" in str(caught.value) and "seed=7 is refused" in str(caught.value)


ECHO_PROVIDER = '''
"""A throwaway provider (tests/test_where_to_add.py)."""
from launchers.cloud.client import stainless_errors
from trainer.config.errors import UserError


class EchoError(Exception):
    pass


class Echo:
    name = "echo"
    settings = "it takes hardware.max_retries and nothing else."

    def __init__(self, hw):
        self.hw = hw

    def model_name(self, cfg):
        return str(cfg.model.name_or_path)

    def check(self, cfg):
        if cfg.hardware.max_retries > 3:
            raise UserError(f"hardware.max_retries={cfg.hardware.max_retries}: echo allows at most 3.")


def sdk_errors():
    return (EchoError,), (), (EchoError,)


def make(hw):
    return Echo(hw)
'''


@pytest.fixture
def echo_provider(tmp_path, monkeypatch):
    """A throwaway provider module in a folder the providers package is found in (the registry discovers it)."""
    import sys

    from launchers.cloud import providers

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "echo.py").write_text(ECHO_PROVIDER)
    monkeypatch.setattr(providers, "__path__", [*providers.__path__, str(tmp_path / "pkg")])
    yield
    sys.modules.pop("launchers.cloud.providers.echo", None)


def test_a_provider_is_one_module_one_yaml_and_its_fake(echo_provider, tmp_path):
    """One module and one YAML: composed, checked in the one pass (its own rule, its model options, its objectives),
    and its SDK's errors join the retries."""
    from launchers import check
    from launchers.cloud import client
    from launchers.cloud import provider as provider_api

    assert "echo" in provider_api.names()
    option = (
        "defaults:\n  - schema_provider\n  - _self_\nname: echo\nprovider: echo\nmodel_options: [echo_small]\n"
        "objectives: {sft: supervised}\nmax_retries: 2\n"
    )
    model = (
        "defaults:\n  - schema_model\n  - _self_\nsource: provider\nname_or_path: echo-small\nencoding: cl100k_base\n"
    )
    path = search(tmp_path, "hardware", "echo", option)
    search(tmp_path, "model", "echo_small", model)
    cfg = compose(path, "hardware=echo", "model=echo_small", "eval.enabled=false")
    check(cfg)
    assert type(provider_api.get(cfg.hardware)).__name__ == "Echo"
    module = __import__("launchers.cloud.providers.echo", fromlist=["EchoError"])
    assert client.transient(module.EchoError("dropped")) == (True, None)  # its connection errors are retried
    with pytest.raises(UserError, match="echo allows at most 3"):
        check(compose(path, "hardware=echo", "model=echo_small", "eval.enabled=false", "hardware.max_retries=5"))
    with pytest.raises(UserError, match="Pick a provider model: model=echo_small"):
        check(compose(path, "hardware=echo", "eval.enabled=false"))
    with pytest.raises(UserError, match="objective=dpo is not offered by the provider echo .* it trains objective=sft"):
        check(compose(path, "hardware=echo", "model=echo_small", "eval.enabled=false", "objective=dpo"))


def test_a_serving_engine_is_one_module_and_one_yaml(tmp_path, monkeypatch):
    """A throwaway engine module in a temporary copy of the registry's folder, found by name: the check pass
    accepts serve=mine, and hydratune serve would start the command it builds."""
    from types import SimpleNamespace

    from launchers import check
    from trainer.hosting import engines, serve

    folder = tmp_path / "engines"
    folder.mkdir()
    (folder / "mine.py").write_text(
        "STREAM_UPSTREAM = False\n\n\ndef check(serve_cfg):\n    pass\n\n\n"
        "def command(source, serve_cfg, cache_dir, port, workdir):\n"
        "    return ['my-server', str(source.folder), '--port', str(port)], serve_cfg.model_name or source.name\n"
    )
    monkeypatch.setattr(engines, "__path__", [*engines.__path__, str(folder)])
    option = "defaults:\n  - schema_serve\n  - _self_\nengine: mine\n"
    cfg = compose(search(tmp_path, "serve", "mine", option), "serve=mine")
    check(cfg)
    assert "mine" in engines.names()
    source = SimpleNamespace(folder=tmp_path / "model", name="run")
    argv, name = serve.engine_command(source, cfg.serve, str(tmp_path), 8123, tmp_path)  # type: ignore[arg-type]
    assert argv == ["my-server", str(tmp_path / "model"), "--port", "8123"] and name == "run"
    with pytest.raises(UserError, match="serve.engine=nope is not a valid serving engine. Allowed: mine, "):
        check(compose("serve.engine=nope"))


def test_a_chat_template_is_one_jinja_file(tmp_path, monkeypatch):
    """A throwaway template in a temporary copy of the templates folder is a name model.chat_template accepts."""
    import shutil

    from launchers import check
    from trainer.config import chat_templates

    folder = tmp_path / "templates"
    shutil.copytree(chat_templates._folder(), folder)  # type: ignore[arg-type]
    (folder / "mine.jinja").write_text(
        "{#- special_tokens: <|u|> <|a|> <|end|> ; eos: <|end|> -#}\n"
        "{% for m in messages %}{{ '<|u|>' if m.role == 'user' else '<|a|>' }}{{ m.content }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|a|>{% endif %}"
    )
    monkeypatch.setattr(chat_templates, "_folder", lambda: folder)
    assert "mine" in chat_templates.names()
    template = chat_templates.resolve("mine")
    assert template.eos == "<|end|>" and template.special_tokens == ("<|u|>", "<|a|>", "<|end|>")
    check(compose("model=tiny_random", "model.chat_template=mine"))
    with pytest.raises(UserError, match="mine"):
        check(compose("model=tiny_random", "model.chat_template=minee"))
