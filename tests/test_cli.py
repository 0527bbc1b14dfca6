"""The command table of trainer/cli.py: `hydratune --help` lists every command, each command answers its own
--help, and every command's errors go through the one guard (one paragraph, exit 2)."""

from __future__ import annotations

import pytest

from tests.helpers import cli_run
from trainer import cli


def test_help_lists_every_command_with_one_line(capsys):
    code, out, _ = cli_run(capsys, "--help")
    assert code == 0
    listed = {
        line.split()[0] for line in out.split("Commands", 1)[1].split("==", 1)[0].splitlines()[1:] if line.strip()
    }
    assert listed == set(cli.COMMANDS)
    for word, command in cli.COMMANDS.items():
        assert command.summary in out, word


@pytest.mark.parametrize("word", [w for w in cli.COMMANDS if w not in ("train", "prepare", "eval")])
def test_each_command_has_its_own_help(capsys, word):
    code, out, err = cli_run(capsys, word, "--help")
    assert code == 0, err
    assert f"hydratune {word}" in out
    assert "== Configuration groups ==" not in out  # its own page, not the training page


def test_run_commands_help_is_the_config_page(capsys):
    code, out, _ = cli_run(capsys, "prepare", "--help")
    assert code == 0 and "== Configuration groups ==" in out and "record" in out


def test_unknown_command_names_the_commands(capsys):
    code, _, err = cli_run(capsys, "servee")
    assert code == 2 and "serve" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["job-status"],  # no run dir: UserError from launchers.cloud
        ["report", "/nonexistent/run"],  # UserError from trainer.report
        ["record", "dataset=nope"],  # a composition error from Hydra's compose API
        ["export", "/nonexistent", "export.nope=1"],
    ],
)
def test_every_command_errors_through_the_one_guard(capsys, argv):
    code, out, err = cli_run(capsys, *argv)
    assert code == 2, (out, err)
    assert err.startswith("hydratune: error: ") and "Traceback" not in err


def test_a_config_dir_that_does_not_exist_is_named(capsys, tmp_path):
    code, _, err = cli_run(capsys, "--config-dir", str(tmp_path / "nowhere"), "model=tiny_random", "--cfg", "job")
    assert code == 2 and f"--config-dir {tmp_path / 'nowhere'}: no such folder" in err
    assert "Traceback" not in err


def test_cfg_job_and_help_find_the_config_dirs_options(capsys, tmp_path):
    (tmp_path / "experiment").mkdir()
    overlay = "# @package _global_\ndefaults:\n  - override /model: tiny_random\nrun_name: from-my-dir\n"
    (tmp_path / "experiment" / "mine.yaml").write_text(overlay)
    for flag in ("--cfg", "--help"):
        argv = [
            "--config-dir",
            str(tmp_path),
            "experiment=mine",
            "hardware=cpu",
            flag,
            *(["job"] if flag == "--cfg" else []),
        ]
        code, out, err = cli_run(capsys, *argv)
        assert code == 0, err
        assert "run_name: from-my-dir" in out and "source: tiny_random" in out


def test_cfg_job_over_a_sweep_says_it_prints_one_run(capsys):
    code, _, err = cli_run(capsys, "-m", "method=lora,dora", "model=tiny_random", "--cfg", "job")
    assert code == 2 and "Ambiguous" not in err
    assert "--cfg prints the config of one run, but method=lora,dora sweeps several values" in err
    assert "(method=lora)" in err
