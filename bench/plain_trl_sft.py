"""The baseline of bench_throughput.py: a plain, hand-written TRL SFTTrainer script (what a user writes
without hydratune), fine-tuning the same model on the same data with the same settings.

    python bench/plain_trl_sft.py MODEL_DIR DATA.jsonl OUT_DIR --steps 30 --batch 8
    python bench/plain_trl_sft.py MODEL_DIR PROMPT_COMPLETION.jsonl OUT_DIR --steps 30 --batch 4 --max-length 256 \
        --lora-r 8 --lora-alpha 16 --lora-dropout 0 --targets q_proj,v_proj --scheduler constant   # bench_peers.py
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer


class StepTimes(TrainerCallback):
    def __init__(self, path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": state.global_step, "time": time.time(), **(logs or {})}) + "\n")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--targets", default="all-linear", help="all-linear, or module names separated by commas")
    p.add_argument("--scheduler", default="linear")
    p.add_argument("--logging-steps", type=int, default=1)
    a = p.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=getattr(torch, a.dtype))
    dataset = load_dataset("json", data_files=a.data, split="train")
    args = SFTConfig(
        output_dir=a.out,
        max_steps=a.steps,
        per_device_train_batch_size=a.batch,
        learning_rate=2e-4,
        lr_scheduler_type=a.scheduler,
        logging_steps=a.logging_steps,
        save_strategy="no",
        report_to=[],
        bf16=False,
        activation_checkpointing=False,
        use_cpu=True,
        seed=42,
        max_length=a.max_length,
    )
    targets = a.targets if a.targets == "all-linear" else a.targets.split(",")
    lora = LoraConfig(
        r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[StepTimes(f"{a.out}/steps.jsonl")],
    )
    trainer.train()


if __name__ == "__main__":
    main()
