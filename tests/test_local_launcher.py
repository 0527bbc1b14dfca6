"""launchers.local: what it sets up in the process before the engine runs."""

from __future__ import annotations

import sys

import pytest
from omegaconf import OmegaConf

from launchers.local import skip_deepspeed_probe


def test_a_run_without_deepspeed_never_imports_it(monkeypatch):
    """accelerate unwraps the model at SFTTrainer init and before every save; with deepspeed installed it imports it
    (3.5-6 s) unless the local launcher has said deepspeed is not in use. A blocked import makes any attempt fail."""
    import accelerate.utils.other as other
    import torch

    model = torch.nn.Linear(2, 2)
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` now raises ImportError
    monkeypatch.setattr(other, "is_deepspeed_available", lambda: True)  # as where the package is installed
    with pytest.raises(ImportError):
        other.extract_model_from_parallel(model)
    skip_deepspeed_probe(OmegaConf.create({"train": {"deepspeed": "ds.json"}}))  # a DeepSpeed run keeps the probe
    with pytest.raises(ImportError):
        other.extract_model_from_parallel(model)
    skip_deepspeed_probe(OmegaConf.create({"train": {"learning_rate": 1e-4}}))
    assert other.extract_model_from_parallel(model) is model
