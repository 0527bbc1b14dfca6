"""Distributed strategies without starting any worker: generated DeepSpeed configs, launcher commands, node ranks,
the dry run, the SLURM script and the errors users cause."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from launchers import check, deepspeed_config, distributed, slurm
from tests.helpers import compose, compose_checked, hydratune
from trainer.config.errors import UserError
from trainer.config.schema import hardware_schema
from trainer.run.threads import usable_cores

OPTIONS = {"ddp": (0, False), "deepspeed_zero2": (2, False), "deepspeed_zero3": (3, False)}
OPTIONS["deepspeed_zero3_offload"] = (3, True)


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_every_option_composes_and_its_deepspeed_config_loads(option):
    from transformers.integrations import HfDeepSpeedConfig

    cfg = compose(f"hardware={option}", "model=tiny_random")
    assert hardware_schema(cfg).runner == "launchers.distributed" and cfg.hardware.name == option
    stage, offload = OPTIONS[option]
    ds = deepspeed_config.build(cfg.hardware)
    if stage == 0:
        assert ds is None
        return
    assert ds["zero_optimization"]["stage"] == stage and ds["train_micro_batch_size_per_gpu"] == "auto"
    parsed = HfDeepSpeedConfig(ds)  # the HF integration's own parser, "auto" values included
    assert parsed.is_zero3() == (stage == 3) and parsed.is_offload() == offload
    if offload:
        assert ds["optimizer"]["params"]["lr"] == "auto"


def test_users_own_deepspeed_json_is_used_as_is(tmp_path):
    mine = {"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": 3, "custom": [1, 2]}
    (tmp_path / "ds.json").write_text(json.dumps(mine))
    cfg = compose("hardware=deepspeed_zero3", f"hardware.deepspeed_config={tmp_path / 'ds.json'}")
    assert deepspeed_config.build(cfg.hardware) == mine


def test_launcher_commands(tmp_path):
    worker = ["-m", "launchers.worker", "--run-dir", str(tmp_path)]
    hw = compose("hardware=ddp", "hardware.master_port=1234").hardware
    cmd = distributed.launcher_command(hw, tmp_path, 2, 0, "cpu")
    assert Path(cmd[0]).name == "torchrun"
    assert cmd[1:] == [
        *("--nnodes", "1", "--nproc_per_node", "2", "--node_rank", "0"),
        *("--master_addr", "127.0.0.1", "--master_port", "1234", *worker),
    ]
    hw = compose("hardware=deepspeed_zero3", "hardware.num_nodes=2", "hardware.master_addr=node0").hardware
    cmd = distributed.launcher_command(hw, tmp_path, 8, 1, "cuda")
    assert Path(cmd[0]).name == "deepspeed"
    assert cmd[1:] == [
        *("--num_nodes", "2", "--num_gpus", "8", "--master_addr", "node0", "--master_port", "29500"),
        *("--no_ssh", "--node_rank", "1", "--module", *worker[1:]),
    ]
    hw = compose("hardware=ddp", "hardware.launcher=accelerate", "hardware.num_nodes=2").hardware
    cmd = distributed.launcher_command(hw, tmp_path, 4, 1, "cuda")
    assert cmd[1:12] == [
        *("launch", "--multi_gpu", "--num_processes", "8", "--num_machines", "2", "--machine_rank", "1"),
        *("--main_process_ip", "127.0.0.1", "--main_process_port"),
    ]
    assert "--cpu" not in cmd  # accelerate's --cpu silently runs a single process


def test_node_rank_comes_from_the_config_or_the_environment(monkeypatch):
    hw = compose("hardware=ddp").hardware
    monkeypatch.delenv("NODE_RANK", raising=False)
    monkeypatch.delenv("SLURM_NODEID", raising=False)
    assert distributed.node_rank(hw) == 0
    monkeypatch.setenv("SLURM_NODEID", "3")
    assert distributed.node_rank(hw) == 3
    monkeypatch.setenv("NODE_RANK", "2")
    assert distributed.node_rank(hw) == 2
    assert distributed.node_rank(compose("hardware=ddp", "hardware.node_rank=5").hardware) == 5


def test_slurm_script(tmp_path):
    cfg = compose(
        "hardware=deepspeed_zero3",
        "hardware.submit=slurm",
        "hardware.num_nodes=4",
        "hardware.num_processes=8",
        "hardware.threads=6",
        "+hardware.sbatch.partition=gpu",
        "+hardware.sbatch.time='24:00:00'",
        "run_name=big",
    )
    script = slurm.render(cfg, tmp_path / "run dir", 8, 6, "cuda")
    for line in (
        "#SBATCH --job-name=hydratune-big",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=48",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=24:00:00",
        "export OMP_NUM_THREADS=6",
    ):
        assert line + "\n" in script, line
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert '--nnodes "$SLURM_JOB_NUM_NODES" --nproc_per_node 8 --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d' in srun
    assert srun.endswith(f"-m launchers.worker --run-dir '{tmp_path / 'run dir'}'")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


@pytest.mark.slow
def test_dry_run_prints_command_and_deepspeed_config_and_runs_nothing(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    args = ["model=tiny_random", "hardware=deepspeed_zero3_offload", "hardware.dry_run=true", "hardware.threads=null"]
    result = hydratune(*args, f"hydra.run.dir={run_dir}", cache=cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    threads = max(1, usable_cores()[0] // 2)
    assert f"OMP_NUM_THREADS={threads} " in out
    assert (
        f"--num_gpus 2 --master_addr 127.0.0.1 --master_port 29500 --module launchers.worker --run-dir {run_dir}" in out
    )
    generated = json.loads(out[out.index("{") : out.rindex("}") + 1])
    assert generated["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert not any((run_dir / name).exists() for name in ("config.yaml", "deepspeed.json", "logs", "checkpoints"))


@pytest.mark.slow
def test_slurm_dry_run_prints_the_script(tmp_path, cache_dir):
    args = [
        "model=tiny_random",
        "hardware=ddp",
        "hardware.submit=slurm",
        "hardware.num_nodes=2",
        "hardware.dry_run=true",
    ]
    result = hydratune(*args, f"hydra.run.dir={tmp_path / 'run'}", cache=cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "#SBATCH --nodes=2" in result.stdout and "srun --kill-on-bad-exit=1 " in result.stdout


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hardware=ddp", "hardware.launcher=torchrnu"], "Did you mean 'torchrun'?"),
        (["hardware=deepspeed_zero2", "hardware.offload=true"], "needs ZeRO-3"),
        (["hardware=deepspeed_zero3", "method.merge_adapter=true"], "cannot merge under ZeRO-3"),
        (["hardware=ddp", "hardware.launcher=deepspeed"], "no DeepSpeed config"),
        (["hardware=ddp", "hardware.submit=k8s"], "hardware.submit=k8s"),
        (["hardware=deepspeed_zero2", "hardware.deepspeed_config=/nonexistent/ds.json"], "no such file"),
    ],
)
def test_user_errors(overrides, message):
    with pytest.raises(UserError, match=message.replace("?", r"\?")):
        cfg = compose_checked("model=tiny_random", *overrides)
        check(cfg)  # the one check pass, the launcher rules and hardware.submit included
        deepspeed_config.build(cfg.hardware)


def test_user_error_is_one_paragraph_without_traceback(tmp_path, cache_dir):
    args = ["model=tiny_random", "hardware=ddp", "hardware.launcher=torchrnu", f"hydra.run.dir={tmp_path}"]
    result = hydratune(*args, cache=cache_dir)
    assert result.returncode == 2
    assert "hardware.launcher=torchrnu" in result.stderr and "Traceback" not in result.stderr


def test_slurm_script_of_a_single_process_run(tmp_path):
    cfg = compose("hardware=cpu", "hardware.submit=slurm", "hardware.threads=4", "+hardware.sbatch.mem=8G")
    script = slurm.render(cfg, tmp_path, 1, 4, "cpu")
    assert "#SBATCH --cpus-per-task=4\n" in script and "#SBATCH --mem=8G\n" in script
    assert "torchrun" not in script and "gpus-per-node" not in script
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert srun.endswith(f"-m launchers.worker --run-dir {tmp_path}")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
