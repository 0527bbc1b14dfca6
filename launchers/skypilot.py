"""``hardware.submit=skypilot``: the run as a SkyPilot task on a cloud GPU, launched through SkyPilot's Python API.

The task is rendered from the resolved config: resources from ``hardware.sky`` (accelerators, cloud, region, spot),
set-up that installs this package with its extras (from this source tree, synced as the task's workdir, or from the
package index), file mounts for every local data file, the run dir and the cache on
``/hydratune/run`` and ``/hydratune/cache`` (a bucket sub-path when ``hardware.sky.bucket`` is set), and the run
command: the resolved config written inline, then hydratune's worker on it (torchrun across the task's nodes for a distributed strategy).
hydratune waits for the task, then copies the run dir back into the local run dir (report.md, metrics.json, model/)
and, unless ``hardware.sky.down=false``, tears the cluster down.

    hydratune hardware=single_gpu hardware.submit=skypilot hardware.sky.accelerators=L4:1 hardware.dry_run=true
    hydratune hardware.submit=skypilot hardware.sky.use_spot=true hardware.sky.bucket=s3://my-bucket/hydratune
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainer.config.errors import UserError
from trainer.config.schema import DistributedHardwareSchema, hardware_schema
from trainer.run import atomic, rundir

log = logging.getLogger(__name__)

REMOTE = "/hydratune"
REMOTE_DATA, REMOTE_BUCKET = f"{REMOTE}/data", f"{REMOTE}/bucket"
DATA_KEYS = ("dataset.path", "dataset.validation_path")


def _sky():
    try:
        import sky
    except ImportError:
        raise UserError(
            "hardware.submit=skypilot needs SkyPilot: `pip install 'hydratune[skypilot]'` (then `sky check` to set up "
            "a cloud's credentials)."
        ) from None
    return sky


def run(cfg: DictConfig, command: str) -> None:
    if command != "train":
        from launchers import local

        local.run(cfg, command)
        return
    run_dir = Path(cfg.output_dir).resolve()
    remote_cfg, mounts = remote_config(cfg, run_dir)
    config = task_config(cfg, run_dir, remote_cfg, mounts)
    if cfg.hardware.dry_run:
        print("hydratune: dry run, nothing launched. SkyPilot task:\n" + to_yaml(config))
        sys.stdout.flush()
        return
    sky = _sky()
    rundir.start(cfg, run_dir, command)
    atomic.write_text(run_dir / "sky_task.yaml", to_yaml(config))
    try:
        task = sky.Task.from_yaml_config(config)
    except SystemExit:  # SkyPilot's check of the bucket's cloud exits when no cloud has credentials
        raise UserError(
            f"SkyPilot cannot use {cfg.hardware.sky.bucket}: no cloud with credentials is enabled here. Run "
            "`sky check` and set up the bucket's cloud, or leave hardware.sky.bucket unset."
        ) from None
    cluster = cluster_name(cfg)
    launch(sky, task, cluster, cfg.hardware.sky)
    try:
        sync_back(cluster, remote_cfg.output_dir, run_dir)
    finally:
        if cfg.hardware.sky.down:
            log.info("tearing down SkyPilot cluster %s", cluster)
            sky.down(cluster)
    if not (run_dir / "metrics.json").is_file():
        raise UserError(
            f"the SkyPilot task on cluster {cluster} ended without results ({run_dir / 'metrics.json'} was not synced "
            f"back). Its logs: `sky logs {cluster}`; run the same command again to resume from the last checkpoint "
            "(kept when the run dir is on hardware.sky.bucket)."
        )


def to_yaml(config: dict) -> str:
    """The task as SkyPilot YAML, multi-line commands as literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value: str):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump(config, Dumper=Dumper, sort_keys=False)


def remote_dirs(cfg: DictConfig, run_dir: Path) -> tuple[str, str]:
    """The run dir and the cache on the cluster: on the bucket (mounted whole at /hydratune/bucket, as SkyPilot
    mounts buckets) when there is one, else on the cluster's disk."""
    if not cfg.hardware.sky.bucket:
        return f"{REMOTE}/run", f"{REMOTE}/cache"
    _, prefix = bucket_parts(cfg.hardware.sky.bucket)
    base = f"{REMOTE_BUCKET}/{prefix}".rstrip("/")
    return f"{base}/runs/{cfg.run_name}/{run_dir.name}", f"{base}/cache"


def bucket_parts(bucket: str) -> tuple[str, str]:
    """``s3://name/some/prefix`` -> (``s3://name``, ``some/prefix``)."""
    scheme, sep, rest = bucket.partition("://")
    if not sep or not rest.split("/")[0]:
        raise UserError(
            f"hardware.sky.bucket={bucket} is not a bucket URL. Use s3://bucket[/prefix], gs://..., r2://... (the "
            "bucket must exist or SkyPilot must be able to create it)."
        )
    name, _, prefix = rest.partition("/")
    return f"{scheme}://{name}", prefix.strip("/")


def cluster_name(cfg: DictConfig) -> str:
    name = cfg.hardware.sky.cluster or f"hydratune-{cfg.run_name}"
    return "".join(c if c.isalnum() or c == "-" else "-" for c in name.lower())[:40].strip("-")


