"""The compact LM head (labelled positions only, trainer/engine/lm_head.py) leaves the loss, its gradients and TRL's
metrics unchanged, and scores fewer positions."""

from __future__ import annotations

import pytest
import torch

from trainer import models
from trainer.engine import lm_head


def fused_step(tokenizer, seen: list[int]):
    """One fused-head forward and backward of the tiny model on a padded batch with prompt positions unlabelled."""
    from trl.trainer import utils

    model = models.tiny_model(tokenizer, seed=3)
    utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    torch.manual_seed(0)
    ids = torch.randint(4, len(tokenizer), (3, 24))
    labels = ids.clone()
    labels[:, :15] = -100  # the prompt
    labels[2, 20:] = -100  # padding
    mask = torch.ones_like(ids)
    mask[2, 20:] = 0
    original = utils._ChunkedLogProbFunction.apply

    def spy(hidden, *args):
        seen.append(hidden.shape[0])
        return original(hidden, *args)

    utils._ChunkedLogProbFunction.apply = spy
    try:
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        out.loss.backward()
    finally:
        utils._ChunkedLogProbFunction.apply = original
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def test_compact_head_same_loss_gradients_and_metrics(tiny_tokenizer, monkeypatch):
    from trl.trainer import utils

    # TRL's own decision for the reference step, even when an earlier in-process run made the head compact already;
    # whatever was there is restored after the test.
    monkeypatch.setattr(utils, "_use_triton", getattr(utils._use_triton, "original", utils._use_triton))
    every, compact = [], []
    ref, ref_grads = fused_step(tiny_tokenizer, every)
    assert lm_head.score_labelled_positions_only()
    assert lm_head.score_labelled_positions_only()  # idempotent
    out, grads = fused_step(tiny_tokenizer, compact)

    assert every == [3 * 23] and compact == [
        9 + 9 + 5
    ]  # shifted labels: 9 labelled positions a row, 5 in the padded one
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)
    for name in ("log_probs", "entropy"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=1e-5, atol=1e-6)
    assert torch.equal(out.is_top1, ref.is_top1) and torch.equal(out.label_mask, ref.label_mask)
    assert ref_grads.keys() == grads.keys() and len(grads) > 10
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
