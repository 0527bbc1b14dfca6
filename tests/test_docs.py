"""The documentation site (docs/, mkdocs.yml) and the README front page: what they claim is checked.

- every schema field has its ``#:`` comment, and the generated config reference documents every field;
- every shell block in the docs carries a marker (run, compose, errors or skip), and each marked block is executed
  on the tiny model (slow tier), composed and checked as ``--cfg job`` does, or its error messages reproduced;
- llms.txt and the README link only to pages that exist.

The strict site build itself (broken links, missing pages) is `make docs`, which `make lint` runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

DOCS = REPO / "docs"
MARKER = re.compile(r"^\s*<!-- test: (run|compose|errors|skip)\b(.*?)-->\s*$")
FENCE = re.compile(r"^(\s*)(```+)\s*(\w*)")
SHELL = ("bash", "sh", "shell", "console")


def _reference():
    """docs/hooks/config_reference.py, imported as MkDocs imports a hook (by its path)."""
    name = "docs_config_reference"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DOCS / "hooks" / "config_reference.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@dataclasses.dataclass
class Block:
    page: str
    line: int
    kind: str  # run, compose, errors, skip; "" for an unmarked block
    language: str
    text: str
    note: str = ""  # what follows the marker's kind: a skip's (reason)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Every fenced block of a Markdown page, with the marker comment right above it (if any)."""
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, ticks, language = fence.groups()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(ticks):
            j += 1
        above = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marker = MARKER.match(above)
        body = textwrap.dedent("\n".join(lines[i + 1 : j]))
        rel = str(page.relative_to(REPO))
        kind, note = (marker.group(1), marker.group(2).strip()) if marker else ("", "")
        found.append(Block(rel, i + 1, kind, language, body, note))
        i = j + 1
    return found


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def all_blocks(kind: str) -> list[Block]:
    return [b for page in pages() for b in blocks(page) if b.kind == kind]


def commands(text: str) -> list[list[str]]:
    """The command lines of a shell block, split as bash splits them (continuation lines and quoted newlines joined,
    comments dropped)."""
    out, pending = [], ""
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # a quote still open: the command goes on on the next line
            continue
        pending = ""
        if words:
            out.append(words)
    assert not pending, f"unbalanced quotes in {text!r}"
    return out


# ---------------------------------------------------------------- the schema and the generated reference


def test_every_schema_field_has_a_comment():
    ref = _reference()
    missing = sorted(
        f"{owner.__name__}.{name}" for owner, name in ref.all_fields() if not ref.field_comments(owner).get(name)
    )
    assert missing == [], f"schema fields without a `#:` comment above them: {missing}"


def test_reference_documents_every_schema_field():
    ref = _reference()
    text, rendered = ref.render()
    fields = ref.all_fields()
    assert len(fields) > 200  # the walk through the ConfigStore found the schema (not an empty set)
    assert rendered == fields
    sections = dict(re.findall(r"\{#(\w+)\}\n(.*?)(?=\n### |\Z)", text, re.S))
    classes = ref.reachable(list(ref.registered().values()))
    for owner, name in fields:
        documenting = [cls for cls in classes if owner in cls.__mro__]
        for cls in documenting:
            nearer = cls.__mro__[: cls.__mro__.index(owner)]
            if any(name in ref.field_comments(c) for c in nearer if c is not owner):
                continue  # a subclass redeclares the field (Together's provider): its own comment is shown there
            row = re.search(rf"^\| `{name}` \|.*\|(.*)\|$", sections[cls.__name__.lower()], re.M)
            assert row, f"{cls.__name__}.{name} is not in the reference"
            assert ref.field_comments(owner)[name].split()[0] in row.group(0)


def test_reference_lists_every_option_of_every_group():
    text, _ = _reference().render()
    conf = REPO / "conf"
    for path in conf.glob("*/*.yaml"):
        if path.parent.name == "hydra":
            continue
        assert f"### `{path.parent.name}`" in text
        assert f"| `{path.stem}` |" in text, f"option {path.parent.name}={path.stem} missing from the reference"


def test_reference_picks_up_a_newly_registered_schema():
    """The generator walks the ConfigStore: a schema nobody told it about is documented, with its comments."""
    from hydra.core.config_store import ConfigStore

    @dataclasses.dataclass
    class NestedDocsProbe:
        #: The nested probe's only key.
        depth: int = 3

    @dataclasses.dataclass
    class DocsProbeSchema:
        #: A probe key for the reference test.
        probe_key: str = "x"
        #: A nested block.
        nested: NestedDocsProbe = dataclasses.field(default_factory=NestedDocsProbe)

    sys.modules[DocsProbeSchema.__module__].NestedDocsProbe = NestedDocsProbe  # type hints resolve by module
    store = ConfigStore.instance()
    store.store(group="zz_docs_probe", name="schema_zz_docs_probe", node=DocsProbeSchema)
    try:
        text, rendered = _reference().render()
    finally:
        del store.repo["zz_docs_probe"]
        del sys.modules[DocsProbeSchema.__module__].NestedDocsProbe
    assert (DocsProbeSchema, "probe_key") in rendered and (NestedDocsProbe, "depth") in rendered
    assert "A probe key for the reference test." in text and "The nested probe's only key." in text
    assert "`zz_docs_probe.nested`" in text


def test_the_reference_page_is_generated_at_build_time():
    mkdocs = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    assert "docs/hooks/config_reference.py" in mkdocs["hooks"]
    assert _reference().MARKER in (DOCS / "reference" / "config.md").read_text()


