"""Bounds on every count that multiplies memory or time, and the mistakes that used to end in a traceback (issue 31
items 4 and 8, issue 30 item 8): each is refused with exit 2 and one paragraph that names the key and the value.

Compose-time cases run through the console command's own entry point (``trainer.cli.main``), all in one child
process that also proves torch and transformers were never imported; the cases that need the tokenizer, the data or
the model's config run the real ``hydratune`` command and check that the refusal came before any weights loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, hydratune

TINY = ["model=tiny_random", "hardware.threads=1", "eval.max_examples=4", "eval.generation.max_new_tokens=4"]
#: The engine's log line once the model's weights are loaded (trainer/engine/pipeline.py: load_model).
WEIGHTS_LOADED = "model tiny-random-llama ("

#: Compose-time refusals: overrides -> what the paragraph must say (the key, the value and what is allowed).
COMPOSE_CASES = {
    "few_shot_over_context": (
        ["model=tiny_random", "eval.few_shot=1000000"],
        ["eval.few_shot=1000000", "context of 512 tokens", "at most 223 fit"],
    ),
    "few_shot_unless_eval_off": (["model=tiny_random", "eval=none", "eval.few_shot=1000000"], None),
    "max_new_tokens_over_context": (
        ["model=tiny_random", "eval.generation.max_new_tokens=512"],
        ["eval.generation.max_new_tokens=512 does not fit", "context of 512 tokens (model.max_context)"],
    ),
    "max_new_tokens_zero": (["eval.generation.max_new_tokens=0"], ["eval.generation.max_new_tokens=0", "at least 1"]),
    "max_examples_negative": (["eval.max_examples=-1"], ["eval.max_examples=-1", "at least 0"]),
    "judge_max_tokens": (["eval.judge.max_tokens=0"], ["eval.judge.max_tokens=0", "at least 1"]),
    "judge_max_examples": (["eval.judge.max_examples=-3"], ["eval.judge.max_examples=-3", "at least 0"]),
    "accumulation": (["train.gradient_accumulation_steps=0"], ["train.gradient_accumulation_steps=0", "at least 1"]),
    "max_steps": (["train.max_steps=-2"], ["train.max_steps=-2", "at least -1"]),
    "seed_2_32": (["seed=4294967296"], ["seed=4294967296", "at most 4294967295", "numpy's seed range"]),
    "seed_largest": (["seed=4294967295"], None),
    "train_seed": (["train.seed=4294967296"], ["train.seed=4294967296", "at most 4294967295"]),
    "data_seed": (["train.data_seed=-1"], ["train.data_seed=-1", "at least 0"]),
    "split_seed": (["dataset.split_seed=4294967296"], ["dataset.split_seed=4294967296", "numpy's seed range"]),
    "lora_alpha_list": (
        ["method.peft.lora_alpha=[1,2]"],
        ["method.peft.lora_alpha=[1, 2] has the wrong type", "takes a number, not list"],
    ),
    "lora_r_float": (["method.peft.r=1.5"], ["method.peft.r=1.5 has the wrong type", "a whole number"]),
    "override_with_equals": (
        ["eval.judge.rubric=a=b"],
        ["Cannot read the override 'eval.judge.rubric=a=b'", "contains '='", "'eval.judge.rubric=\"a=b\"'"],
    ),
    "override_quoted": (['eval.judge.rubric="a=b"'], None),
}


def _tab_experiment(root: Path) -> Path:
    """An experiment YAML indented with a tab on line 3, in a config dir of its own."""
    (root / "experiment").mkdir(parents=True)
    path = root / "experiment" / "tabbed.yaml"
    path.write_text("# @package _global_\ntrain:\n\tmax_steps: 3\n")
    return path


@pytest.fixture(scope="module")
def composed(tmp_path_factory) -> dict:
    """Every compose-time case through trainer.cli.main in one child: {name: {rc, stderr}}, plus "modules"."""
    root = tmp_path_factory.mktemp("bounds")
    cases = {name: [*overrides, "--cfg", "job"] for name, (overrides, _) in COMPOSE_CASES.items()}
    tab = _tab_experiment(root / "conf")
    cases["tab_yaml"] = [f"hydra.searchpath=[file://{root / 'conf'}]", "experiment=tabbed", "--cfg", "job"]
    cases["tab_yaml_run"] = [f"hydra.searchpath=[file://{root / 'conf'}]", "experiment=tabbed"]
    cases["seed_run"] = ["seed=4294967296", f"hydra.run.dir={root / 'run'}"]  # refused by the run's own check
    code = (
        "import contextlib, io, json, sys\n"
        "from trainer import cli\n"
        f"cases, out = json.loads({json.dumps(json.dumps(cases))}), {{}}\n"
        "for name, argv in cases.items():\n"
        "    sys.argv, err = ['hydratune', *argv], io.StringIO()\n"
        "    rc = 0\n"
        "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n            cli.main(argv)\n"
        "        except SystemExit as exc:\n            rc = exc.code\n"
        "    out[name] = {'rc': rc, 'stderr': err.getvalue()}\n"
        "out['modules'] = sorted({'torch', 'transformers'} & set(sys.modules))\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    out["tab_path"] = str(tab)
    return out


def _last_paragraph(result: subprocess.CompletedProcess) -> str:
    """The error paragraph a run's stderr ends with (its log lines come first); no traceback anywhere."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return _one_paragraph(result.returncode, result.stderr.strip().splitlines()[-1] + "\n")


