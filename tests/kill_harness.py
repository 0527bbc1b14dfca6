"""SIGKILL a `hydratune` training run at seeded instants, rerun it after each kill, and report what it left.

    python -m tests.kill_harness RUN_DIR STRAIGHT_DIR KILLS SEED WINDOW_S -- OVERRIDES...

The heavy libraries are imported once here; every run is a forked child process that runs the `hydratune`
command (trainer.cli.main) as a user would, so a kill costs a run's start-up (~1 s), not a Python start (~10 s).
Each kill waits until the child has started a checkpoint newer than the last one (so every cycle makes
progress), then sleeps a seeded random fraction of WINDOW_S and sends SIGKILL: with save_steps=1 most of a
step's time is the checkpoint write, so many kills land inside one. After the kills the run is rerun to the
end; a straight run (never killed) of the same config goes into STRAIGHT_DIR. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sys
import time
from pathlib import Path

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def newest(run_dir: Path) -> int:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return -1
    return max((int(m[1]) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name))), default=-1)


def fork_run(argv: list[str], log: Path) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        from trainer import cli

        cli.main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - report and leave with a failure code
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def main(args: list[str]) -> None:
    split = args.index("--")
    run_dir, straight, kills, seed, window = args[:split]
    overrides = args[split + 1 :]
    run_dir, kills, window = Path(run_dir), int(kills), float(window)
    rng = random.Random(int(seed))
    # Import what a run imports, once, before forking (the children then start in about a second).
    import datasets  # noqa: F401
    import deepspeed  # noqa: F401 - accelerate imports it when it unwraps the model (~7 s)
    import peft  # noqa: F401
    import torch  # noqa: F401
    from trl import SFTConfig, SFTTrainer  # noqa: F401

    from trainer import checkpoints, cli, engine  # noqa: F401

    started = time.perf_counter()
    log = run_dir.parent / f"{run_dir.name}.children.log"
    argv = [*overrides, f"hydra.run.dir={run_dir}"]
    done, torn_at_kill, instants, early = 0, 0, [], []
    for _ in range(kills):
        before = newest(run_dir)
        pid = fork_run(argv, log)
        ended = None
        while newest(run_dir) <= before:
            waited, status = os.waitpid(pid, os.WNOHANG)
            if waited:
                ended = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.002)
        if ended is not None:  # the run ended before a new checkpoint: finished (0) or failed
            early.append(ended)
            break
        delay = rng.uniform(0, window)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        done += 1
        last = newest(run_dir)
        torn = bool(checkpoints.problems_of(run_dir / "checkpoints" / f"checkpoint-{last}")) if last >= 0 else False
        torn_at_kill += torn
        instants.append({"after_checkpoint": before, "delay_s": round(delay, 4), "newest": last, "torn": torn})
    pid = fork_run(argv, log)
    _, status = os.waitpid(pid, 0)
    resumed_rc = os.waitstatus_to_exitcode(status)
    straight_rc = None
    if str(straight) != "-":
        pid = fork_run([*overrides, f"hydra.run.dir={straight}"], log)
        _, status = os.waitpid(pid, 0)
        straight_rc = os.waitstatus_to_exitcode(status)
    print(
        json.dumps(
            {
                "kills": done,
                "torn_at_kill": torn_at_kill,
                "ended_before_kill": early,
                "instants": instants,
                "resumed_rc": resumed_rc,
                "straight_rc": straight_rc,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
