"""model.dtype=auto: resolved from torch's own capability report, simulated here for each kind of machine."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import REPO, compose
from trainer import models

AVX2_EPYC = {"avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False, "amx_tile": False}
ZEN4_EPYC = {"avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_bf16": False, "amx_tile": False}
SAPPHIRE_RAPIDS = {"avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_bf16": True, "amx_tile": True}


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to be a CPU with these capabilities, at this torch kernel level."""

    def simulate(caps: dict, level: str) -> None:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: level)
        for name in models._ONEDNN_CAPS:
            monkeypatch.delenv(name, raising=False)

    return simulate


@pytest.mark.parametrize(
    ("caps", "level", "expected", "says"),
    [
        (AVX2_EPYC, "AVX2", "float32", "no native bf16 (torch CPU capability AVX2, bf16 units: none"),
        (
            ZEN4_EPYC,
            "AVX512",
            "bfloat16",
            "native bf16 on this CPU (torch CPU capability AVX512, bf16 units: avx512_bf16",
        ),
        (SAPPHIRE_RAPIDS, "AVX512", "bfloat16", "bf16 units: amx_bf16, avx512_bf16"),
        # bf16 units present but torch told to dispatch AVX2 kernels only (ATEN_CPU_CAPABILITY=avx2)
        (ZEN4_EPYC, "AVX2", "float32", "no native bf16 (torch CPU capability AVX2, bf16 units: avx512_bf16"),
        ({"architecture": "arm64", "neon": True}, "DEFAULT", "float32", "bf16 units: none"),
    ],
)
def test_auto_on_cpu_follows_torch_capability_report(cpu, caps, level, expected, says):
    cpu(caps, level)
    dtype, why = models.resolve_dtype("auto", "cpu")
    assert dtype == expected
    assert says in why


def test_onednn_capped_below_bf16_means_float32(cpu, monkeypatch):
    cpu(ZEN4_EPYC, "AVX512")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert models.resolve_dtype("auto", "cpu") == (
        "float32",
        "no native bf16 (torch CPU capability AVX512, bf16 units: avx512_bf16, ONEDNN_MAX_CPU_ISA=AVX2)",
    )
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert models.resolve_dtype("auto", "cpu")[0] == "bfloat16"


def test_full_fine_tuning_keeps_fp32_weights_on_a_bf16_cpu(cpu):
    cpu(SAPPHIRE_RAPIDS, "AVX512")
    dtype, why = models.resolve_dtype("auto", "cpu", full_weights=True)
    assert dtype == "float32" and why.startswith("full fine-tuning keeps fp32 weights")


@pytest.mark.parametrize(
    ("bf16", "full", "expected"),
    [(True, False, "bfloat16"), (True, True, "bfloat16"), (False, False, "float16"), (False, True, "float32")],
)
def test_auto_on_cuda(monkeypatch, bf16, full, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4" if not bf16 else "NVIDIA A100")
    dtype, why = models.resolve_dtype("auto", "cuda", full_weights=full)
    assert dtype == expected
    assert ("supports bf16" if bf16 else "has no bf16") in why


def test_auto_for_a_gpu_that_is_not_here_assumes_bf16(monkeypatch):
    """hydratune prepare hardware=single_gpu estimates a GPU run on a machine without one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.resolve_dtype("auto", "cuda") == ("bfloat16", "no GPU here to ask: assumed to support bf16")


@pytest.mark.parametrize("explicit", ["float32", "bfloat16", "float16"])
def test_explicit_value_wins(cpu, monkeypatch, explicit):
    cpu(AVX2_EPYC, "AVX2")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    for device in ("cpu", "cuda"):
        assert models.resolve_dtype(explicit, device) == (explicit, "set by model.dtype")


def test_every_local_model_option_defaults_to_auto():
    from omegaconf import OmegaConf

    for path in sorted((REPO / "conf" / "model").glob("*.yaml")):
        cfg = compose(f"model={path.stem}").model
        if cfg.source in ("provider", "tiny_random"):  # tiny_random: float32 so recorded test losses hold everywhere
            continue
        assert cfg.dtype == "auto", f"{path}: dtype {OmegaConf.to_yaml(cfg)}"


@pytest.mark.slow
def test_run_log_and_report_say_what_was_chosen(tmp_path, cache_dir):
    """A real run with torch held to AVX2 kernels and oneDNN capped at AVX2 (an AVX2-only CPU, as far as torch can
    tell): auto resolves to float32, and the log, metrics.json and report.md say why."""
    import json

    from tests.helpers import hydratune

    env = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    args = ["model=tiny_random", "model.dtype=auto", "hardware.threads=1", "train.max_steps=1", "eval=none"]
    result = hydratune(*args, f"hydra.run.dir={tmp_path}", cache=cache_dir, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "hydratune.log").read_text()
    assert "model.dtype=auto -> float32: no native bf16 (torch CPU capability AVX2" in log
    hardware = json.loads((tmp_path / "metrics.json").read_text())["hardware"]
    assert hardware["model_dtype"] == "float32" and "ONEDNN_MAX_CPU_ISA=AVX2" in hardware["why"]
    assert "no native bf16" in (tmp_path / "report.md").read_text()
