"""TRL's fused LM head, scoring only the positions that carry a label on the CPU too.

SFTTrainer computes the loss through TRL's fused LM head: the 49k-wide vocabulary projection runs in tiles, with
the log-probability, entropy and top-1 metrics folded from each tile. On CUDA (Triton) it scores only the positions
whose label is not -100; everywhere else it scores every position, prompt and padding included, because on some
accelerators (Neuron) a batch-dependent tile shape would recompile the graph. An eager CPU recompiles nothing, so
scoring the labelled positions only is pure saving: on the quickstart data 17 of 111 tokens per example carry a
label, and the projection plus its float32 temporaries were a third of each training step. The loss, its gradients
and TRL's logged metrics are the same (the unlabelled positions contribute exact zeros); tests/test_lm_head.py checks
it against TRL's own path.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def score_labelled_positions_only() -> bool:
    """Make TRL's fused LM head compact (labelled positions only) on the CPU; True when it is (idempotent)."""
    from trl.trainer import utils

    decide = getattr(utils, "_use_triton", None)
    if decide is None or not hasattr(utils, "add_fused_lm_head"):
        log.warning("this TRL version has no fused LM head switch: every position is scored on the CPU")
        return False
    if getattr(decide, "hydratune_compact", False):
        return True

    def compact(device) -> bool:
        return decide(device) or device.type == "cpu"

    compact.hydratune_compact = True  # type: ignore[attr-defined]  # marks the function as ours
    compact.original = decide  # type: ignore[attr-defined]  # TRL's own decision, for tests that compare with it
    utils._use_triton = compact  # read by add_fused_lm_head's forward only, to choose compact scoring
    return True
