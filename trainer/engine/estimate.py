"""Pre-flight estimate of a local run: tokens and time per step, time for the whole run, peak memory.

Time = the run's floating-point work (from the model's shape and the tokenized dataset) divided by what this machine
sustains, measured by a matmul micro-benchmark of ~0.1 s in the run's dtype and thread count (cached per machine
under ``<cache_dir>/estimate``), times an efficiency that was measured for each kind of work on a real run (training
steps, evaluation forward passes, token-by-token generation). A GPU this machine does not have is assumed to
sustain a nominal throughput instead. Memory = runtime + weights + trainable state + activations + logits tiles.

Floating-point work per token, for a model with ``N`` matmul parameters (its layers, plus the LM head):
forward ``2N`` (plus attention over the context); training ``6N`` for full fine-tuning and ``4N`` for adapters
(the frozen weights need input gradients, not weight gradients) plus ``6`` per trainable parameter. TRL's fused
LM head is computed at every position on a CPU unless hydratune scores labelled positions only (trainer.engine.lm_head).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Share of the micro-benchmark's matmul throughput that each kind of work reaches, measured in CPU time on SmolLM2-135M,
#: quickstart, LoRA (1 thread, AMD EPYC with avx512_bf16; README "Hardware-aware defaults"). bf16 matmuls gain more
#: over float32 than the elementwise work around them, so bf16 reaches a smaller share of its (higher) peak.
EFFICIENCY = {
    "bfloat16": {"train": 0.27, "forward": 0.3, "decode": 0.09},
    "float32": {"train": 0.55, "forward": 0.6, "decode": 0.18},
}
EFFICIENCY["float16"] = EFFICIENCY["bfloat16"]
#: Seconds per layer per generated token that do not scale with FLOPs (kernel launches, Python, KV-cache updates).
DECODE_LAYER_OVERHEAD_S = {"cpu": 4e-4, "cuda": 6e-5}
#: Process start, imports and tokenizer: seconds before the weights start to load; weights load at this rate.
STARTUP_S = {"cpu": 9.0, "cuda": 15.0}
LOAD_BYTES_PER_S = 400e6
#: Resident memory of the Python process with torch, transformers, TRL and peft imported, before any weights.
RUNTIME_BYTES = 0.9e9
#: A GPU the machine does not have: dense bf16 FLOP/s assumed (an A100's 312 TFLOP/s).
NOMINAL_GPU_FLOPS = 312e12
#: TRL's fused LM head tiles: tokens x vocabulary columns, plus the float32 temporaries folded from each tile.
LM_HEAD_TILE = (4096, 32768)
LM_HEAD_TEMPORARIES = 4
#: CPU_SAVED_ACTIVATIONS_FP32: on a CPU a bf16 model's saved activations are counted at float32's 4 bytes. Measured
#: on the default job (2 threads, quiet machine): the bf16 run peaked at 4.78 GB and the float32 run at 4.92 GB, a
#: gap smaller than the weights' alone (0.27 GB); counted at 2 bytes the estimate was 25% under (RMSNorm, softmax
#: and the float32 adapters hold float32 copies, and freed buffers are reused less well at mixed sizes).
WARN_OVER_S = 3600
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    #: Parameters in the layers (everything but the input embedding and an untied LM head).
    body: int
    #: Parameters held in memory (embedding and LM head counted once when tied).
    total: int
    trainable: int
    full: bool


@dataclass
class Workload:
    steps: int
    sequences_per_step: int
    #: Mean tokens per sequence and per batch row after padding to the longest in the batch.
    tokens_per_sequence: float
    padded_tokens_per_sequence: float
    #: Positions whose LM-head output is computed per sequence during training (labelled ones, or every one).
    scored_tokens_per_sequence: float
    eval_loss_runs: int
    eval_sequences: int
    generation_runs: int
    queries: int
    generation_batch: int
    prompt_tokens: float
    new_tokens: int


@dataclass
class Estimate:
    device: str
    dtype: str
    threads: int
    flops_per_s: float
    throughput_source: str
    tokens_per_step: float
    train_flops_per_token: float
    step_s: float
    train_s: float
    evaluation_s: float
    startup_s: float
    total_s: float
    peak_memory_bytes: float

    def line(self) -> str:
        return (
            f"estimate: {self.tokens_per_step:.0f} tokens/step, {self.step_s:.3g} s/step, training {_dur(self.train_s)}, "
            f"evaluation {_dur(self.evaluation_s)}, whole run {_dur(self.total_s)}, peak memory "
            f"{self.peak_memory_bytes / 1e9:.1f} GB ({self.device}, {self.dtype}, {self.threads} threads, "
            f"{self.flops_per_s / 1e9:.0f} GFLOP/s matmul: {self.throughput_source})"
        )


def compute(shape: ModelShape, work: Workload, device: str, dtype: str, threads: int, flops: float, source: str):
    """The estimate from the model's shape, the work and the device's matmul throughput (FLOP/s)."""
    eff = EFFICIENCY[dtype]
    per_weight = 2 + (2 if shape.full else 2)  # forward 2, input gradients 2 ...
    per_weight += 2 if shape.full else 0  # ... and weight gradients 2 when every weight trains: 6N
    ctx = work.padded_tokens_per_sequence
    attention = 4 * shape.layers * ctx * shape.hidden  # QK^T and AV, forward, per token
    head = 2 * shape.hidden * shape.vocab  # forward, per scored position
    train_token = per_weight * shape.body + 3 * attention + (6 * shape.trainable if not shape.full else 0)
    train_step = work.sequences_per_step * (
        work.padded_tokens_per_sequence * train_token + work.scored_tokens_per_sequence * 3 * head
    )
    step_s = train_step / (flops * eff["train"])

    forward_token = 2 * shape.body + attention + head
    eval_s = work.eval_loss_runs * work.eval_sequences * ctx * forward_token / (flops * eff["forward"])
    batches = math.ceil(work.queries / max(1, work.generation_batch)) if work.queries else 0
    prefill = work.queries * work.prompt_tokens * forward_token / (flops * eff["forward"])
    decode_step = 2 * (shape.body + shape.hidden * shape.vocab) * work.generation_batch
    decode = (
        batches
        * work.new_tokens
        * (decode_step / (flops * eff["decode"]) + shape.layers * DECODE_LAYER_OVERHEAD_S[device])
    )
    evaluation_s = eval_s + work.generation_runs * (prefill + decode)

    weight_bytes = shape.total * _BYTES[dtype]
    startup_s = STARTUP_S[device] + weight_bytes / LOAD_BYTES_PER_S
    train_s = work.steps * step_s
    tokens = work.sequences_per_step * work.padded_tokens_per_sequence
    saved = 4 if device == "cpu" else _BYTES[dtype]  # CPU_SAVED_ACTIVATIONS_FP32
    act_bytes = saved * shape.layers * (12 * shape.hidden + 6 * shape.intermediate)  # per token, saved
    if not shape.full:  # adapters run in float32: each adapted linear keeps its input cast up and its dropout output
        act_bytes += 8 * shape.layers * (6 * shape.hidden + shape.intermediate)
    tile = min(work.sequences_per_step * work.scored_tokens_per_sequence, LM_HEAD_TILE[0]) * LM_HEAD_TILE[1]
    # adapters: weight+grad fp32, Adam m and v; full weights (all of them, or method=freeze's share): grad, m and v
    trainable_bytes = 16 * shape.trainable if not shape.full else 12 * shape.trainable
    memory = (
        (RUNTIME_BYTES if device == "cpu" else 0)
        + weight_bytes
        + trainable_bytes
        + tokens * act_bytes
        + tile * (_BYTES[dtype] + 4 * LM_HEAD_TEMPORARIES)
    )
    return Estimate(
        device=device,
        dtype=dtype,
        threads=threads,
        flops_per_s=flops,
        throughput_source=source,
        tokens_per_step=work.sequences_per_step * work.tokens_per_sequence,
        train_flops_per_token=train_token,
        step_s=step_s,
        train_s=train_s,
        evaluation_s=evaluation_s,
        startup_s=startup_s,
        total_s=startup_s + train_s + evaluation_s,
        peak_memory_bytes=memory,
    )


def _dur(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------- the machine's throughput


def matmul_flops(device: str, dtype: str, threads: int, cache_dir: str | Path, size: int = 1024) -> tuple[float, str]:
    """Sustained FLOP/s of a ``size``-square matmul in ``dtype`` with ``threads`` threads, best of a few tries of
    ~0.1 s in all; measured once per machine, dtype and thread count and cached. A GPU that torch cannot see gets
    the nominal throughput."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return NOMINAL_GPU_FLOPS, f"nominal GPU, {NOMINAL_GPU_FLOPS / 1e12:.0f} TFLOP/s (no GPU here to measure)"
    name = torch.cuda.get_device_name() if device == "cuda" else torch.cpu.get_capabilities().get("cpu_name", "cpu")
    level = "cuda" if device == "cuda" else torch.backends.cpu.get_cpu_capability()
    key = f"{device}|{name}|{level}|{dtype}|{threads}|{size}|torch {torch.__version__}"
    file = Path(cache_dir) / "estimate" / "matmul.json"
    known = json.loads(file.read_text()) if file.exists() else {}
    numbers = torch.Generator(device).manual_seed(0)  # a generator of its own: training's random streams untouched
    a = torch.randn(size, size, dtype=getattr(torch, dtype), device=device, generator=numbers)
    b = torch.randn(size, size, dtype=getattr(torch, dtype), device=device, generator=numbers)
    best, spent = math.inf, 0.0
    while spent < 0.1 or best == math.inf:
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
        if spent > 2.0:  # a very slow dtype (emulated bf16): one more try is enough
            break
    # The machine's capability is the best it has shown: a benchmark that ran while other processes held the cores
    # measured the load, not the machine.
    flops = max(2 * size**3 / best, known.get(key, 0.0))
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(f".{os.getpid()}.partial")
    tmp.write_text(json.dumps({**known, key: flops}, indent=1))
    tmp.replace(file)
    return flops, f"{size}x{size} {dtype} matmul, best of this run and earlier ones on this machine"


