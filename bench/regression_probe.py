"""The general-ability regression probe (eval.regression) on a run that finished without it: the run's base model and
its fine-tuned adapter are asked the probe with the engine's own code (trainer.evaluation.regression), each timed, so the README
can say what the probe finds on SmolLM2 and what turning it on adds to the default job.

    python bench/regression_probe.py RUN_DIR [--probe general] [--write]

Prints one JSON line: the seconds of each half, both accuracies and the paired comparison. --write also puts the
``regression`` section into RUN_DIR/metrics.json and rebuilds report.md and report.html, as if the run had been
started with eval.regression=PROBE (run it on a copy of a run you want to keep unchanged).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--probe", default="general")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    import torch
    from omegaconf import OmegaConf
    from peft import PeftModel

    from trainer import models
    from trainer.evaluation import regression
    from trainer.report import command as report_command

    started = time.perf_counter()
    cfg = OmegaConf.load(args.run_dir / "config.yaml")
    cfg.eval.regression = args.probe
    dtype = models.resolve_dtype(cfg.model.dtype, "cpu", full_weights=cfg.method.peft is None)[0]
    path = models.resolve_path(cfg.model, cfg.cache_dir)
    tokenizer, _ = models.load_tokenizer(cfg.model, path)
    base = models.load_model(cfg.model, cfg.method, path, tokenizer, "cpu", dtype, cfg.objective.head)
    tuned = PeftModel.from_pretrained(base, args.run_dir / "model").eval()
    load_s = time.perf_counter() - started
    with torch.inference_mode():
        with tuned.disable_adapter():  # the base model: the adapter's layers pass their input through
            asked_base = regression.evaluate(SimpleNamespace(model=tuned), tokenizer, cfg, "base")
        asked_tuned = regression.evaluate(SimpleNamespace(model=tuned), tokenizer, cfg, "finetuned")
    section = regression.section(args.probe, asked_base, asked_tuned)
    print(
        json.dumps(
            {
                "run": str(args.run_dir),
                "model_dtype": dtype,
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "threads": torch.get_num_threads(),
                "load_s": round(load_s, 1),
                "base_s": round(asked_base["seconds"], 1),
                "finetuned_s": round(asked_tuned["seconds"], 1),
                "base_accuracy": section["base_accuracy"],
                "finetuned_accuracy": section["finetuned_accuracy"],
                "comparison": section["comparison"],
                "lines": section["lines"],
            }
        )
    )
    if args.write:
        metrics_file = args.run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text())
        metrics["regression"] = section
        metrics_file.write_text(json.dumps(metrics, indent=2) + "\n")
        print(report_command.rebuild(args.run_dir))


if __name__ == "__main__":
    main()
