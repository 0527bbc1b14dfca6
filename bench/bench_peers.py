"""hydratune against LLaMA-Factory and a plain TRL script, on one job, in one invocation.

    python bench/bench_peers.py [--rounds 2] [--lf-venv DIR] [--out results.json]

The job (issue 10): SmolLM2-135M-Instruct in float32, LoRA r=8 alpha=16 dropout 0 on q_proj and v_proj, batch 4,
max length 256, 30 steps, the first 200 quickstart chats (loss on the answers only), constant learning rate 2e-4,
seed 42, no evaluation, no checkpoints, a log line every 10 steps. Each trainer runs as a fresh process wrapped in
the same measurement hook (bench/step_hook.py: real tokens per batch, time of each optimizer step), alternately,
`--rounds` times after one untimed warm-up each (model files in the page cache; hydratune's tokenized-data cache
filled, as from a user's second run on). Per trainer, the best round:

- real tokens/s: non-padding tokens trained between the end of step 1 and the end of the last step / that time;
- first step: seconds from spawning the process to the end of the first optimizer step (imports, model, data);
- peak RSS: the process's maximum resident set (wait4's ru_maxrss).

LLaMA-Factory 0.9.5 runs in its own virtual environment (`--lf-venv`, default <HYDRATUNE_CACHE>/bench/lf-venv),
created here when missing: this interpreter's torch build, then `llamafactory==0.9.5` from the package registry
(it brings transformers 5.6, TRL 0.24, peft 0.18). Two repairs follow, since PyPI's torchvision/torchaudio wheels
are built against CUDA torch and their compiled ops do not load with a CPU torch: torchvision is removed (only
image data needs it) and torchaudio's compiled libraries are set aside (LLaMA-Factory imports torchaudio at start-up
but only audio data calls it; torchaudio then imports as pure Python).

Goal (issue 10): hydratune >= 1.05x LLaMA-Factory's tokens/s, first step no later than LLaMA-Factory's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOOK = REPO / "bench" / "step_hook.py"
LLAMAFACTORY = "llamafactory==0.9.5"
JOB = {"steps": 30, "batch": 4, "max_length": 256, "rows": 200, "r": 8, "alpha": 16, "lr": 2e-4, "log_every": 10}
TARGETS = ["q_proj", "v_proj"]


# ---------------------------------------------------------------- the job's data, in each trainer's format


def write_data(folder: Path, source: Path, rows: int) -> dict[str, Path]:
    """The first `rows` chats as hydratune reads them (messages), as a plain TRL script would (conversational
    prompt/completion: loss on the answer only) and as a LLaMA-Factory dataset folder (dataset_info.json)."""
    chats = [json.loads(line) for line in source.read_text().splitlines()[:rows]]
    files = {"chats": folder / "chats.jsonl", "prompt_completion": folder / "prompt_completion.jsonl"}
    files["chats"].write_text("".join(json.dumps(c) + "\n" for c in chats))
    pc = [{"prompt": c["messages"][:-1], "completion": c["messages"][-1:]} for c in chats]
    files["prompt_completion"].write_text("".join(json.dumps(r) + "\n" for r in pc))
    lf = folder / "llamafactory"
    lf.mkdir()
    (lf / "chats.jsonl").write_text(files["chats"].read_text())
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    info = {
        "chats": {
            "file_name": "chats.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": {**tags, "system_tag": "system"},
        }
    }
    (lf / "dataset_info.json").write_text(json.dumps(info, indent=1))
    files["llamafactory"] = lf
    return files


# ---------------------------------------------------------------- LLaMA-Factory's own environment


def lf_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def lf_imports(venv: Path) -> bool:
    check = "import llamafactory.train.tuner"
    return (
        lf_python(venv).exists() and subprocess.run([lf_python(venv), "-c", check], capture_output=True).returncode == 0
    )


def ensure_lf_venv(venv: Path, torch_index: str | None) -> None:
    """Create LLaMA-Factory's virtual environment from the package registry unless it already imports."""
    if lf_imports(venv):
        return
    import torch

    pin = f"torch=={torch.__version__}"  # the same torch build as hydratune's environment (CPU: +cpu)
    index = ["--extra-index-url", torch_index] if torch_index else []
    py = str(lf_python(venv))
    if not lf_python(venv).exists():
        print(f"creating {venv} ({LLAMAFACTORY}, {pin})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", pin, *index], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", LLAMAFACTORY, pin, *index], check=True)
    if not lf_imports(venv):  # torchvision/torchaudio wheels built for CUDA torch (see the docstring)
        subprocess.run([py, "-m", "pip", "uninstall", "-y", "-q", "torchvision"], check=True)
        site = subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        libs = Path(site) / "torchaudio" / "lib"
        for so in libs.glob("*.so"):
            so.rename(so.with_suffix(".so.cuda-build"))
    if not lf_imports(venv):
        err = subprocess.run([py, "-c", "import llamafactory.train.tuner"], capture_output=True, text=True).stderr
        raise SystemExit(f"LLaMA-Factory does not import in {venv}:\n{err[-3000:]}")


