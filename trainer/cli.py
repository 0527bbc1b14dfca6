"""The `hydratune` console command: ``hydratune [COMMAND] [OVERRIDES...]``.

The first word picks the command (train when it is an override or absent); Hydra composes and validates
the config; the hardware strategy's launcher runs it. Nothing here imports torch: ``--help`` and
``--cfg job`` stay fast.

    hydratune model=tiny_random train.max_steps=3 hydra.run.dir=/tmp/run
    hydratune prepare dataset=chat_jsonl dataset.path=data.jsonl
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import hydra
from omegaconf import DictConfig

from trainer.config import schema
from trainer.config.compose_errors import explain_composition_error
from trainer.config.errors import UserError
from trainer.run.memory import explain_memory_limit

_PASS_THROUGH = tuple(f"{node}." for node in ("train", "method.peft", "method.quantization", "objective.args"))
_command = "train"


@hydra.main(config_path="pkg://trainer.conf", config_name="config", version_base="1.3")
def _task(cfg: DictConfig) -> float | None:
    from launchers import launch
    from trainer.run import rundir
    from trainer.run.signals import sigterm_interrupts

    started = time.time()
    from trainer.config.secrets import redact_argv

    sys.argv = [sys.argv[0], *redact_argv(sys.argv[1:])]  # Hydra has parsed it; trackers read it (wandb's args)
    try:
        with sigterm_interrupts():  # SIGTERM (kill, a scheduler's stop) is recorded as Ctrl-C is: "interrupted"
            launch(cfg, _command)
        return rundir.finished(cfg, _command, started)  # status.json; the configured objective, for Optuna
    except KeyboardInterrupt:
        rundir.interrupted(cfg, _command, started)
        _interrupted(cfg.output_dir)
    except Exception as exc:
        _failed(cfg, started, exc)
    except BaseException as exc:  # a Rust library's panic (pyo3's PanicException) is no Exception
        if type(exc).__name__ != "PanicException":
            raise
        _failed(cfg, started, exc)
    finally:
        rundir.release()
    return None  # a failed run of a sweep: Optuna records a failed trial


def _failed(cfg: DictConfig, started: float, error: BaseException) -> None:
    """A run that raised: recorded in status.json; then, unless it is one run of a sweep (the others go on), one
    paragraph and exit 2 for the user's mistakes and environment, else the traceback."""
    from trainer.run import rundir
    from trainer.run.atomic import explain_io_error

    # Memory first (explaining anything else imports more); a full or read-only disk, a wandb server that refuses
    # the key: one paragraph.
    out_of_memory = explain_memory_limit(error)
    exc: BaseException = out_of_memory or error
    try:
        if isinstance(exc, Exception):
            exc = explain_io_error(exc, cfg.output_dir) or exc
        if not isinstance(exc, UserError) and isinstance(exc, Exception):  # trainer.run.loggers imports transformers
            from trainer.run.loggers import explain_wandb_error

            exc = explain_wandb_error(exc) or exc
    except Exception as during:  # importing what explains the error ran out of memory as well (chained to it)
        out_of_memory = explain_memory_limit(during)
        if out_of_memory is None:
            raise
        exc = out_of_memory
    if rundir.in_multirun():  # one failed run of a sweep is recorded in its status.json; the others go on
        rundir.failed(cfg, _command, started, exc)
        return
    rundir.failed(cfg, _command, started, exc, quiet=True)
    if isinstance(exc, UserError):
        # SystemExit passes through Hydra's job runner without its "Error executing job" line
        _fail(str(exc), at_once=out_of_memory is not None)
    raise error


