"""Checkpoints are complete or invisible.

Writing: every objective's trainer (:func:`staged`) writes a checkpoint into ``checkpoints/.writing/checkpoint-N``
and renames it to ``checkpoints/checkpoint-N`` when every file is written (the final ``model/`` folder likewise,
through ``.writing/model``), so no partial folder ever carries a final name; a full disk while writing removes the
partial folder and is one paragraph (:func:`trainer.run.atomic.disk_error`).

Resuming: before a run resumes, the newest checkpoint is verified (:func:`problems_of`): trainer state, optimizer,
scheduler, RNG state, and adapter or model weights all present, intact, loadable and consistent with each other. A
torn one (a kill, crash or full disk while it was written, or a file that was damaged or planted since) is renamed
``torn-checkpoint-N`` (the Trainer never looks at it again) with a warning naming it and what is wrong, and the run
resumes from the newest complete one. The verifier is total: whatever a file holds, it answers with a list of
problems, never an exception.

Intact means: trainer_state.json is an object whose ``global_step`` is the N of its folder's name, within its
``max_steps``, and not behind its log history, the scheduler's or the optimizer's step count; every torch file
(``*.pt``, ``*.pth``, ``*.bin``: zip archives) passes its CRC check, and those the Trainer loads on resume (optimizer,
scheduler, scaler, RNG state, ``*.bin`` weights) load with ``weights_only=True`` as the Trainer loads them (a planted
pickle fails here, before training, and runs no code); every ``*.safetensors`` header is a well-formed table whose
tensors end exactly where the file does. Local, DDP (one rng_state_<rank>.pth per rank), FSDP
(``pytorch_model_fsdp_*``/``optimizer_*`` folders) and DeepSpeed (``global_step*`` folder named by ``latest``)
layouts are recognised.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trainer.config.errors import UserError
from trainer.run import atomic

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
#: Where checkpoints (and the final model) are written before they are renamed into place.
STAGING = ".writing"
WEIGHTS = (
    "adapter_model.safetensors",
    "adapter_model.bin",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
#: Torch files the Trainer itself loads with weights_only=True on resume (training_args.bin is never loaded, and
#: DeepSpeed loads its own files with full pickle: those get the CRC check only).
_WEIGHTS_ONLY = re.compile(
    r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth|adapter_model\.bin|pytorch_model(-\d+-of-\d+)?\.bin)$"
)
_SAFETENSORS_HEADER_MAX = 100 * 2**20  # the safetensors library's own limit


# ---------------------------------------------------------------- resuming


def last_complete(folder: Path) -> str | None:
    """The newest complete checkpoint under ``folder`` (run_dir/checkpoints); torn ones, and any left half-written
    in ``.writing/`` by a run that stopped while saving, are set aside."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for partial in _checkpoint_folders(folder / STAGING):
        aside = set_aside(partial, folder)
        log.warning("skipping torn checkpoint %s (its write never finished); moved to %s", partial.name, aside)
    for path in reversed(_checkpoint_folders(folder)):
        problems = problems_of(path)
        if not problems:
            return str(path)
        aside = set_aside(path)
        log.warning("skipping torn checkpoint %s (%s); moved to %s", path.name, "; ".join(problems), aside)
    return None


