"""Packing: several tokenized examples per training sequence, with their boundaries kept in ``seq_lengths``.

This reuses TRL's own packer (``trl.data_utils.pack_dataset``; best-fit decreasing by default). TRL's collator
turns ``seq_lengths`` into ``position_ids`` that restart at 0 for every example and, in padding-free mode, passes
no attention mask; the model then derives a block-diagonal (per-example) causal mask from those positions, so no
token attends across examples (see tests/test_data_pack.py). The trainer must run with ``padding_free=True``
(TRL turns it on for ``packing=True`` with a bfd strategy).
"""

from __future__ import annotations

from trainer.config.errors import UserError

STRATEGIES = ("bfd", "bfd_split", "wrapped")


def pack(dataset, max_length: int, strategy: str = "bfd"):
    from trl.data_utils import pack_dataset

    if strategy not in STRATEGIES:
        raise UserError(
            f"train.packing_strategy={strategy} is not valid. Allowed: {', '.join(STRATEGIES)} "
            "(bfd keeps every example whole and is the right choice for chat data)."
        )
    if strategy == "wrapped":
        raise UserError(
            "train.packing_strategy=wrapped cuts examples in the middle and lets tokens attend across "
            "them; hydratune packs with bfd or bfd_split only, which keep the loss exact."
        )
    return pack_dataset(dataset.select_columns(["input_ids", "labels"]), max_length, strategy)