# ---------------------------------------------------------------- one timed process per trainer


def commands(files: dict[str, Path], model_dir: str, out: Path, cache: str, threads: str) -> dict[str, list[str]]:
    job = JOB
    hydratune = [
        "-m",
        "trainer.cli",
        "model.dtype=float32",
        "dataset=chat_jsonl",
        f"dataset.path={files['chats']}",
        "dataset.validation_size=0",
        f"method.peft.r={job['r']}",
        f"method.peft.lora_alpha={job['alpha']}",
        "method.peft.lora_dropout=0",
        f"method.peft.target_modules=[{','.join(TARGETS)}]",
        f"train.per_device_train_batch_size={job['batch']}",
        f"++train.max_length={job['max_length']}",
        f"train.max_steps={job['steps']}",
        f"train.learning_rate={job['lr']}",
        "train.lr_scheduler_type=constant",
        "train.warmup_steps=0",
        "train.save_strategy=no",
        f"logger.logging_steps={job['log_every']}",
        "eval=none",
        f"hardware.threads={threads}",  # the others take OMP_NUM_THREADS
        f"cache_dir={cache}",
        f"hydra.run.dir={out / 'hydratune'}",
    ]
    plain = [
        str(REPO / "bench" / "plain_trl_sft.py"),
        model_dir,
        str(files["prompt_completion"]),
        str(out / "plain"),
        *("--steps", str(job["steps"]), "--batch", str(job["batch"]), "--max-length", str(job["max_length"])),
        *("--lora-r", str(job["r"]), "--lora-alpha", str(job["alpha"]), "--lora-dropout", "0"),
        *("--targets", ",".join(TARGETS), "--scheduler", "constant", "--logging-steps", str(job["log_every"])),
        "--dtype",
        "float32",
    ]
    lf_config = {
        "model_name_or_path": model_dir,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": job["r"],
        "lora_alpha": job["alpha"],
        "lora_dropout": 0.0,
        "lora_target": ",".join(TARGETS),
        "dataset": "chats",
        "dataset_dir": str(files["llamafactory"]),
        "template": "smollm2",
        "cutoff_len": job["max_length"],
        "output_dir": str(out / "llamafactory"),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": job["batch"],
        "gradient_accumulation_steps": 1,
        "learning_rate": job["lr"],
        "lr_scheduler_type": "constant",
        "max_steps": job["steps"],
        "logging_steps": job["log_every"],
        "save_strategy": "no",
        "report_to": "none",
        "bf16": False,
        "seed": 42,
        "disable_gradient_checkpointing": True,  # LLaMA-Factory's default recomputes activations: not the same job
    }
    lf_yaml = out / "llamafactory.yaml"  # JSON is YAML (0.9.5's own .json reader passes a path to json.load)
    lf_yaml.write_text(json.dumps(lf_config, indent=1))
    return {
        "hydratune": [sys.executable, str(HOOK), "{hook}", *hydratune],
        "plain TRL": [sys.executable, str(HOOK), "{hook}", *plain],
        "LLaMA-Factory": ["{lf_python}", str(HOOK), "{hook}", "-m", "llamafactory.cli", "train", str(lf_yaml)],
    }