# ---------------------------------------------------------------- shell blocks


def test_every_shell_block_is_marked():
    unmarked = [b.id for page in pages() for b in blocks(page) if b.language in SHELL and not b.kind]
    assert unmarked == [], (
        "shell blocks without a <!-- test: run|compose|skip (why) --> marker right above them: " + ", ".join(unmarked)
    )
    reasonless = [b.id for b in all_blocks("skip") if not re.fullmatch(r"\(.{8,}\)", b.note)]
    assert reasonless == [], f"skip markers without a (reason): {reasonless}"


def test_there_are_blocks_of_every_kind():
    assert len(all_blocks("run")) >= 8
    assert len(all_blocks("compose")) >= 25
    assert len(all_blocks("errors")) >= 4


def _checked(words: list[str]) -> str | None:
    """What `hydratune WORDS --cfg job` reports (None when it composes and passes every check), in process. For a
    sweep, the first value of each swept key; serve, export and record are composed only (they act on a run dir)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from launchers import check
    from trainer.cli import COMMANDS, _overrides, _pass_through
    from trainer.config import schema
    from trainer.config.compose_errors import explain_composition_error
    from trainer.config.errors import UserError

    assert words[0] == "hydratune", f"not a hydratune command: {shlex.join(words)}"
    args = words[1:]
    command = args.pop(0) if args and args[0] in COMMANDS else "train"
    sweep = "-m" in args or "--multirun" in args
    overrides = _overrides(args)
    if sweep:
        parser = OverridesParser.create()
        firsts = []
        for arg in overrides:
            override = parser.parse_overrides([arg])[0]
            if override.is_sweep_override():
                first = next(override.sweep_string_iterator())
                arg = f"{override.get_key_element()}={first}"
            firsts.append(arg)
        overrides = firsts
    try:
        cfg = schema.compose([_pass_through(a) for a in overrides])
        if command in ("train", "prepare", "eval"):
            check(cfg)
    except UserError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - a composition error, explained as the CLI explains it
        return explain_composition_error(exc)
    return None


@pytest.mark.slow  # composing imports the libraries whose signatures it checks: seconds a block on a busy machine
@pytest.mark.parametrize("block", all_blocks("compose"), ids=lambda b: b.id)
def test_compose_block(block: Block, monkeypatch):
    for name in (
        "OPENAI_API_KEY",
        "TOGETHER_API_KEY",
        "FIREWORKS_API_KEY",
        "AZURE_OPENAI_API_KEY",
        "AZURE_OPENAI_ENDPOINT",
    ):
        monkeypatch.setenv(name, f"docs-test-{name.lower()}")  # the pages say to export them first
    found = commands(block.text)
    assert found, f"{block.id}: a compose block without a hydratune command"
    for words in found:
        error = _checked(words)
        assert error is None, f"{block.id}: `{shlex.join(words)}` does not compose: {error}"


@pytest.mark.parametrize("block", all_blocks("errors"), ids=lambda b: b.id)
def test_error_block(block: Block, monkeypatch):
    monkeypatch.delenv("NOPE_KEY", raising=False)
    lines = block.text.splitlines()
    pairs = [(lines[i], lines[i + 1]) for i in range(0, len(lines) - 1, 2)]
    assert pairs and len(lines) == 2 * len(pairs), f"{block.id}: expected `$ command` / `hydratune: error:` pairs"
    for command, message in pairs:
        assert command.startswith("$ hydratune ") and message.startswith("hydratune: error: ")
        shown = message.removeprefix("hydratune: error: ").removesuffix("...").strip()
        error = _checked(shlex.split(command[2:]))
        assert error is not None, f"{block.id}: `{command[2:]}` composes; the page says it fails"
        assert error.startswith(shown), f"{block.id}: `{command[2:]}` says\n  {error}\nthe page shows\n  {shown}"


def _run_pages() -> list[str]:
    return sorted({b.page for b in all_blocks("run")})


@pytest.mark.slow
@pytest.mark.parametrize("page", _run_pages())
def test_run_blocks(page: str, tmp_path: Path, cache_dir: Path):
    """A page's run blocks, in order, as bash scripts in one scratch directory, on the tiny model."""
    from tests import warm

    bins = f"{warm.command_dir(tmp_path.parent / f'{tmp_path.name}-bin')}{os.pathsep}{Path(sys.executable).parent}"  # hydratune, then python
    env = {
        **os.environ,
        "PATH": f"{bins}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "HYDRATUNE_CACHE": str(cache_dir),
    }
    for block in [b for b in blocks(REPO / page) if b.kind == "run"]:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.text],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, (
            f"{block.id} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )


# ---------------------------------------------------------------- links outside the Markdown build


def _nav_pages() -> set[str]:
    def walk(node) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [p for item in node for p in walk(item)]
        return [p for value in node.values() for p in walk(value)]

    return set(walk(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]))


def test_every_page_is_in_the_nav():
    on_disk = {str(p.relative_to(DOCS)) for p in pages()}
    assert on_disk == _nav_pages()


def test_llms_txt_links_to_pages_that_exist():
    links = re.findall(r"\]\(([^)]+)\)", (DOCS / "llms.txt").read_text())
    assert links
    for link in links:
        assert f"{link.rstrip('/')}.md" in _nav_pages(), link


def test_readme_is_a_front_page_whose_links_resolve():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    links = [link for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme) if "://" not in link]
    assert len(links) >= 10
    for link in links:
        assert (REPO / link).exists(), f"README links to {link}, which does not exist"