def remote_config(cfg: DictConfig, run_dir: Path) -> tuple[DictConfig, dict[str, str]]:
    """The resolved config as the remote machine reads it (secrets redacted, run dir and cache on the task's mounts,
    local data files mounted under /hydratune/data), and those data mounts (remote path -> local path)."""
    resolved = OmegaConf.create(rundir.redacted(OmegaConf.to_container(cfg, resolve=True)))
    mounts: dict[str, str] = {}
    sources = [(key, OmegaConf.select(resolved, key)) for key in DATA_KEYS]
    sources += [(f"dataset.mix[{i}].path", src.path) for i, src in enumerate(resolved.dataset.mix)]
    for key, value in sources:
        if value and Path(value).expanduser().exists():
            local = Path(value).expanduser().resolve()
            remote = f"{REMOTE_DATA}/{len(mounts)}-{local.name}"
            mounts[remote] = str(local)
            OmegaConf.update(resolved, key, remote)
    resolved.output_dir, resolved.cache_dir = remote_dirs(cfg, run_dir)
    resolved.hardware.submit = "local"
    resolved.hardware.dry_run = False
    return resolved, mounts


def source_tree() -> Path | None:
    """This package's source checkout (pyproject.toml beside the package), synced as the task's workdir."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "trainer").is_dir() else None


def setup_commands(extras: list[str], source: Path | None) -> str:
    spec = f"[{','.join(extras)}]" if extras else ""
    if source is not None:
        install = "pip install -e " + shlex.quote("." + spec)
    else:
        install = "pip install " + shlex.quote(f"hydratune{spec}=={metadata.version('hydratune')}")
    return "\n".join(["set -e", "python -m pip install --upgrade pip", install])


def run_commands(cfg: DictConfig, remote_cfg: DictConfig) -> str:
    """Write the resolved config (inline, so the task is complete as printed), then start the worker(s) on it."""
    run, cache = remote_cfg.output_dir, remote_cfg.cache_dir
    worker = f"-m launchers.worker --run-dir {run}"
    lines = [
        "set -e",
        f"mkdir -p {run} {cache}",
        f"cat > {run}/config.yaml <<'HYDRATUNE_CONFIG'",
        OmegaConf.to_yaml(remote_cfg).rstrip("\n"),
        "HYDRATUNE_CONFIG",
        "export TOKENIZERS_PARALLELISM=false",
    ]
    if not issubclass(hardware_schema(cfg), DistributedHardwareSchema):
        return "\n".join([*lines, f"python {worker}"])
    hw = cfg.hardware
    nproc = hw.num_processes or "$SKYPILOT_NUM_GPUS_PER_NODE"
    lines += [
        'MASTER_ADDR=$(echo "$SKYPILOT_NODE_IPS" | head -n 1)',
        " ".join(
            [
                "torchrun",
                '--nnodes "$SKYPILOT_NUM_NODES"',
                f'--nproc_per_node "{nproc}"',
                '--node_rank "$SKYPILOT_NODE_RANK"',
                '--master_addr "$MASTER_ADDR"',
                f"--master_port {hw.master_port}",
                worker,
            ]
        ),
    ]
    return "\n".join(lines)


def task_config(cfg: DictConfig, run_dir: Path, remote_cfg: DictConfig, data_mounts: dict[str, str]) -> dict[str, Any]:
    """The SkyPilot task as its YAML dict (sky.Task.from_yaml_config reads it)."""
    sky_cfg = cfg.hardware.sky
    resources: dict[str, Any] = {"accelerators": sky_cfg.accelerators, "use_spot": sky_cfg.use_spot}
    for key in ("cloud", "region", "disk_size"):
        if sky_cfg[key] is not None:
            resources[key] = sky_cfg[key]
    source = source_tree()
    file_mounts: dict[str, Any] = dict(data_mounts)
    if sky_cfg.bucket:
        file_mounts[REMOTE_BUCKET] = {"source": bucket_parts(sky_cfg.bucket)[0], "mode": "MOUNT"}
    config: dict[str, Any] = {
        "name": cluster_name(cfg),
        "resources": resources,
        "num_nodes": cfg.hardware.num_nodes if issubclass(hardware_schema(cfg), DistributedHardwareSchema) else 1,
        "file_mounts": file_mounts,
        "setup": setup_commands(list(sky_cfg.extras), source),
        "run": run_commands(cfg, remote_cfg),
    }
    if source is not None:
        config["workdir"] = str(source)
    if sky_cfg.envs:
        config["envs"] = {str(k): str(v) for k, v in sky_cfg.envs.items()}
    return config


def launch(sky, task, cluster: str, sky_cfg: DictConfig) -> None:
    """sky.launch, waiting for the task (SkyPilot 0.8 runs it in this call; later versions return a request id
    that sky.stream_and_get follows)."""
    log.info("launching SkyPilot task on cluster %s (%s)", cluster, task.resources)
    result = sky.launch(
        task,
        cluster_name=cluster,
        retry_until_up=sky_cfg.retry_until_up,
        idle_minutes_to_autostop=sky_cfg.idle_minutes_to_autostop,
    )
    if hasattr(sky, "stream_and_get"):
        result = sky.stream_and_get(result)
    log.info("SkyPilot task finished: %s", json.dumps(str(result)))


def sync_back(cluster: str, remote_run: str, run_dir: Path) -> None:
    """Copy the remote run dir into the local one over the SSH alias SkyPilot writes for every cluster."""
    cmd = ["rsync", "-az", f"{cluster}:{remote_run}/", f"{run_dir}/"]
    log.info("syncing the run dir back: %s", shlex.join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(
            f"could not copy the run dir back from SkyPilot cluster {cluster} ({result.stderr.strip()}). Copy it "
            f"yourself: `{shlex.join(cmd)}`, then `sky down {cluster}`."
        )