def _checkpoint_folders(folder: Path) -> list[Path]:
    """``checkpoint-N`` folders under ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def set_aside(path: Path, into: Path | None = None) -> Path | str:
    """Rename a torn checkpoint out of the Trainer's sight, into ``into`` (default: beside it), kept for inspection,
    never deleted. Every rank of a distributed run verifies the same files and reaches the same verdict; the first
    rename wins."""
    into = Path(into) if into is not None else path.parent
    aside = into / f"torn-{path.name}"
    n = 1
    while aside.exists():
        n += 1
        aside = into / f"torn-{path.name}-{n}"
    try:
        path.rename(aside)
    except OSError:  # another rank set it aside first
        return "torn-* (by another process)"
    return aside.name


def problems_of(path: Path) -> list[str]:
    """What is missing, damaged or implausible in the checkpoint folder ``path`` (empty: complete). Never raises:
    a file the checks cannot make sense of is itself the problem."""
    try:
        return _problems(Path(path))
    except Exception as exc:  # noqa: BLE001 - the verifier is total: whatever it meets marks the checkpoint torn
        return [f"could not be verified ({exc.__class__.__name__}: {str(exc)[:200]})"]


def _problems(path: Path) -> list[str]:
    problems: list[str] = []
    state = _trainer_state(path / "trainer_state.json", problems)
    deepspeed = _deepspeed_folder(path)
    if deepspeed is False:
        problems.append("'latest' names a DeepSpeed folder that is missing")
    has_optimizer = (
        (path / "optimizer.pt").is_file()
        or any(path.glob("optimizer_*"))
        or (isinstance(deepspeed, Path) and any(deepspeed.glob("*optim_states.pt")))
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
            shards = _shards(path / index)
            if shards is None:
                problems.append(f"{index} unreadable")
                continue
            problems += [f"missing shard {s}" for s in sorted(shards) if not (path / s).is_file()]
    loaded: dict[str, Any] = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        damage = _damage(file, loaded)
        if damage:
            problems.append(f"{file.relative_to(path)} {damage}")
    if state is not None:
        problems += _implausible(path, state, loaded)
    return problems


def _trainer_state(file: Path, problems: list[str]) -> dict | None:
    try:
        state = json.loads(file.read_text())
    except FileNotFoundError:
        problems.append("no trainer_state.json")
        return None
    except (OSError, ValueError) as exc:
        problems.append(f"trainer_state.json unreadable ({exc.__class__.__name__})")
        return None
    if not isinstance(state, dict):
        problems.append(f"trainer_state.json holds {type(state).__name__}, not the Trainer's state object")
        return None
    step = state.get("global_step")
    if "global_step" not in state:
        problems.append("trainer_state.json has no global_step")
        return None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        problems.append(f"trainer_state.json has global_step={step!r}, not a step count")
        return None
    return state


def _implausible(path: Path, state: dict, loaded: dict[str, Any]) -> list[str]:
    """global_step against the folder's name, the state's own schedule and history, and the step counts that the
    scheduler and optimizer files carry."""
    step, problems = state["global_step"], []
    named = _CHECKPOINT.match(path.name)
    if named and int(named[1]) != step:
        problems.append(f"trainer_state.json says global_step={step}, but the folder is {path.name}")
    max_steps = state.get("max_steps")
    if isinstance(max_steps, int) and max_steps > 0 and step > max_steps:
        problems.append(f"trainer_state.json says global_step={step}, beyond its max_steps={max_steps}")
    history = state.get("log_history")
    logged = [e.get("step") for e in history if isinstance(e, dict)] if isinstance(history, list) else []
    ahead = max((s for s in logged if isinstance(s, int | float)), default=0)
    if ahead > step:
        problems.append(f"trainer_state.json says global_step={step}, but its log history reaches step {ahead}")
    scheduler = loaded.get("scheduler.pt")
    last_epoch = scheduler.get("last_epoch") if isinstance(scheduler, dict) else None
    if isinstance(last_epoch, int) and last_epoch > step:
        problems.append(f"scheduler.pt has taken {last_epoch} steps, trainer_state.json says global_step={step}")
    taken = _optimizer_steps(loaded.get("optimizer.pt"))
    if taken is not None and taken > step:
        problems.append(f"optimizer.pt has taken {taken} steps, trainer_state.json says global_step={step}")
    return problems


def _optimizer_steps(optimizer: Any) -> int | None:
    """The largest per-parameter step count in an optimizer state dict (Adam's ``step``), or None."""
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict):
        return None
    steps = []
    for entry in optimizer["state"].values():
        value = entry.get("step") if isinstance(entry, dict) else None
        if value is not None and getattr(value, "numel", lambda: 1)() == 1:
            steps.append(int(float(value)))
    return max(steps, default=None)


def _shards(index: Path) -> set[str] | None:
    try:
        shards = json.loads(index.read_text())["weight_map"].values()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return {s for s in shards if isinstance(s, str)} if all(isinstance(s, str) for s in shards) else None


def _deepspeed_folder(path: Path) -> Path | bool | None:
    """The DeepSpeed global_step folder named in ``latest``; None without DeepSpeed; False when it is missing."""
    latest = path / "latest"
    if not latest.is_file():
        return None
    name = latest.read_text(errors="replace").strip()
    target = path / name
    return target if name and "/" not in name and target.is_dir() else False


def _damage(file: Path, loaded: dict[str, Any]) -> str | None:
    """Why ``file`` is not intact, or None. Torch files the Trainer loads are loaded here the same way (kept in
    ``loaded`` by name, memory-mapped: their tensors are not read)."""
    try:
        if file.suffix in (".pt", ".pth", ".bin"):
            if not zipfile.is_zipfile(file):
                return "is not a complete torch file"
            with zipfile.ZipFile(file) as z:
                bad = z.testzip()
            if bad:
                return f"is damaged (member {bad})"
            if _WEIGHTS_ONLY.match(file.name):
                loaded[file.name] = _load_weights_only(file)
            return None
        if file.suffix == ".safetensors":
            return _safetensors_damage(file)
        if file.suffix == ".json":
            json.loads(file.read_text())
    except Exception as exc:  # noqa: BLE001 - whatever a file makes a reader raise, the file is not intact
        return f"is damaged ({exc.__class__.__name__})" if not _unloadable(exc) else f"does not load ({_first(exc)})"
    return None


def _unloadable(exc: BaseException) -> bool:
    import pickle

    return isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc)


def _first(exc: BaseException) -> str:
    line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return f"{exc.__class__.__name__}: {line[:160]}" if line else exc.__class__.__name__


def _load_weights_only(file: Path) -> Any:
    """The file as the Trainer loads it on resume (weights_only=True, numpy's RNG state allowed), memory-mapped."""
    import torch
    from transformers.trainer_pt_utils import safe_globals

    with safe_globals():
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)


