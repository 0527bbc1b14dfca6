"""A streamed run (dataset.streaming=true) resumes at the exact sample: the stream's position rides in every
checkpoint.

:class:`StreamPosition` is a Trainer callback whose state (``trainer_state.json``'s ``stateful_callbacks``, written
inside the checkpoint, so a kill never separates the two) is the position of the next packed sequence to train:
its number (steps x per_device_train_batch_size x gradient_accumulation_steps, in one process) and where its first
row starts (trainer.data.streaming.Position). On resume, before the first batch is read, the stream is pointed at
that byte; the batches the Trainer skips on resume (those trained before the checkpoint) are one-token placeholders
(trainer.data.streaming.PackedStream), so its random state is restored where an uninterrupted run's is.
"""

from __future__ import annotations

import dataclasses
import logging

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from trainer.config.errors import UserError
from trainer.data.streaming import PackedStream, Position

log = logging.getLogger(__name__)


class StreamPosition(TrainerCallback, ExportableState):
    def __init__(self, stream: PackedStream):
        self.stream, self.step, self.per_step = stream, 0, 1

    def on_train_begin(self, args, state, control, **kwargs):
        self.per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        self.step = state.global_step
        if state.global_step == 0:
            return
        saved = state.stateful_callbacks.get(type(self).__name__)
        if not isinstance(saved, dict):
            raise UserError(
                f"the checkpoint at step {state.global_step} records no stream position: it was not written by a "
                "run with dataset.streaming=true. Resume it with dataset.streaming=false, or start this run in a new "
                "run dir (hydra.run.dir=...)."
            )
        sequence, position = saved["attributes"]["sequence"], Position(**saved["attributes"]["position"])
        self.stream.start_at(sequence, position)
        log.info(
            "the stream resumes at sequence %d: %s line %d (byte %d), pass %d",
            sequence,
            self.stream.files[position.file].name,
            position.line,
            position.offset,
            position.epoch + 1,
        )

    def on_step_end(self, args, state, control, **kwargs):
        self.step = state.global_step

    def state(self) -> dict:
        sequence = self.step * self.per_step
        position = self.stream.position_of(sequence)
        return {"args": {}, "attributes": {"sequence": sequence, "position": dataclasses.asdict(position)}}