@dataclass(frozen=True)
class Command:
    """One word of ``hydratune COMMAND``: its line in ``hydratune --help``, its usage, and what runs it."""

    summary: str
    usage: str
    run: Callable[[str, list[str]], None]
    doc: str = ""  #: the module whose docstring ``hydratune COMMAND --help`` prints (read, not imported)
    own_help: bool = False  #: the handler answers --help itself (Hydra's page, argparse)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    word = "train"
    if args and not args[0].startswith("-") and "=" not in args[0]:
        word = args.pop(0)
        if word not in COMMANDS:
            _fail(
                f"Unknown command '{word}'. Commands: {', '.join(COMMANDS)} (train is the default; hydratune --help lists them)."
            )
    command = COMMANDS[word]
    if not command.own_help and ("--help" in args or "-h" in args):
        return _command_help(word, command)
    _guarded(command.run, word, args)


def _guarded(run: Callable[[str, list[str]], None], word: str, args: list[str]) -> None:
    """The one error guard of every command: a UserError, a Hydra/OmegaConf composition error or an I/O error
    (a full or read-only disk, a file in the way) is one paragraph and exit 2; Ctrl-C is exit 130."""
    try:
        run(word, args)
    except UserError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _interrupted(None)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - only composition and I/O errors are rewritten, the rest re-raised
        if _is_composition_error(exc):
            _fail(explain_composition_error(exc))
        from trainer.run.atomic import explain_io_error

        explained = explain_io_error(exc, getattr(exc, "filename", None) or ".")
        if explained is None:
            raise
        _fail(str(explained))


def _run(word: str, args: list[str]) -> None:
    """train, prepare, eval: Hydra composes and validates the config, the hardware strategy's launcher runs it."""
    global _command
    _command = word
    args = [_pass_through(arg) for arg in args]
    from trainer.config.secrets import install_excepthook, redact_argv

    redact_argv(args)  # remembers each secret override's value: no message below prints it
    install_excepthook()
    schema.register()
    overrides = _search_path(args) + _overrides(args)
    if "--help" in args or "-h" in args:
        return _help(overrides)
    if "--cfg" in args or "-c" in args:  # Hydra prints the config and runs nothing: refuse what a run would refuse
        from launchers import check

        _one_config(overrides)
        check(_compose(overrides))
    # Hydra prints composition errors with a hint to set HYDRA_FULL_ERROR; the guard prints one paragraph instead.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    sys.argv = [sys.argv[0], *args]
    printing = any(a in ("--cfg", "-c", "--info", "-i") or a.startswith(("--cfg=", "--info=")) for a in args)
    if printing:  # Hydra prints the config itself: redact what it prints
        from trainer.config.secrets import printed_redacted

        with printed_redacted():
            _task()
    else:
        _task()
    _sweep_failures()


def _job(word: str, args: list[str]) -> None:
    from launchers.cloud import job_main

    job_main(word.removeprefix("job-"), args)


def _module_main(module: str) -> Callable[[str, list[str]], None]:
    def run(_word: str, args: list[str]) -> None:
        import importlib

        importlib.import_module(module).main(args)

    return run


def _hosting(word: str, args: list[str]) -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    for chatty in ("httpx", "httpx2"):  # one line per request otherwise
        logging.getLogger(chatty).setLevel(logging.WARNING)
    _module_main(COMMANDS[word].doc)(word, args)