def timed(name: str, cmd: list[str], hook: Path, env: dict, log: Path) -> dict:
    cmd = [c.replace("{hook}", str(hook)) for c in cmd]
    start = time.time()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        tail = log.read_text()[-4000:]
        raise SystemExit(f"{name} failed (exit {os.waitstatus_to_exitcode(status)}); the end of its log:\n{tail}")
    steps = [json.loads(line) for line in hook.read_text().splitlines()]
    first, last = steps[0], steps[-1]
    return {
        "tokens_per_s": (last["tokens"] - first["tokens"]) / (last["time"] - first["time"]),
        "first_step_s": first["time"] - start,
        "tokens_per_cpu_s": (last["tokens"] - first["tokens"]) / (last["cpu"] - first["cpu"]),
        "first_step_cpu_s": first["cpu"],
        "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,
        "wall_s": time.time() - start,
        "steps": last["step"],
        "tokens": last["tokens"],
        "base_dtype": first.get("base_dtype"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=JOB["steps"], help="fewer for a smoke run (the job has 30)")
    cache_default = os.environ.get("HYDRATUNE_CACHE", str(Path.home() / ".cache" / "hydratune"))
    p.add_argument("--cache", default=cache_default, help="hydratune's cache (model folder, tokenized data)")
    p.add_argument("--lf-venv", type=Path, default=None, help="LLaMA-Factory's venv (default <cache>/bench/lf-venv)")
    p.add_argument("--torch-index", default=None, help="an extra index for the torch build (CPU wheels)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per trainer (default: the usable cores)")
    p.add_argument("--no-warm-up", action="store_true", help="skip the untimed warm-up round (caches already warm)")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args()
    JOB["steps"] = args.steps
    venv = args.lf_venv or Path(args.cache) / "bench" / "lf-venv"
    venv.parent.mkdir(parents=True, exist_ok=True)
    ensure_lf_venv(venv, args.torch_index)

    import torch

    from trainer.config import schema
    from trainer.models import resolve_path

    cfg = schema.compose([f"cache_dir={args.cache}"])
    model_dir = resolve_path(cfg.model, args.cache)  # converts the GGUF once
    threads = str(args.threads or len(os.sched_getaffinity(0)))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env |= {"HYDRATUNE_CACHE": args.cache, "DISABLE_VERSION_CHECK": "1"}

    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = write_data(Path(tmp), Path(cfg.dataset.path), JOB["rows"])
        for i in range(0 if args.no_warm_up else -1, args.rounds):  # round -1: the untimed warm-up
            out = Path(tmp) / f"round{i}"
            out.mkdir()
            cmds = commands(files, model_dir, out, args.cache, threads)
            cmds["LLaMA-Factory"][0] = str(lf_python(venv))
            order = list(cmds) if i % 2 == 0 else list(reversed(cmds))  # alternate who goes first
            for name in order:
                got = timed(name, cmds[name], out / f"{name}.steps.jsonl", env, out / f"{name}.log")
                if i >= 0:
                    results.setdefault(name, []).append(got)
                print(f"round {i + 1 if i >= 0 else 'warm-up'} {name}: {json.dumps(got)}", flush=True)

    best = {
        name: {
            "tokens_per_s": max(r["tokens_per_s"] for r in rs),
            "first_step_s": min(r["first_step_s"] for r in rs),
            "tokens_per_cpu_s": max(r["tokens_per_cpu_s"] for r in rs),
            "first_step_cpu_s": min(r["first_step_cpu_s"] for r in rs),
            "peak_rss_gb": min(r["peak_rss_gb"] for r in rs),
            "base_dtype": rs[0]["base_dtype"],
        }
        for name, rs in results.items()
    }
    lf = best["LLaMA-Factory"]
    capability = torch.backends.cpu.get_cpu_capability()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    print(
        f"\njob: SmolLM2-135M float32, LoRA r=8 q/v, batch 4, max length 256, {JOB['steps']} steps, {JOB['rows']} chats;"
        f" torch CPU capability {capability}{' (ONEDNN_MAX_CPU_ISA=' + isa + ')' if isa else ''}, {threads} threads,"
        f" best of {args.rounds} rounds\n"
    )
    print("| trainer | real tokens/s | first optimizer step after process start | peak RSS | vs LLaMA-Factory |")
    print("|---|---|---|---|---|")
    for name, b in best.items():
        ratio = b["tokens_per_s"] / lf["tokens_per_s"]
        print(
            f"| {name} | {b['tokens_per_s']:.1f} | {b['first_step_s']:.1f} s | {b['peak_rss_gb']:.2f} GB |"
            f" {ratio:.3f}x tokens/s, first step {b['first_step_s'] - lf['first_step_s']:+.1f} s |"
        )
    print("\nCPU time (steadier than wall time when the machine is shared; with 1 thread, equal to it when idle):")
    for name, b in best.items():
        print(
            f"  {name:14s} {b['tokens_per_cpu_s']:7.1f} tokens per CPU second "
            f"({b['tokens_per_cpu_s'] / lf['tokens_per_cpu_s']:.3f}x), first step after {b['first_step_cpu_s']:.1f} CPU s"
        )
    hydra_ratio = best["hydratune"]["tokens_per_s"] / lf["tokens_per_s"]
    earlier = best["hydratune"]["first_step_s"] <= lf["first_step_s"]
    print(
        f"\nhydratune / LLaMA-Factory tokens/s: {hydra_ratio:.3f}x (goal >= 1.05): "
        f"{'met' if hydra_ratio >= 1.05 else 'NOT met'}; first step no later: {'met' if earlier else 'NOT met'}"
    )
    if args.out:
        summary = {"capability": capability, "onednn_max_cpu_isa": isa, "threads": threads, "job": JOB}
        args.out.write_text(json.dumps({**summary, "rounds": results, "best": best}, indent=1))


if __name__ == "__main__":
    main()
