"""SIGKILL a `hydratune` training run at seeded instants, rerun it after each kill, and report what it left.

    python -m tests.kill_harness RUN_DIR STRAIGHT_DIR KILLS SEED WINDOW_S -- OVERRIDES...
    python -m tests.kill_harness phases ROOT KILLS SEED -- OVERRIDES...

The heavy libraries are imported once here; every run is a forked child process that runs the `hydratune`
command (trainer.cli.main) as a user would, so a kill costs a run's start-up (~1 s), not a Python start (~10 s).
Each kill waits until the child has completed a checkpoint newer than the last one (so every cycle makes
progress), then sleeps a seeded random fraction of WINDOW_S and sends SIGKILL: with save_steps=1 most of a
step's time is the checkpoint write, so many kills land inside one (it is then half-written under
checkpoints/.writing/, and a checkpoint-N under its final name is always complete). After the kills the run is rerun to the
end; a straight run (never killed) of the same config goes into STRAIGHT_DIR. Prints one JSON line.

``phases``: kills after the training phase (issue 31). A straight run goes into ROOT/straight; it measures how long
its evaluation and report take after the journal records the saved model (T). Then KILLS runs (ROOT/after-I) are
each killed at a seeded instant within that stretch (a seeded fraction of T after the record appears), and one more
(ROOT/last-checkpoint) the moment the last step's checkpoint appears; each is rerun to the end. Prints one JSON line.
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
    _import_once()
    from trainer.engine import checkpoints

    started = time.perf_counter()
    log = run_dir.parent / f"{run_dir.name}.children.log"
    argv = [*overrides, f"hydra.run.dir={run_dir}"]
    done, torn_at_kill, torn_final, instants, early = 0, 0, 0, [], []
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
        # A kill inside a checkpoint write leaves it half-written under .writing/ (never under its final name)
        writing = run_dir / "checkpoints" / checkpoints.STAGING
        torn = writing.is_dir() and any(writing.iterdir())
        torn_final += bool(last >= 0 and checkpoints.problems_of(run_dir / "checkpoints" / f"checkpoint-{last}"))
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
                "torn_under_final_name": torn_final,
                "ended_before_kill": early,
                "instants": instants,
                "resumed_rc": resumed_rc,
                "straight_rc": straight_rc,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )


def _wait(pid: int, ready) -> int | None:
    """Poll until ``ready()`` or the child ends; the child's exit code if it ended first."""
    while not ready():
        waited, status = os.waitpid(pid, os.WNOHANG)
        if waited:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.002)
    return None


def _saved(run_dir: Path) -> bool:
    try:
        return bool(json.loads((run_dir / "journal.json").read_text())["trained"].get("saved"))
    except (OSError, ValueError, KeyError):
        return False


def _kill_and_rerun(argv: list[str], run_dir: Path, log: Path, ready, delay: float) -> dict:
    pid = fork_run(argv, log)
    ended = _wait(pid, ready)
    if ended is None:
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        ended = os.waitstatus_to_exitcode(status)
    case = {"delay_s": round(delay, 4), "killed_rc": ended, "results_at_kill": (run_dir / "metrics.json").exists()}
    _, status = os.waitpid(fork_run(argv, log), 0)
    return {**case, "rerun_rc": os.waitstatus_to_exitcode(status)}


def phases(args: list[str]) -> None:
    split = args.index("--")
    root, kills, seed = Path(args[0]), int(args[1]), int(args[2])
    overrides = args[split + 1 :]
    rng = random.Random(seed)
    _import_once()
    log = root / "children.log"
    started = time.perf_counter()
    straight = root / "straight"
    pid = fork_run([*overrides, f"hydra.run.dir={straight}"], log)
    _wait(pid, lambda: _saved(straight))
    recorded = time.perf_counter()
    _wait(pid, lambda: (straight / "metrics.json").exists())
    stretch = time.perf_counter() - recorded
    _, status = os.waitpid(pid, 0)
    report: dict = {"straight_rc": os.waitstatus_to_exitcode(status), "stretch_s": round(stretch, 3), "after": []}
    for i in range(kills):
        run_dir = root / f"after-{i}"
        argv = [*overrides, f"hydra.run.dir={run_dir}"]
        delay = rng.uniform(0.02, 0.9) * stretch
        report["after"].append(_kill_and_rerun(argv, run_dir, log, lambda d=run_dir: _saved(d), delay))
    run_dir = root / "last-checkpoint"
    last = max(int(m[1]) for p in (straight / "checkpoints").iterdir() if (m := _CHECKPOINT.match(p.name)))
    state = run_dir / "checkpoints" / f"checkpoint-{last}" / "trainer_state.json"
    argv = [*overrides, f"hydra.run.dir={run_dir}"]
    report["last_checkpoint"] = _kill_and_rerun(argv, run_dir, log, state.exists, 0.0)
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report))


def _import_once() -> None:
    """What a run imports, once, before forking (the children then start in about a second)."""
    import datasets  # noqa: F401
    import deepspeed  # noqa: F401 - accelerate imports it when it unwraps the model (~7 s)
    import peft  # noqa: F401
    import torch  # noqa: F401
    from trl import SFTConfig, SFTTrainer  # noqa: F401

    from trainer import cli  # noqa: F401
    from trainer.engine import checkpoints, pipeline  # noqa: F401


if __name__ == "__main__":
    if sys.argv[1:2] == ["phases"]:
        phases(sys.argv[2:])
    else:
        main(sys.argv[1:])