def save(estimate: Estimate, run_dir: Path) -> None:
    (Path(run_dir) / "estimate.json").write_text(json.dumps(asdict(estimate), indent=1) + "\n")


# ---------------------------------------------------------------- from a run's objects


def model_shape(model, full: bool) -> ModelShape:
    """The shape of a (possibly PEFT-wrapped, possibly meta-device) causal LM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config()
    embed = base.get_input_embeddings().weight
    head = base.get_output_embeddings()
    tied = head is not None and head.weight is embed
    adapter = [p for n, p in model.named_parameters() if "lora_" in n or "modules_to_save" in n]
    total = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in adapter)
    body = total - embed.numel() - (0 if tied or head is None else head.weight.numel())
    return ModelShape(
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        intermediate=getattr(config, "intermediate_size", 4 * config.hidden_size),
        vocab=embed.shape[0],
        body=body,
        total=total,
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        full=full,
    )


def expected_longest(lengths: list[int], batch: int) -> float:
    """Mean length of the longest of ``batch`` sequences drawn at random (what a batch is padded to)."""
    if not lengths:
        return 0.0
    ordered, n = sorted(lengths), len(lengths)
    return sum(ordered[k] * (((k + 1) / n) ** batch - (k / n) ** batch) for k in range(n))


def workload(args, eval_cfg, train_lengths, labelled, eval_lengths, prompt_lengths, world: int, base_runs: bool):
    """The work of a run: training steps and batches (from the tokenized lengths and TRL's arguments ``args``, an
    SFTConfig) and evaluation (``eval_cfg``; ``base_runs``: the base model is evaluated too, not read from cache)."""
    batch = args.per_device_train_batch_size
    per_step = batch * args.gradient_accumulation_steps * world
    batches = math.ceil(len(train_lengths) / max(1, batch * world))
    steps_per_epoch = max(1, batches // args.gradient_accumulation_steps)
    steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    padded = expected_longest(train_lengths, batch)
    mean = sum(train_lengths) / max(1, len(train_lengths))
    evaluating = bool(eval_cfg.enabled)
    runs = (1 + int(base_runs)) if evaluating else 0
    queries = len(prompt_lengths) if evaluating else 0
    gen_batch = int(eval_cfg.batch_size)
    return Workload(
        steps=steps,
        sequences_per_step=per_step,
        tokens_per_sequence=mean,
        padded_tokens_per_sequence=padded,
        scored_tokens_per_sequence=sum(labelled) / max(1, len(labelled)),  # trainer.engine.lm_head: labelled positions
        eval_loss_runs=runs if eval_lengths else 0,
        eval_sequences=len(eval_lengths),
        generation_runs=runs,
        queries=queries,
        generation_batch=gen_batch,
        prompt_tokens=expected_longest(prompt_lengths, gen_batch),
        new_tokens=int(eval_cfg.generation.max_new_tokens),
    )


def preflight(shape: ModelShape, work: Workload, device: str, dtype: str, threads: int, cache_dir, run_dir=None):
    """Measure (or recall) the throughput, compute the estimate, log its line, warn past an hour, save it."""
    flops, source = matmul_flops(device, dtype, threads, cache_dir)
    estimate = compute(shape, work, device, dtype, threads, flops, source)
    log.info(estimate.line())
    if estimate.total_s > WARN_OVER_S:
        log.warning(
            "this run is estimated to take %s: fewer steps (train.max_steps), a smaller eval (eval.max_examples) or "
            "a GPU (hardware=single_gpu) would shorten it",
            _dur(estimate.total_s),
        )
    if run_dir is not None:
        save(estimate, run_dir)
    return estimate


def measured(estimate: Estimate, history: list[dict]) -> dict:
    """The estimate beside what the run measured: wall and CPU time since the process started, the training
    loop's time per step, peak resident memory (of this process; the OS reports it)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = peak_rss_bytes()
    train: dict = next((h for h in reversed(history) if "train_runtime" in h), {})
    steps = train.get("step") or 0
    return {
        "estimated": {
            "step_s": round(estimate.step_s, 3),
            "train_s": round(estimate.train_s, 1),
            "total_s": round(estimate.total_s, 1),
            "peak_memory_gb": round(estimate.peak_memory_bytes / 1e9, 2),
            "tokens_per_step": round(estimate.tokens_per_step, 1),
        },
        "measured": {
            "step_s": round(train["train_runtime"] / steps, 3) if steps and "train_runtime" in train else None,
            "train_s": round(train.get("train_runtime", 0.0), 1) or None,
            "total_s": process_age(),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "cpu_per_thread_s": round((usage.ru_utime + usage.ru_stime) / estimate.threads, 1),
            "peak_memory_gb": round(peak / 1e9, 2),
        },
        "source": estimate.throughput_source,
    }


