"""hardware.submit=skypilot: the rendered task goes through SkyPilot's own parser, and the launch and the sync back
run with SkyPilot's API (sky.launch, sky.down) and the rsync transport replaced at the boundary: the real sky.Task
reaches the fake launch, which plays the cluster by running the task's own run commands here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launchers import skypilot
from tests.helpers import REPO, compose, hydratune

sky = pytest.importorskip("sky", reason="hardware.submit=skypilot needs the `skypilot` extra")


def printed_task(stdout: str) -> dict:
    body = stdout.split("SkyPilot task:\n", 1)[1]
    return yaml.safe_load(body[: body.index("\n[")] if "\n[" in body else body)


def test_dry_run_prints_a_task_that_skypilot_parses(tmp_path, cache_dir):
    from sky.utils import common_utils, schemas

    args = ["model=tiny_random", "hardware=ddp", "hardware.num_nodes=2", "hardware.submit=skypilot"]
    args += ["hardware.sky.accelerators=A100:8", "hardware.sky.use_spot=true", "hardware.sky.cloud=gcp"]
    args += ["hardware.sky.bucket=gs://team-bucket/ft", "hardware.dry_run=true", f"hydra.run.dir={tmp_path / 'run'}"]
    result = hydratune(*args, cache=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    config = printed_task(result.stdout)
    common_utils.validate_schema(config, schemas.get_task_schema(), "task: ")  # the whole task, bucket included
    assert config["file_mounts"]["/hydratune/bucket"] == {"source": "gs://team-bucket", "mode": "MOUNT"}
    remote = yaml.safe_load(config["run"].split("<<'HYDRATUNE_CONFIG'\n")[1].split("\nHYDRATUNE_CONFIG")[0])
    assert remote["output_dir"] == "/hydratune/bucket/ft/runs/quickstart-lora/run"  # checkpoints on the bucket
    assert remote["cache_dir"] == "/hydratune/bucket/ft/cache"
    assert remote["hardware"]["submit"] == "local"
    # Constructing the bucket's sky.Storage asks the cloud for credentials (none here): the parser gets the rest.
    del config["file_mounts"]["/hydratune/bucket"]
    task = sky.Task.from_yaml_config(config)
    assert task.num_nodes == 2
    (resources,) = task.resources
    assert resources.accelerators == {"A100": 8} and resources.use_spot and str(resources.cloud) == "GCP"
    assert "torchrun" in task.run and '--node_rank "$SKYPILOT_NODE_RANK"' in task.run
    assert task.workdir == str(REPO) and "pip install -e '.[loggers]'" in task.setup
    (data,) = [local for remote, local in task.file_mounts.items() if remote.startswith("/hydratune/data/")]
    assert Path(data).is_file()
    assert not (tmp_path / "run" / "config.yaml").exists()  # nothing written, nothing launched


@pytest.mark.slow  # trains the tiny model
def test_launch_runs_the_real_task_and_syncs_the_run_dir_back(tmp_path, cache_dir, monkeypatch):
    from omegaconf import open_dict

    real_run = subprocess.run  # the rsync fake below replaces subprocess.run for the launcher
    cluster_dir = tmp_path / "cluster"  # stands for the cluster's filesystem: /hydratune -> cluster_dir/hydratune
    calls = []

    def on_cluster(text: str) -> str:
        return text.replace("/hydratune", str(cluster_dir / "hydratune"))

    def fake_launch(task, cluster_name, retry_until_up, idle_minutes_to_autostop):
        assert isinstance(task, sky.Task)
        calls.append(("launch", cluster_name))
        for remote, local in task.file_mounts.items():  # what SkyPilot copies up
            Path(on_cluster(remote)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(local, on_cluster(remote))
        # the cluster has hydratune installed: this interpreter's environment (active or not) comes first on PATH
        env = {"HYDRATUNE_CACHE": str(cache_dir), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
        done = real_run(["bash", "-c", on_cluster(task.run)], cwd=task.workdir, env=env, capture_output=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return 1, None

    def fake_rsync(cmd, **kwargs):
        assert cmd[:3] == ["rsync", "-az", "hydratune-tracked:/hydratune/run/"]
        shutil.copytree(on_cluster(cmd[2].split(":", 1)[1]), cmd[3], dirs_exist_ok=True)
        calls.append(("rsync", cmd[3]))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sky, "launch", fake_launch)
    monkeypatch.setattr(sky, "down", lambda name: calls.append(("down", name)))
    monkeypatch.setattr(skypilot.subprocess, "run", fake_rsync)
    monkeypatch.setenv("HYDRATUNE_CACHE", str(cache_dir))

    cfg = compose(
        "model=tiny_random", "hardware.submit=skypilot", "++train.max_steps=2", "eval=none", "run_name=tracked"
    )
    run_dir = tmp_path / "run"
    with open_dict(cfg):
        cfg.output_dir = str(run_dir)
    skypilot.run(cfg, "train")

    assert calls == [("launch", "hydratune-tracked"), ("rsync", f"{run_dir}/"), ("down", "hydratune-tracked")]
    assert (run_dir / "report.md").is_file() and (run_dir / "model" / "adapter_model.safetensors").is_file()
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1] == 2
    remote = yaml.safe_load((run_dir / "config.yaml").read_text())  # the cluster's config.yaml, synced back
    assert remote["output_dir"] == on_cluster("/hydratune/run") and remote["hardware"]["submit"] == "local"
    assert (run_dir / "sky_task.yaml").is_file()