def _one_paragraph(rc: int, stderr: str) -> str:
    assert rc == 2, stderr
    assert "Traceback" not in stderr and 'File "' not in stderr, stderr
    assert stderr.startswith("hydratune: error: ") and stderr.strip().count("\n") == 0, stderr
    return stderr


@pytest.mark.parametrize("name", sorted(COMPOSE_CASES))
def test_compose_time_bounds(name, composed):
    expected = COMPOSE_CASES[name][1]
    result = composed[name]
    if expected is None:
        assert result["rc"] in (0, None), result["stderr"]
        return
    message = _one_paragraph(result["rc"], result["stderr"])
    for part in expected:
        assert part in message


def test_refusals_at_compose_time_import_neither_torch_nor_transformers(composed):
    assert composed["modules"] == []
    assert _one_paragraph(composed["seed_run"]["rc"], composed["seed_run"]["stderr"])  # a run, not only --cfg


@pytest.mark.parametrize("case", ["tab_yaml", "tab_yaml_run"])
def test_tab_indented_experiment_names_file_and_line(case, composed):
    message = _one_paragraph(composed[case]["rc"], composed[case]["stderr"])
    assert f"{composed['tab_path']}:3: not valid YAML" in message
    assert "replace the tab with spaces" in message


def test_the_hydratune_command_refuses_a_seed_numpy_cannot_take(tmp_path):
    result = hydratune("seed=4294967296", "--cfg", "job", cache=tmp_path)
    assert "seed=4294967296 is out of range" in _one_paragraph(result.returncode, result.stderr)


# ---------------------------------------------------------------- memory limits (ulimit -v)

_PANIC = (
    "import resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_AS, ({limit}, resource.RLIM_INFINITY))\n"
    "class PanicException(BaseException):\n"
    "    '''As pyo3 raises a Rust panic (tokenizers, safetensors): not an Exception.'''\n"
    "import launchers\n"
    "def launch(cfg, command):\n"
    "    raise {raised}\n"
    "launchers.launch = launch\n"
    "from trainer import cli\n"
    "cli.main(['model=tiny_random', 'hydra.run.dir={run}'])\n"
)


#: What a failed allocation raises under RLIMIT_AS: a Rust library's panic (a BaseException), C code that could not even
#: create its MemoryError (CI, importing transformers under `ulimit -v 1000000`), a thread pool that could not start a
#: thread (pyarrow's own exception class).
_RAISED = {
    "PanicException": "PanicException('memory allocation of 1073741824 bytes failed')",
    "SystemError": "SystemError('error return without exception set')",
    "ArrowException": "type('ArrowException', (Exception,), {})('Failed to launch worker thread: Resource temporarily')",
}


@pytest.mark.parametrize("name", sorted(_RAISED))
def test_a_failed_allocation_under_a_memory_limit_is_one_paragraph_with_the_limit(tmp_path, name):
    """The error raised inside the run, with RLIMIT_AS set in the child: the run's guard turns it into the paragraph
    that says memory is limited and by how much, and status.json records it."""
    limit = 48 * 2**30  # finite, and far above what composing a config needs
    code = _PANIC.format(limit=limit, run=tmp_path / "run", raised=_RAISED[name])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    message = _one_paragraph(result.returncode, result.stderr)
    assert "Out of memory: this process may use at most 48.00 GiB of address space" in message
    assert f"ulimit -v {limit // 1024}" in message and name in message
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"