def _safetensors_damage(file: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON table of tensors with their byte ranges, and the
    bytes: every length and range is checked against the file's own length before anything is read."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "is truncated"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > _SAFETENSORS_HEADER_MAX:
            return f"is truncated or forged (its header claims {n} bytes; the file has {size})"
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        return f"is damaged (its header is a JSON {type(header).__name__}, not a table of tensors)"
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            return f"is damaged (tensor {name[:80]} has no valid byte range)"
        end = max(end, offsets[1])
    if size != 8 + n + end:
        return (
            f"is truncated ({size} of {8 + n + end} bytes)"
            if size < 8 + n + end
            else f"has {size} bytes, not {8 + n + end}"
        )
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as opened:  # dtypes and shapes against the byte ranges
        opened.keys()
    return None


# ---------------------------------------------------------------- writing


class StagedWrites:
    """A Trainer mixin: each checkpoint, and the final ``save_model`` folder, is written under ``.writing/`` and
    renamed into place once every process has written its part, so a kill or a full disk never leaves a partial
    folder under a final name; a checkpoint that fails to load on resume is set aside (:func:`_loading`). The Trainer's own ``_save_checkpoint`` does the writing (its output dir is pointed
    at the staging folder meanwhile, so the objectives' extra files go there too); rotation (save_total_limit)
    then runs on the real folder."""

    state: Any
    args: Any
    accelerator: Any
    _get_output_dir: Any

    def _save_checkpoint(self, model, trial) -> None:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        root = Path(self._get_output_dir(trial=trial))
        staging = root / STAGING
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        save = super()._save_checkpoint  # type: ignore[misc]

        def write() -> None:
            self._get_output_dir = lambda trial=None: str(staging)
            try:
                save(model, trial)
            finally:
                del self._get_output_dir
            best = self.state.best_model_checkpoint
            if best and Path(best).parent == staging:  # the best checkpoint is the one being written
                self.state.best_model_checkpoint = str(root / Path(best).name)
                if self.args.should_save:
                    self.state.save_to_json(str(staging / name / "trainer_state.json"))

        self._write_staged(staging / name, root / name, write)
        if self.args.should_save:
            limit, best = self.args.save_total_limit, self.state.best_model_checkpoint
            rotate_checkpoints(str(root), save_total_limit=limit, best_model_checkpoint=best, use_mtime=True)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        save = super().save_model  # type: ignore[misc]
        if output_dir is None or _internal_call:  # inside a checkpoint (already staged), or push_to_hub
            return save(output_dir, _internal_call)
        final = Path(output_dir)
        staged_path = final.parent / STAGING / final.name
        self._write_staged(staged_path, final, lambda: save(str(staged_path), _internal_call))
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        with _loading(resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)  # type: ignore[misc]

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        with _loading(checkpoint):
            super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[misc]

    def _load_rng_state(self, checkpoint: str | None) -> None:
        with _loading(checkpoint):
            super()._load_rng_state(checkpoint)  # type: ignore[misc]

    def _write_staged(self, staged_path: Path, final: Path, write: Callable[[], None]) -> None:
        saving = self.args.should_save
        if saving:
            atomic.remove(staged_path)  # left by a run that stopped while saving
        self.accelerator.wait_for_everyone()
        try:
            with atomic.writing(final, partial=staged_path):
                write()
                self.accelerator.wait_for_everyone()
                if saving:
                    atomic.publish(staged_path, final)
            self.accelerator.wait_for_everyone()
        finally:
            if saving:
                try:
                    staged_path.parent.rmdir()  # .writing/, once nothing is left in it
                except OSError:
                    pass


@contextmanager
def _loading(checkpoint: str | None) -> Iterator[None]:
    """A checkpoint that passed :func:`problems_of` but still fails to load (its files do not fit this model, say)
    is set aside like a torn one, and the run stops with one paragraph: the rerun resumes from the previous one."""
    try:
        yield
    except Exception as exc:
        if checkpoint is None or not _CHECKPOINT.match(Path(checkpoint).name):  # run_dir/model: not a checkpoint
            raise
        if isinstance(exc, UserError) or atomic.is_disk_error(exc):
            raise
        aside = set_aside(Path(checkpoint))
        log.warning("checkpoint %s does not load (%s); moved to %s", Path(checkpoint).name, _first(exc), aside)
        raise UserError(
            f"The checkpoint {checkpoint} passed its checks but does not load ({_first(exc)}). It was set aside as "
            f"{aside} (kept for inspection). Run the same command again: the run resumes from the previous complete "
            "checkpoint (or from the start when there is none)."
        ) from None


def staged(trainer_class: type) -> type:
    """``trainer_class`` (same name) that writes checkpoints and its saved model through :class:`StagedWrites`."""
    return type(trainer_class.__name__, (StagedWrites, trainer_class), {"__module__": trainer_class.__module__})
