"""Checkpoints are complete or invisible: before a run resumes, the newest checkpoint is verified (trainer state,
optimizer, scheduler, RNG state, and adapter or model weights all present and intact). A torn one (a kill, crash or
full disk while it was written) is renamed ``torn-checkpoint-N`` (the Trainer never looks at it again) with a
warning naming it and what is wrong, and the run resumes from the newest complete one.

Intact means: trainer_state.json parses; every torch file (``*.pt``, ``*.pth``, ``*.bin``: zip archives) passes
its CRC check; every ``*.safetensors`` file is as long as its header says. Local, DDP (one rng_state_<rank>.pth per
rank), FSDP (``pytorch_model_fsdp_*``/``optimizer_*`` folders) and DeepSpeed (``global_step*`` folder named by
``latest``) layouts are recognised.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHTS = (
    "adapter_model.safetensors",
    "adapter_model.bin",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def last_complete(folder: Path) -> str | None:
    """The newest complete checkpoint under ``folder`` (run_dir/checkpoints); torn ones are set aside."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted((int(m[1]), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name)))
    for _, path in reversed(found):
        problems = problems_of(path)
        if not problems:
            return str(path)
        aside = set_aside(path)
        log.warning("skipping torn checkpoint %s (%s); moved to %s", path.name, "; ".join(problems), aside)
    return None


def set_aside(path: Path) -> Path | str:
    """Rename a torn checkpoint out of the Trainer's sight (kept for inspection, never deleted). Every rank of a
    distributed run verifies the same files and reaches the same verdict; the first rename wins."""
    aside = path.with_name(f"torn-{path.name}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"torn-{path.name}-{n}")
    try:
        path.rename(aside)
    except OSError:  # another rank set it aside first
        return "torn-* (by another process)"
    return aside.name


def problems_of(path: Path) -> list[str]:
    """What is missing or damaged in the checkpoint folder ``path`` (empty: complete)."""
    problems = []
    state = path / "trainer_state.json"
    try:
        if "global_step" not in json.loads(state.read_text()):
            problems.append("trainer_state.json has no global_step")
    except FileNotFoundError:
        problems.append("no trainer_state.json")
    except (OSError, ValueError) as exc:
        problems.append(f"trainer_state.json unreadable ({exc.__class__.__name__})")
    deepspeed = _deepspeed_folder(path)
    if deepspeed is False:
        problems.append("'latest' names a DeepSpeed folder that is missing")
    has_optimizer = (
        (path / "optimizer.pt").is_file()
        or any(path.glob("optimizer_*"))
        or bool(deepspeed and any(deepspeed.glob("*optim_states.pt")))
    )
    if not has_optimizer:
        problems.append("no optimizer state")
    if not (path / "scheduler.pt").is_file() and not deepspeed:
        problems.append("no scheduler.pt")
    if not any(path.glob("rng_state*.pth")):
        problems.append("no rng_state.pth")
    if not any((path / w).is_file() for w in WEIGHTS) and not any(path.glob("pytorch_model_fsdp_*")) and not deepspeed:
        problems.append("no adapter or model weights")
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            try:
                shards = set(json.loads((path / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError):
                problems.append(f"{index} unreadable")
                continue
            problems += [f"missing shard {s}" for s in sorted(shards) if not (path / s).is_file()]
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        damage = _damage(file)
        if damage:
            problems.append(f"{file.relative_to(path)} {damage}")
    return problems


def _deepspeed_folder(path: Path):
    """The DeepSpeed global_step folder named in ``latest``; None without DeepSpeed; False when it is missing."""
    latest = path / "latest"
    if not latest.is_file():
        return None
    target = path / latest.read_text().strip()
    return target if target.is_dir() else False


def _damage(file: Path) -> str | None:
    """Why ``file`` is not intact, or None."""
    try:
        if file.suffix in (".pt", ".pth", ".bin"):
            if not zipfile.is_zipfile(file):
                return "is not a complete torch file"
            with zipfile.ZipFile(file) as z:
                bad = z.testzip()
            return f"is damaged (member {bad})" if bad else None
        if file.suffix == ".safetensors":
            size = file.stat().st_size
            with open(file, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    return "is truncated"
                (n,) = struct.unpack("<Q", head)
                header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            return None if size == 8 + n + end else f"is truncated ({size} of {8 + n + end} bytes)"
        if file.suffix == ".json":
            json.loads(file.read_text())
    except (OSError, ValueError, zipfile.BadZipFile, KeyError, struct.error) as exc:
        return f"is damaged ({exc.__class__.__name__})"
    return None
