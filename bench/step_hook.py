"""The measurement hook bench_peers.py puts into every trainer it times (hydratune, a plain TRL script,
LLaMA-Factory): all three train through transformers' Trainer, so one hook measures them the same way.

    python bench/step_hook.py OUT.jsonl -m trainer.cli ARGS...          # a module, as `python -m`
    python bench/step_hook.py OUT.jsonl path/to/script.py ARGS...       # a script

It wraps ``Trainer.training_step`` to count the real (non-padding) tokens of every batch, and writes one line per
finished optimizer step to OUT.jsonl: {"step", "time", "cpu", "tokens"} (time.time(), the process's CPU seconds, cumulative tokens; the first line
also names the frozen base weights' dtype). Then it runs the
module or script as `python` would. It imports transformers before the trainer does: a cost every trainer pays
anyway, so the start-up comparison stays fair.
"""

from __future__ import annotations

import json
import runpy
import sys
import time


def real_tokens(inputs: dict) -> int:
    """Non-padding tokens of a batch: the attention mask's ones, or every token of a padding-free batch."""
    mask = inputs.get("attention_mask")
    if mask is not None:
        return int(mask.sum())
    return int(inputs["input_ids"].numel())


def install(out_path: str) -> None:
    from transformers import Trainer, TrainerCallback

    out = open(out_path, "a", buffering=1)  # noqa: SIM115  # open for the life of the process
    seen = {"tokens": 0}

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            row = {"step": state.global_step, "time": time.time(), "cpu": time.process_time(), "tokens": seen["tokens"]}
            if state.global_step == 1 and model is not None:  # what the frozen base weights are held in
                row["base_dtype"] = str(next(p.dtype for p in model.parameters() if not p.requires_grad))
            out.write(json.dumps(row) + "\n")

    training_step, init = Trainer.training_step, Trainer.__init__

    def counted_step(self, model, inputs, *args, **kwargs):
        seen["tokens"] += real_tokens(inputs)
        return training_step(self, model, inputs, *args, **kwargs)

    def hooked_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(StepClock())

    Trainer.training_step, Trainer.__init__ = counted_step, hooked_init


def main() -> None:
    out_path, rest = sys.argv[1], sys.argv[2:]
    install(out_path)
    if rest[0] == "-m":
        sys.path.insert(0, "")  # as `python -m`: the working directory first
        sys.argv = [rest[1], *rest[2:]]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = rest
        runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main()