def test_a_rust_panic_without_a_memory_limit_keeps_its_traceback(tmp_path):
    """Without a limit a panic is a bug to report, not a setting to change."""
    code = _PANIC.replace("resource.setrlimit", "# resource.setrlimit")
    code = code.format(limit=0, run=tmp_path / "run", raised=_RAISED["PanicException"])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode != 2 and "PanicException" in result.stderr and "Traceback" in result.stderr


@pytest.mark.slow
def test_ulimit_v_gives_one_paragraph_not_a_memory_error_traceback(tmp_path):
    """A real address-space limit (as `ulimit -v 1000000` sets it) under `hydratune prepare`: torch and the
    tokenizer's libraries fail to allocate; the user reads how much memory the process was allowed."""
    import resource

    limit = 1_000_000 * 1024

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))

    # A cache of its own: where the allocation fails differs with what is cached (cold: importing the libraries;
    # warm: pyarrow's thread pool could not start a thread, and explaining that failed to import transformers).
    env = {**os.environ, "HYDRATUNE_CACHE": str(tmp_path / "cache")}
    for state in ("cold", "warm"):
        args = [sys.executable, "-m", "trainer.cli", "prepare", *TINY, f"hydra.run.dir={tmp_path / state}"]
        result = subprocess.run(
            args, capture_output=True, text=True, cwd=REPO, env=env, preexec_fn=limited, timeout=300
        )
        message = _last_paragraph(result)
        assert message.startswith("hydratune: error: Out of memory: this process may use at most 0.95 GiB"), state
        assert "ulimit -v 1000000" in message
        if state == "cold":  # the same command without the limit fills the cache
            filled = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
            assert filled.returncode == 0, filled.stderr[-3000:]


# ---------------------------------------------------------------- before the weights: tokenizer, data, model config


@pytest.mark.slow
def test_few_shot_that_overflows_the_context_is_refused_before_weights_load(tmp_path, cache_dir):
    result = hydratune(
        "train", *TINY, "eval.few_shot=20", "train.max_steps=1", f"hydra.run.dir={tmp_path}", cache=cache_dir
    )
    message = _last_paragraph(result)
    assert "eval.few_shot=20: a few-shot prompt of the held-out split takes" in message
    assert "more than the model's context of 512 tokens" in message and "demonstrations fit" in message
    assert WEIGHTS_LOADED not in result.stderr


@pytest.mark.slow
def test_few_shot_above_the_training_split_is_refused(tmp_path, cache_dir):
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(6)
    ]
    data = tmp_path / "small.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["prepare", *TINY, "dataset=chat_jsonl", f"dataset.path={data}", "dataset.validation_size=1"]
    result = hydratune(*args, "eval.few_shot=6", f"hydra.run.dir={tmp_path / 'run'}", cache=cache_dir)
    message = _last_paragraph(result)
    assert "eval.few_shot=6, but the training split has only 5 rows" in message and "at most 5" in message
    ok = hydratune(*args, "eval.few_shot=5", f"hydra.run.dir={tmp_path / 'ok'}", cache=cache_dir)
    assert ok.returncode == 0, ok.stderr[-3000:]


@pytest.mark.slow
def test_target_modules_typo_is_refused_before_weights_load_with_the_real_names(tmp_path, cache_dir):
    result = hydratune(
        "train", *TINY, "method.peft.target_modules=[q_proj,v_porj]", "train.max_steps=1", f"hydra.run.dir={tmp_path}",
        cache=cache_dir,
    )  # fmt: skip
    message = _last_paragraph(result)
    assert "method.peft.target_modules=['q_proj', 'v_porj']: 'v_porj' matches no module of tiny-random-llama" in message
    assert "Did you mean 'v_proj'?" in message and "k_proj, lm_head, o_proj, q_proj, up_proj, v_proj" in message
    assert WEIGHTS_LOADED not in result.stderr and "NoMatchingPeftModuleError" not in result.stderr


@pytest.mark.slow
def test_a_binary_data_file_is_named_binary_and_its_bytes_are_not_printed(tmp_path, cache_dir):
    import gzip

    data = tmp_path / "train.jsonl"
    data.write_bytes(gzip.compress(b'{"messages": []}\n' * 50, mtime=0) + b"\x1b[31m,,,")
    args = ["prepare", *TINY, "dataset=chat_jsonl", f"dataset.path={data}", f"hydra.run.dir={tmp_path / 'run'}"]
    result = hydratune(*args, cache=cache_dir)
    message = _last_paragraph(result)
    assert f"{data}:1: binary file, not text/JSONL/CSV" in message and "looks like a CSV" not in result.stderr
    assert result.stderr.isascii() and "\x1b" not in result.stderr and "\x1f" not in result.stderr
