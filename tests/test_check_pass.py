"""One check pass: every broken rule of a config is found before anything heavy loads and reported together."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO, hydratune

THREE = ("train.per_device_train_batch_size=0", "eval.few_shot=-1", "serve.engine=nope")


@pytest.mark.parametrize("command", [["--cfg", "job"], ["prepare"], []])
def test_three_independent_mistakes_in_one_message(command, tmp_path):
    result = hydratune(*command, *THREE, f"hydra.run.dir={tmp_path}", cache=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "3 mistakes in the config" in result.stderr
    for key in ("train.per_device_train_batch_size=0", "eval.few_shot=-1", "serve.engine=nope"):
        assert key in result.stderr
    assert "Allowed: transformers, vllm" in result.stderr  # each mistake says what is allowed
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "config.yaml").exists()  # refused before the run dir is written


def test_the_pass_imports_no_torch(tmp_path):
    code = (
        "import sys; from trainer import cli\n"
        f"sys.argv = ['hydratune', *{list(THREE)!r}, 'hydra.run.dir={tmp_path}']\n"
        "try:\n    cli.main()\nexcept SystemExit as exc:\n    assert exc.code == 2, exc.code\n"
        "assert not {'torch', 'transformers'} & set(sys.modules), 'torch or transformers imported'\n"
        "print('OK')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr
    assert "3 mistakes in the config" in result.stderr


def test_a_single_mistake_keeps_its_own_paragraph(tmp_path):
    result = hydratune("--cfg", "job", "eval.few_shot=-1", cache=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("hydratune: error: eval.few_shot=-1 is out of range")
    assert "mistakes in the config" not in result.stderr


def test_unknown_keys_are_all_listed(tmp_path):
    result = hydratune("--cfg", "job", "+train_x=1", "+eval.fewshot=2", cache=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Unknown config key 'train_x'" in result.stderr and "Unknown config key 'eval.fewshot'" in result.stderr
