"""Checkpoints are complete or invisible: the verifier (trainer.checkpoints.problems_of) answers every malformed,
planted or implausible file with a list of problems, never an exception; a torn checkpoint is set aside and the
previous complete one used; a checkpoint is written under .writing/ and renamed when complete.

The fast tests build a checkpoint in the Trainer's own formats (torch.save of a real AdamW and LambdaLR state, an
RNG state as the Trainer saves it, a safetensors adapter); the slow ones resume real runs of the tiny model."""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
import struct
from pathlib import Path

import pytest

from trainer.config.errors import UserError
from trainer.engine import checkpoints


def write_checkpoint(folder: Path, step: int, max_steps: int = 30) -> Path:
    """checkpoint-<step> as the Trainer writes it (its files, formats and step counts), from a real optimizer."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    weight = torch.nn.Parameter(torch.zeros(4, 4))
    optimizer = torch.optim.AdamW([weight], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    for _ in range(step):
        weight.grad = torch.ones_like(weight)
        optimizer.step()
        scheduler.step()
    torch.save(optimizer.state_dict(), path / "optimizer.pt")
    torch.save(scheduler.state_dict(), path / "scheduler.pt")
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    torch.save(rng, path / "rng_state.pth")
    save_file({"base_model.lora_A.weight": weight.detach().clone()}, str(path / "adapter_model.safetensors"))
    history = [{"step": s, "loss": 6.0} for s in range(1, step + 1)]
    state = {"global_step": step, "max_steps": max_steps, "log_history": history, "best_model_checkpoint": None}
    (path / "trainer_state.json").write_text(json.dumps(state))
    return path


class Planted:
    """A pickle that would run code (create a file) when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _state(path: Path, **changes) -> None:
    state = json.loads((path / "trainer_state.json").read_text())
    (path / "trainer_state.json").write_text(json.dumps({**state, **changes}))


def _header(path: Path, header: bytes, claimed: int | None = None) -> None:
    """Replace the safetensors header (its length field says ``claimed``, default the real length)."""
    body = path / "adapter_model.safetensors"
    data = body.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    length = len(header) if claimed is None else claimed
    body.write_bytes(struct.pack("<Q", length) + header + data[8 + n :])


def _planted_optimizer(path: Path) -> None:
    import torch

    torch.save({"state": Planted(path.parent / "code-ran"), "param_groups": []}, path / "optimizer.pt")


def _forged_scheduler(path: Path) -> None:
    import torch

    state = torch.load(path / "scheduler.pt", weights_only=True)
    torch.save({**state, "last_epoch": 1000}, path / "scheduler.pt")


