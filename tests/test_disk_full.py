"""A full disk anywhere hydratune writes (the cache's model conversion and tokenized data, checkpoints, the run's
model, exports) is one paragraph (the path, the free space there, what to do), exit 2, and nothing partial is left
under a final name.

The disk really fills: a small tmpfs mounted for the test (root, as in CI). Where mounting is not permitted those
tests are skipped, and the injected variants (a real SafetensorError or OSError(ENOSPC) raised at the library's
write call) still run."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import hydratune
from trainer.config.errors import UserError
from trainer.run import atomic

TINY = ["model=tiny_random", "hardware.threads=1", "eval=none"]


class SmallDisk:
    """A tmpfs of a given size at ``path`` (resizable: ``resize``); unmounted at teardown."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounted = False

    def mount(self, kib: int) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(self.path)], capture_output=True, text=True
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip() or 'not root'}): the injected "
                        "variants of these cases still run")  # fmt: skip
        self.mounted = True
        return self.path

    def resize(self, kib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(self.path)], check=True)

    def used_kib(self) -> int:
        stat = os.statvfs(self.path)
        return (stat.f_blocks - stat.f_bfree) * stat.f_frsize // 1024


@pytest.fixture
def small_disk(tmp_path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "disk")
    yield disk
    if disk.mounted:
        subprocess.run(["umount", "-l", str(disk.path)], check=False)


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def one_paragraph(stderr: str, path: Path, reason: str = "No space left on device") -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    (line,) = [ln for ln in stderr.splitlines() if f"Could not write {path}" in ln]
    assert f": {reason}" in line and "MiB are free there now" in line, line
    assert "run the same command again" in line
    return line


# ---------------------------------------------------------------- what counts as a full disk