_RUN_USAGE = "hydratune {word} [OVERRIDES...] [--cfg job] [-m SWEEP]"
_JOB_USAGE = "hydratune {word} hydra.run.dir=RUN"
#: Every command, in the order ``hydratune --help`` lists them.
COMMANDS: dict[str, Command] = {
    "train": Command("fine-tune, evaluate the base and the fine-tuned model, write the report", _RUN_USAGE, _run, own_help=True),
    "prepare": Command("validate the dataset, print statistics, fill the preprocessing cache (no training)", _RUN_USAGE, _run, own_help=True),
    "eval": Command("evaluate the configured model (no training)", _RUN_USAGE, _run, own_help=True),
    "record": Command(
        "a model's answers to the dataset's prompts, written as a chat JSONL dataset", "hydratune record [OVERRIDES...]",
        _module_main("launchers.cloud.record"), doc="launchers.cloud.record",
    ),
    "report": Command(
        "rebuild a run's or a sweep's report; compare several runs side by side", "hydratune report DIR [DIR...] [--out FILE]",
        _module_main("trainer.report.command"), own_help=True,
    ),
    "serve": Command(
        "serve a finished run behind an OpenAI-compatible endpoint", "hydratune serve hydra.run.dir=RUN [serve.*=...] [--bench]",
        _hosting, doc="trainer.hosting.serve",
    ),
    "export": Command(
        "write a finished run as a merged model folder (optionally GGUF, optionally pushed)", "hydratune export hydra.run.dir=RUN [export.*=...]",
        _hosting, doc="trainer.hosting.export",
    ),
    "import": Command(
        "convert a LLaMA-Factory, Axolotl or AutoTrain config (or dataset_info.json) for hydratune", "hydratune import CONFIG.yaml|dataset_info.json [--out FILE|DIR] [--force]",
        _module_main("trainer.tools.importer"), own_help=True,
    ),
    "convert-autotrain": Command(
        "the AutoTrain part of `hydratune import` (kept for existing scripts)", "hydratune convert-autotrain CONFIG.yaml [--out FILE]",
        _module_main("trainer.tools.autotrain"), own_help=True,
    ),
    "job-status": Command("print the state of the provider job a cloud run recorded", _JOB_USAGE, _job, doc="launchers.cloud.job_cli"),
    "job-attach": Command("follow the recorded provider job to its end, then evaluate it", _JOB_USAGE, _job, doc="launchers.cloud.job_cli"),
    "job-cancel": Command("cancel the recorded provider job", _JOB_USAGE, _job, doc="launchers.cloud.job_cli"),
}  # fmt: skip


def command_lines() -> str:
    """One line per command, for ``hydratune --help``."""
    width = max(map(len, COMMANDS))
    return "\n".join(f"  {word.ljust(width)}  {command.summary}" for word, command in COMMANDS.items())


def _command_help(word: str, command: Command) -> None:
    """``hydratune COMMAND --help``: its usage and its module's docstring, read without importing it."""
    import ast
    import importlib.util

    text = f"Usage: {command.usage.format(word=word)}\n\n{command.summary[0].upper()}{command.summary[1:]}.\n"
    spec = importlib.util.find_spec(command.doc) if command.doc else None
    if spec and spec.origin:
        with open(spec.origin, encoding="utf-8") as f:
            doc = ast.get_docstring(ast.parse(f.read()))
        if doc:
            text += f"\n{doc}\n"
    sys.stdout.write(text)


def _pass_through(arg: str) -> str:
    """``train.max_steps=5`` -> ``++train.max_steps=5``: library pass-through nodes (train, method.peft,
    method.quantization, objective.args) take any of the library's arguments, listed in the default config or not;
    trainer.config.checks then checks the name and type. ``~method.quantization`` (a schema field that may be null,
    which Hydra cannot delete from a structured config) -> ``method.quantization=null``."""
    if arg.startswith(_PASS_THROUGH) and "=" in arg:
        return "++" + arg
    if arg.startswith("~") and "=" not in arg and schema.nullable(arg[1:]):
        return f"{arg[1:]}=null"
    return arg


def _help(overrides: list[str]) -> None:
    """``hydratune --help``: the commands, the groups and their options, then the config these overrides compose.
    Hydra's own help deep-copies its config repository once per listed group (most of 4 s here); this composes once."""
    from importlib import resources

    import yaml
    from omegaconf import OmegaConf

    conf = resources.files("trainer.conf")
    groups = sorted(d.name for d in conf.iterdir() if d.is_dir() and d.name not in ("hydra", "__pycache__"))
    listing = "\n".join(
        f"{group}: {', '.join(sorted(f.name[:-5] for f in (conf / group).iterdir() if f.name.endswith('.yaml')))}"
        for group in groups
    )
    cfg = _compose(overrides)
    listing += "\n"  # as Hydra's page
    text = yaml.safe_load((conf / "hydra" / "help" / "hydratune.yaml").read_text())
    header = text["header"].replace("$COMMANDS", command_lines())
    page = text["template"].replace("${hydra.help.header}", header)
    page = page.replace("${hydra.help.footer}", text["footer"]).replace("$APP_CONFIG_GROUPS", listing)
    from trainer.config.secrets import redact_yaml_text

    sys.stdout.write(page.replace("$CONFIG", redact_yaml_text(OmegaConf.to_yaml(cfg))) + "\n")


