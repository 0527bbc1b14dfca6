"""Run a config on several processes (and nodes) through a real launcher: torchrun, deepspeed or accelerate.

The parent (this module, inside the `hydratune` command) composes once: it checks the config, prepares the
dataset once into the preprocessing cache, writes the resolved config into the run dir, and then starts the
launcher, whose workers (:mod:`launchers.worker`) load that file instead of re-running Hydra. Every rank hits the
dataset cache, trains, and logs to ``<run dir>/logs/rank<N>.log``; rank 0 alone writes metrics and the report.

    hydratune hardware=deepspeed_zero3 hardware.dry_run=true     # print the command and the DeepSpeed JSON
    hydratune hardware=ddp hardware.num_processes=4
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from launchers import deepspeed_config, fsdp
from trainer.config.errors import UserError
from trainer.run import rundir
from trainer.run.threads import threads_per_process

log = logging.getLogger(__name__)

WORKER = ["-m", "launchers.worker"]


def run(cfg: DictConfig, command: str) -> None:
    hw = cfg.hardware
    if command != "train":  # prepare and eval need one process only
        from launchers import local

        local.run(cfg, command)
        return
    run_dir = Path(cfg.output_dir).resolve()
    device, nproc, node = resolve_device(hw), num_processes(hw), node_rank(hw)
    threads, _ = threads_per_process(hw.threads, nproc)
    ds, sharding = worker_settings(cfg, run_dir)
    env = worker_env(cfg, threads)
    cmd = launcher_command(hw, run_dir, nproc, node, device)
    if hw.dry_run:
        print_dry_run(cmd, env, ds, sharding)
        return
    if sharding is not None:
        fsdp.check_device(device)

    log.info(
        "hardware=%s: %d node(s) x %d %s process(es), %d threads each", hw.name, hw.num_nodes, nproc, device, threads
    )
    prepare_once(cfg, run_dir, node)
    if ds is not None:
        deepspeed_config.write(ds, run_dir)
    log.info("launching: %s", shlex.join(cmd))
    result = subprocess.run(cmd, env={**os.environ, **env})
    if result.returncode != 0:
        raise SystemExit(
            f"hydratune: error: the {hw.launcher} workers failed (exit code {result.returncode}). Each rank's log is "
            f"in {run_dir / 'logs'}/rank<N>.log; the run resumes from its last checkpoint when you run it again."
        )


def worker_settings(cfg: DictConfig, run_dir: Path) -> tuple[dict | None, dict | None]:
    """The DeepSpeed config and the FSDP settings of this strategy (None when unused), and what the workers'
    TrainingArguments need to know of them, written into ``cfg.train`` (the config they load)."""
    hw = cfg.hardware
    ds = deepspeed_config.build(hw)
    sharding = fsdp.build(hw, fsdp.layer_classes(cfg.model, cfg.cache_dir)) if hw.fsdp is not None else None
    with open_dict(cfg):
        if ds is not None:
            cfg.train.deepspeed = str(run_dir / "deepspeed.json")
        if sharding is not None:
            cfg.train.update(sharding)
        if "ddp_timeout" not in cfg.train:
            cfg.train.ddp_timeout = hw.timeout_s
    return ds, sharding


def check(cfg: DictConfig) -> None:
    """The rules that need this launcher's own code (run by trainer.config.checks.check_config, after the rules
    every distributed config must pass)."""
    if cfg.hardware.fsdp is not None:
        fsdp.check(cfg)


def resolve_device(hw: DictConfig) -> str:
    from launchers.local import pick_device

    return pick_device(hw, needs_cuda=False)


def num_processes(hw: DictConfig) -> int:
    """Processes per node: as configured, else every visible GPU, else 2 CPU processes."""
    if hw.num_processes is not None:
        return int(hw.num_processes)
    import torch

    gpus = torch.cuda.device_count() if resolve_device(hw) == "cuda" else 0
    return gpus or 2


def node_rank(hw: DictConfig) -> int:
    if hw.node_rank is not None:
        return int(hw.node_rank)
    for name in ("NODE_RANK", "SLURM_NODEID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def executable(name: str) -> str:
    """The launcher installed beside this Python (the venv's), else the first on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise UserError(
            f"hardware.launcher={name}: the `{name}` command is not installed in this environment. "
            f"Install it (torchrun comes with torch; `pip install deepspeed`; `pip install accelerate`)."
        )
    return found