def test_a_full_disk_is_recognised_however_a_library_wraps_it():
    from safetensors import SafetensorError

    full = OSError(errno.ENOSPC, "No space left on device")
    chained = RuntimeError("saving failed")
    chained.__cause__ = full
    assert atomic.write_errno(full) == errno.ENOSPC
    assert atomic.write_errno(SafetensorError("Error while serializing: I/O error: disk (os error 28)")) == 28
    assert atomic.write_errno(OSError("Error writing bytes to file. Detail: [errno 28] No space")) == 28  # pyarrow
    assert atomic.write_errno(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")) == errno.EIO
    assert atomic.write_errno(chained) == errno.ENOSPC
    for other in (FileNotFoundError(errno.ENOENT, "x"), ValueError("exit code: 1"), RuntimeError("CUDA out of memory")):
        assert atomic.write_errno(other) is None


# ---------------------------------------------------------------- the cache: model conversion, tokenized data


class _HalfWritingModel:
    """A model whose save_pretrained writes part of its weights, then meets a full disk as safetensors reports it."""

    def save_pretrained(self, folder) -> None:
        from safetensors import SafetensorError

        (Path(folder) / "model.safetensors").write_bytes(b"\0" * 1000)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def test_a_full_disk_during_model_conversion_is_one_paragraph_injected(tmp_path, tiny_tokenizer):
    from trainer import models

    folder = tmp_path / "models" / "tiny-random-llama"
    folder.parent.mkdir()
    with pytest.raises(UserError) as err:
        models.save_folder(folder, _HalfWritingModel(), tiny_tokenizer, keep_if="config.json")
    assert str(err.value).startswith(f"Could not write {folder}: No space left on device (")
    assert files_under(tmp_path) == []  # no models/<name>.partial-<pid>/, no models/<name>/


def test_a_full_disk_during_model_conversion_is_one_paragraph(small_disk, tiny_tokenizer):
    from trainer import models

    disk = small_disk.mount(64)  # the tiny model's weights are 515 KB
    folder = disk / "models" / "tiny-random-llama"
    folder.parent.mkdir()
    with pytest.raises(UserError) as err:
        models.save_folder(folder, models.tiny_model(tiny_tokenizer), tiny_tokenizer, keep_if="config.json")
    assert str(err.value).startswith(f"Could not write {folder}: No space left on device (")
    assert files_under(disk) == []


def _chat_cfg(cache: Path):
    from tests.helpers import ASSETS, compose

    return compose(
        "model=tiny_random", "dataset=chat_jsonl", f"dataset.path={ASSETS / 'data' / 'chat.jsonl'}",
        "dataset.validation_size=2", f"cache_dir={cache}", "++train.max_length=128",
    )  # fmt: skip


def test_a_full_disk_while_data_is_tokenized_into_the_cache_is_one_paragraph(small_disk, tiny_tokenizer):
    from trainer.data import prepare

    disk = small_disk.mount(8)
    with pytest.raises(UserError) as err:
        prepare(_chat_cfg(disk), tiny_tokenizer, None)
    (datasets,) = disk.iterdir()
    assert str(err.value).startswith(f"Could not write {datasets}/"), str(err.value)
    assert "No space left on device" in str(err.value) and files_under(disk) == []
    small_disk.resize(64 * 1024)
    assert not prepare(_chat_cfg(disk), tiny_tokenizer, None).cache_hit  # the rerun builds it, nothing stale used


def test_a_full_disk_while_data_is_tokenized_is_one_paragraph_injected(tmp_path, tiny_tokenizer, monkeypatch):
    from trainer.data import parallel, prepare

    def full(self, batch):
        Path(self.path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(parallel.ArrowWriter, "write", full)  # the tokenized chunks, written as they come
    with pytest.raises(UserError, match="No space left on device"):
        prepare(_chat_cfg(tmp_path), tiny_tokenizer, None)
    assert files_under(tmp_path) == []


@pytest.mark.slow  # hydratune processes
def test_prepare_under_a_full_cache_is_exit_2_and_one_paragraph(small_disk, tmp_path):
    """Issues 30.5 and 29.6: model conversion, then (with the model in place) data tokenizing, on a full cache."""
    from trainer import models

    cache = small_disk.mount(256)
    args = ["prepare", "model=tiny_random", f"hydra.run.dir={tmp_path / 'run'}"]
    result = hydratune(*args, cache=cache)
    assert result.returncode == 2, result.stderr[-3000:]
    one_paragraph(result.stderr, cache / "models" / "tiny-random-llama")
    assert files_under(cache) == []  # no models/<name>.partial-<pid>/
    small_disk.resize(2048)
    models.resolve_path(_chat_cfg(cache).model, cache)  # the model converted, then the disk filled to the brim
    small_disk.resize(small_disk.used_kib() + 8)
    before = files_under(cache)
    result = hydratune(*args, cache=cache)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_paragraph(result.stderr, cache / "datasets")
    assert str(cache / "datasets") in line and files_under(cache) == before  # no partial dataset entry


# ---------------------------------------------------------------- the run dir: checkpoints, the model


@pytest.mark.slow  # trains the tiny model twice
@pytest.mark.parametrize(
    "kib, reason",
    [(160, "No space left on device"), (320, "the write failed ([enforce fail at inline_container.cc")],
    ids=["safetensors-adapter", "torch-optimizer"],
)
def test_a_full_run_dir_at_checkpoint_time_is_one_paragraph_and_the_rerun_recovers(small_disk, cache_dir, kib, reason):
    """Issues 30.6 and 31.7: the first checkpoint meets a full disk, in its safetensors adapter (SafetensorError)
    or its torch optimizer state (torch's stream writer, which names no errno); no checkpoint-1/ is left without
    its files."""
    run_dir = small_disk.mount(kib) / "run"
    steps = [*TINY, "train.max_steps=3", "train.save_steps=1", f"hydra.run.dir={run_dir}"]
    full = hydratune(*steps, cache=cache_dir)
    assert full.returncode == 2, full.stderr[-3000:]
    one_paragraph(full.stderr, run_dir / "checkpoints" / "checkpoint-1", reason)
    # nothing under a final name (TRL's model card, checkpoints/README.md, is written whole before the checkpoint)
    assert [p for p in files_under(run_dir) if p.startswith("checkpoints/")] == ["checkpoints/README.md"]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    small_disk.resize(64 * 1024)
    result = hydratune(*steps, cache=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert not (run_dir / ".writing").exists() and not (run_dir / "checkpoints" / ".writing").exists()


@pytest.mark.slow  # trains the tiny model, then exports it twice
def test_an_export_onto_a_full_disk_is_one_paragraph(small_disk, tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = hydratune(*TINY, "train.max_steps=1", f"hydra.run.dir={run_dir}", cache=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    out = small_disk.mount(128)
    export = ["export", f"hydra.run.dir={run_dir}", f"export.dir={out}"]
    full = hydratune(*export, cache=cache_dir)
    assert full.returncode == 2, full.stderr[-3000:]
    one_paragraph(full.stderr, out / "merged")
    assert files_under(out) == []
    small_disk.resize(8 * 1024)
    assert hydratune(*export, cache=cache_dir).returncode == 0
    assert (out / "merged" / "model.safetensors").is_file() and [p.name for p in out.iterdir()] == ["merged"]