def _compose(overrides: list[str]) -> DictConfig:
    """The config these overrides compose, outside a run (composition errors reach the guard)."""
    return schema.compose(overrides)


def _overrides(args: list[str]) -> list[str]:
    """The overrides among Hydra's command-line flags (``--cfg job``, ``-p PACKAGE``, ``--resolve`` ...)."""
    flags_with_value = (
        *("--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp"),
        *("--config-dir", "-cd", "--experimental-rerun"),
    )
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in flags_with_value
        else:
            out.append(arg)
    return out


def _search_path(args: list[str]) -> list[str]:
    """``--config-dir DIR`` (``-cd``) as the override that adds it to the compose API's search path (a missing
    folder is a UserError), so that ``--help`` and ``--cfg`` find the groups it holds, as the run does."""
    folders = [b for a, b in zip(args, args[1:], strict=False) if a in ("--config-dir", "-cd")]
    folders += [a.split("=", 1)[1] for a in args if a.startswith(("--config-dir=", "-cd="))]
    for folder in folders:
        if not Path(folder).expanduser().is_dir():
            raise UserError(
                f"--config-dir {folder}: no such folder. It names a folder of your own config options, searched "
                "before hydratune's (experiment/NAME.yaml, model/NAME.yaml, dataset/NAME.yaml ...): create it or "
                "fix the path."
            )
    uris = ", ".join(f"file://{Path(folder).expanduser().resolve()}" for folder in folders)
    return [f"hydra.searchpath=[{uris}]"] if folders else []


def _one_config(overrides: list[str]) -> None:
    """``--cfg`` prints one run's config: a sweep on the command line (``method=lora,dora``) has several."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeps = [o for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()]
    if sweeps:
        shown = " ".join((o.input_line or "").lstrip("+") for o in sweeps)
        raise UserError(
            f"--cfg prints the config of one run, but {shown} sweeps several values (one run each). Give each key one "
            f"value ({sweeps[0].key_or_group}={_first(sweeps[0])}) to see that run's config; each run of "
            "`hydratune -m ...` (without --cfg) is checked when it starts."
        )


def _first(override) -> str:
    values = list(override.sweep_string_iterator()) if override.is_discrete_sweep() else []
    return values[0] if values else "VALUE"


def _is_composition_error(exc: BaseException) -> bool:
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    composing = HydraException | OmegaConfBaseException | yaml.MarkedYAMLError  # a config file that is not YAML
    return isinstance(exc, composing) and not isinstance(exc, UserError)


def _sweep_failures() -> None:
    from trainer.report.sweeps import FAILED

    if FAILED:
        sys.stderr.write(
            f"hydratune: {len(FAILED)} run(s) of the sweep did not finish ok: {', '.join(FAILED)}. The others finished; "
            "see summary.md in the sweep dir and status.json in each run dir.\n"
        )
        raise SystemExit(1)


def _interrupted(run_dir: str | None) -> NoReturn:
    where = f" {run_dir}/status.json says 'interrupted';" if run_dir else ""
    sys.stderr.write(
        f"hydratune: interrupted.{where} run the same command again to resume from the last complete checkpoint.\n"
    )
    raise SystemExit(130)


def _fail(message: str, at_once: bool = False) -> NoReturn:
    """The one-paragraph error and exit 2; ``at_once``: out of memory, so the libraries' exit hooks (torch's
    compile-time summary), which would run out of memory too, are not run."""
    from trainer.config.secrets import redact_text

    sys.stderr.write(f"hydratune: error: {redact_text(message)}\n")
    if at_once:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