def launcher_command(hw: DictConfig, run_dir: Path, nproc: int, node: int, device: str) -> list[str]:
    worker = [*WORKER, "--run-dir", str(run_dir)]
    rendezvous = {"addr": hw.master_addr, "port": str(hw.master_port), "nodes": str(hw.num_nodes)}
    if hw.launcher == "torchrun":
        return [
            executable("torchrun"),
            *("--nnodes", rendezvous["nodes"], "--nproc_per_node", str(nproc), "--node_rank", str(node)),
            *("--master_addr", rendezvous["addr"], "--master_port", rendezvous["port"]),
            *worker,
        ]
    if hw.launcher == "deepspeed":
        cmd = [executable("deepspeed"), "--num_nodes", rendezvous["nodes"], "--num_gpus", str(nproc)]
        cmd += ["--master_addr", rendezvous["addr"], "--master_port", rendezvous["port"]]
        if hw.num_nodes > 1:  # each node starts its own share; no hostfile, no SSH
            cmd += ["--no_ssh", "--node_rank", str(node)]
        return [*cmd, "--module", *worker[1:]]
    # accelerate: --multi_gpu is its multi-process mode, on the CPU too (its --cpu flag silently runs one process);
    # the worker's TrainingArguments(use_cpu=True) then picks the gloo backend.
    return [
        executable("accelerate"),
        "launch",
        *("--multi_gpu", "--num_processes", str(nproc * hw.num_nodes), "--num_machines", rendezvous["nodes"]),
        *("--machine_rank", str(node), "--main_process_ip", rendezvous["addr"]),
        *("--main_process_port", rendezvous["port"]),
        *worker,
    ]


def worker_env(cfg: DictConfig, threads: int) -> dict[str, str]:
    """Set deliberately for every worker: launchers would otherwise pick 1 thread (slow on the CPU)."""
    return {
        "OMP_NUM_THREADS": str(threads),
        "TORCH_EXTENSIONS_DIR": str(Path(cfg.hardware.torch_extensions_dir).expanduser()),
        "TOKENIZERS_PARALLELISM": "false",
    }


def print_dry_run(cmd: list[str], env: dict[str, str], ds: dict | None, sharding: dict | None = None) -> None:
    print("hydratune: dry run, nothing started. Launcher command:")
    print("  " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(cmd))
    if ds is not None:
        print('DeepSpeed config (deepspeed.json; the Trainer fills the "auto" values from train.*):')
        print(json.dumps(ds, indent=2))
    if sharding is not None:
        print("FSDP2 settings (the workers' train.fsdp and train.fsdp_config, as in config.yaml):")
        print(json.dumps(sharding, indent=2))
    sys.stdout.flush()


def prepare_once(cfg: DictConfig, run_dir: Path, node: int) -> None:
    """Resolved config into the run dir, model files and tokenized dataset into the cache, before any worker."""
    from trainer import data, models
    from trainer.engine import objectives

    if not cfg.dataset.use_cache:
        log.warning("dataset.use_cache=false: the workers still read the dataset the parent prepares from the cache")
        with open_dict(cfg):
            cfg.dataset.use_cache = True
    if node == 0:
        rundir.start(cfg, run_dir, "train")
    elif not (run_dir / "config.yaml").exists():  # another node's run dir (no shared filesystem)
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f"config.yaml.node{node}"
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(rundir.redacted(OmegaConf.to_container(cfg, resolve=True)))))
        tmp.replace(run_dir / "config.yaml")
    path = models.resolve_path(cfg.model, cfg.cache_dir)
    if "teacher" in cfg.objective:  # the distillation teacher too: ranks converting it at once collide in the cache
        models.resolve_path(cfg.objective.teacher, cfg.cache_dir)
    tokenizer, _ = models.load_tokenizer(cfg.model, path)
    if cfg.objective.data != "supervised":  # TRL tokenizes the objective's rows in each worker; checked here once
        objectives.prepare(cfg, tokenizer, None)
        return
    key = data.prepare_once(cfg, tokenizer)
    log.info("dataset prepared once (cache key %s); workers load it from %s", key, cfg.cache_dir)