def peak_rss_bytes() -> int:
    """Peak resident memory of this process's own address space: Linux's VmHWM. ru_maxrss is not that: a child
    started by vfork/exec inherits its parent's peak (a 2 GB pytest or sweep process makes every run it starts
    look 2 GB big), so it is only the fallback where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), None elsewhere."""
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except OSError:
        return None
    return round(uptime - int(stat[19]) / os.sysconf("SC_CLK_TCK"), 1)


def for_run(cfg, device: str, dtype: str, model, args, tokenizer, prepared, model_path: str, run_dir=None) -> Estimate:
    """The pre-flight estimate of a local run: ``model`` as it will train (PEFT-wrapped; real or on the meta
    device), ``args`` TRL's SFTConfig, ``prepared`` the tokenized dataset."""
    import torch

    from trainer.evaluation.local import base_cache_file, queries, render

    asked = queries(prepared.examples.validation, cfg.eval.max_examples)
    base_file = base_cache_file(cfg, model_path, asked, prepared.cache_key, "base")
    sample = prepared.train.select(range(min(len(prepared.train), 5000)))
    work = workload(
        args,
        cfg.eval,
        [len(ids) for ids in sample["input_ids"]],
        [sum(1 for x in labels if x != -100) for labels in sample["labels"]],
        [len(ids) for ids in prepared.validation["input_ids"]] if len(prepared.validation) else [],
        [len(tokenizer(render(tokenizer, q), add_special_tokens=False).input_ids) for q in asked],
        world=max(1, int(args.world_size)),
        base_runs=bool(cfg.eval.compare_base) and not (cfg.eval.cache_base and base_file.exists()),
    )
    shape = model_shape(model, full=cfg.method.peft is None)
    return preflight(shape, work, device, dtype, torch.get_num_threads(), cfg.cache_dir, run_dir)


def meta_model(cfg, path: str, added_tokens: int):
    """The configured model, PEFT-wrapped as it would train, on the meta device: its shape without its weights."""
    from peft import get_peft_model

    from trainer.models import empty_model, freeze, model_config, peft_config

    model = empty_model(cfg.model, model_config(cfg.model, path))
    if cfg.method.name == "freeze":
        freeze(model, cfg.method, path)
    adapter = peft_config(cfg.method, added_tokens)
    return get_peft_model(model, adapter) if adapter is not None else model