#: Each malformed checkpoint of issues 30 and 31, and what the verifier says about it.
MALFORMED = {
    "trainer_state.json is null": (lambda p: (p / "trainer_state.json").write_text("null"), "holds NoneType"),
    "trainer_state.json is a list": (lambda p: (p / "trainer_state.json").write_text("[1]"), "holds list"),
    "global_step is a string": (lambda p: _state(p, global_step="2"), "global_step='2', not a step count"),
    "global_step forged to 1000": (lambda p: _state(p, global_step=1000), "global_step=1000, but the folder is"),
    "global_step beyond max_steps": (lambda p: _state(p, max_steps=1), "beyond its max_steps=1"),
    "global_step behind its history": (
        lambda p: _state(p, log_history=[{"step": 9, "loss": 1.0}]),
        "its log history reaches step 9",
    ),
    "header claims 2^40 bytes": (lambda p: _header(p, b"{}", claimed=2**40), "its header claims 1099511627776"),
    "header claims 2^64-1 bytes": (lambda p: _header(p, b"{}", claimed=2**64 - 1), "its header claims"),
    "header is not a dict": (lambda p: _header(p, b"[1, 2, 3]"), "its header is a JSON list"),
    "header offsets not numbers": (
        lambda p: _header(p, b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": ["a", null]}}'),
        "has no valid byte range",
    ),
    "planted pickle as optimizer.pt": (_planted_optimizer, "optimizer.pt does not load (UnpicklingError"),
    "scheduler step forged": (_forged_scheduler, "scheduler.pt has taken 1000 steps"),
    "weights truncated": (
        lambda p: (p / "adapter_model.safetensors").write_bytes((p / "adapter_model.safetensors").read_bytes()[:-9]),
        "adapter_model.safetensors is truncated",
    ),
    "latest names a parent folder": (lambda p: (p / "latest").write_text("../.."), "'latest' names a DeepSpeed"),
}


def test_a_checkpoint_in_the_trainers_formats_is_complete(tmp_path):
    assert checkpoints.problems_of(write_checkpoint(tmp_path, 2)) == []


@pytest.mark.parametrize("case", list(MALFORMED))
def test_each_malformed_checkpoint_is_set_aside_and_the_previous_one_used(case, tmp_path, caplog):
    write_checkpoint(tmp_path, 1)
    torn = write_checkpoint(tmp_path, 2)
    spoil, said = MALFORMED[case]
    spoil(torn)
    problems = checkpoints.problems_of(torn)
    assert any(said in p for p in problems), problems
    caplog.set_level("WARNING")
    assert checkpoints.last_complete(tmp_path) == str(tmp_path / "checkpoint-1")
    assert "skipping torn checkpoint checkpoint-2 (" in caplog.text and said in caplog.text
    assert (tmp_path / "torn-checkpoint-2").is_dir() and not torn.exists()
    assert not (tmp_path / "code-ran").exists()  # weights-only loading held: the planted pickle ran nothing


def test_a_checkpoint_left_in_writing_is_set_aside(tmp_path, caplog):
    write_checkpoint(tmp_path, 1)
    partial = tmp_path / checkpoints.STAGING / "checkpoint-2"
    partial.mkdir(parents=True)
    (partial / "adapter_model.safetensors").write_bytes(b"half")
    caplog.set_level("WARNING")
    assert checkpoints.last_complete(tmp_path) == str(tmp_path / "checkpoint-1")
    assert "skipping torn checkpoint checkpoint-2 (its write never finished)" in caplog.text
    assert (tmp_path / "torn-checkpoint-2" / "adapter_model.safetensors").is_file() and not partial.exists()


# ---------------------------------------------------------------- writing through .writing/


class FakeAccelerator:
    def wait_for_everyone(self) -> None:
        pass


class FakeTrainer:
    """What StagedWrites relies on in transformers.Trainer: _save_checkpoint writes into
    _get_output_dir()/checkpoint-<global_step>; save_model writes into the folder it is given."""

    def __init__(self, root: Path, fail_after: str | None = None) -> None:
        from types import SimpleNamespace

        self.root, self.fail_after = root, fail_after
        self.state = SimpleNamespace(global_step=3, best_model_checkpoint=None)
        self.args = SimpleNamespace(should_save=True, save_total_limit=None, output_dir=str(root))
        self.accelerator = FakeAccelerator()
        self.seen_during_write: list[bool] = []

    def _get_output_dir(self, trial=None) -> str:
        return str(self.root)

    def _write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("adapter_model.safetensors", "optimizer.pt", "trainer_state.json"):
            (folder / name).write_bytes(b"x" * 100)
            self.seen_during_write.append((self.root / folder.name).exists())
            if name == self.fail_after:
                raise_full_disk(folder / "scheduler.pt")

    def _save_checkpoint(self, model, trial) -> None:
        self._write(Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}")

    def save_model(self, output_dir=None, _internal_call=False) -> None:
        self._write(Path(output_dir))


def raise_full_disk(path: Path) -> None:
    """A write into a full disk as safetensors reports it: SafetensorError (no OSError), the errno in its text."""
    from safetensors import SafetensorError

    raise SafetensorError(f"Error while serializing: I/O error: {os.strerror(errno.ENOSPC)} (os error 28)")


def test_a_checkpoint_gets_its_final_name_only_when_complete(tmp_path):
    trainer = checkpoints.staged(FakeTrainer)(tmp_path / "checkpoints")
    trainer._save_checkpoint(None, None)
    assert trainer.seen_during_write == [False, False, False]  # never visible under its final name while written
    assert (
        sorted(p.name for p in (tmp_path / "checkpoints" / "checkpoint-3").iterdir())[0] == "adapter_model.safetensors"
    )
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-3"]  # .writing/ removed
    trainer.save_model(str(tmp_path / "model"))
    assert (tmp_path / "model" / "optimizer.pt").is_file() and not (tmp_path / checkpoints.STAGING).exists()


@pytest.mark.parametrize("target", ["checkpoint", "model"])
def test_a_full_disk_while_a_checkpoint_is_written_leaves_nothing_under_a_final_name(tmp_path, target):
    trainer = checkpoints.staged(FakeTrainer)(tmp_path / "checkpoints", fail_after="optimizer.pt")
    with pytest.raises(UserError) as err:
        trainer._save_checkpoint(None, None) if target == "checkpoint" else trainer.save_model(str(tmp_path / "model"))
    final = tmp_path / "checkpoints" / "checkpoint-3" if target == "checkpoint" else tmp_path / "model"
    assert str(err.value).startswith(f"Could not write {final}: No space left on device (")
    assert "MiB are free there now" in str(err.value) and "run the same command again" in str(err.value)
    assert [p for p in tmp_path.rglob("*") if p != tmp_path / "checkpoints"] == []  # no partial folder, no .writing/


class FakeLoader:
    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        raise ValueError(
            "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"
        )


def test_a_checkpoint_that_passes_its_checks_but_does_not_load_is_set_aside(tmp_path):
    checkpoint = write_checkpoint(tmp_path, 2)
    trainer = checkpoints.staged(FakeLoader)()
    with pytest.raises(UserError) as err:
        trainer._load_optimizer_and_scheduler(str(checkpoint))
    assert str(err.value).startswith(f"The checkpoint {checkpoint} passed its checks but does not load (ValueError")
    assert "set aside as torn-checkpoint-2" in str(err.value) and "Run the same command again" in str(err.value)
    assert (tmp_path / "torn-checkpoint-2").is_dir() and checkpoints.last_complete(tmp_path) is None


def test_every_objectives_trainer_writes_through_writing():
    from tests.helpers import compose
    from trainer.engine import objectives

    for name in ("sft", "dpo"):
        cls = objectives.trainer_class(compose("model=tiny_random", f"objective={name}").objective)
        assert issubclass(cls, checkpoints.StagedWrites) and cls.__mro__[0].__name__ == cls.__mro__[2].__name__


# ---------------------------------------------------------------- slow: real runs resumed from planted checkpoints


def _planted_pickle_only(folder: Path) -> int:
    _planted_optimizer(folder / "checkpoint-7")
    return 6


def _every_malformation(folder: Path) -> int:
    _planted_optimizer(folder / "checkpoint-7")
    (folder / "checkpoint-6" / "trainer_state.json").write_text("null")
    _header(folder / "checkpoint-5", b"{}", claimed=2**40)
    _header(folder / "checkpoint-4", b"{}", claimed=2**64 - 1)
    _header(folder / "checkpoint-3", b"[1, 2, 3]")
    _state(folder / "checkpoint-2", global_step=1000)
    return 1


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache_dir) -> Path:
    """An uninterrupted 8-step run of the tiny model that keeps a checkpoint of every step."""
    from tests.helpers import hydratune

    run_dir = tmp_path_factory.mktemp("straight") / "run"
    result = hydratune(*STEPS, f"hydra.run.dir={run_dir}", cache=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


STEPS = [
    "model=tiny_random", "hardware.threads=1", "eval=none", "train.max_steps=8", "train.save_steps=1",
    "train.save_total_limit=20",
]  # fmt: skip


def losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.mark.slow  # trains the tiny model
@pytest.mark.parametrize("plant", [_planted_pickle_only, _every_malformation], ids=["pickle", "every-malformation"])
def test_a_run_resumes_past_planted_checkpoints_to_the_uninterrupted_loss(plant, straight, tmp_path, cache_dir):
    """The run died after checkpoint-7 (its checkpoints 1-7, byte for byte); then files were planted in them."""
    from tests.helpers import hydratune

    run_dir = tmp_path / "run"
    for n in range(1, 8):
        shutil.copytree(straight / "checkpoints" / f"checkpoint-{n}", run_dir / "checkpoints" / f"checkpoint-{n}")
    resumed_from = plant(run_dir / "checkpoints")
    result = hydratune(*STEPS, f"hydra.run.dir={run_dir}", cache=cache_dir)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    log = (run_dir / "hydratune.log").read_text()
    assert f"resuming from {run_dir / 'checkpoints' / f'checkpoint-{resumed_from}'}" in log
    for n in range(resumed_from + 1, 8):
        assert f"skipping torn checkpoint checkpoint-{n} (" in log
        assert (run_dir / "checkpoints" / f"torn-checkpoint-{n}").is_dir()
    assert not (run_dir / "checkpoints" / "code-ran").exists()
    assert losses(run_dir) == [(s, loss) for s, loss in losses(straight) if s > resumed_from]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "ok"


def test_a_pickle_is_what_the_planted_file_holds(tmp_path):
    """The planted optimizer.pt is a real code-running pickle: unpickled without weights_only it runs its code."""
    import torch

    write_checkpoint(tmp_path, 1)
    _planted_optimizer(tmp_path / "checkpoint-1")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "checkpoint-1" / "optimizer.pt", weights_only=True)
    torch.load(tmp_path / "checkpoint-1" / "optimizer.pt", weights_only=False)
    assert (tmp_path / "code-ran").exists()
