"""What `pip install hydratune` puts on the import path: trainer and launchers, the YAML as trainer.conf's package
data, and no generic top-level name such as `conf` that would shadow a user's own package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the hydratune wheel (built from this tree) installed, dependencies left out."""
    root = tmp_path_factory.mktemp("pkg")
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(root),
        str(REPO),
    ]
    subprocess.run(build, check=True, capture_output=True)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    wheel = next(root.glob("hydratune-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "trainer/conf/config.yaml" in names and "trainer/conf/hydra/help/hydratune.yaml" in names
    assert not any(n.startswith("conf/") for n in names)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(pip, check=True, capture_output=True)
    return venv / "bin" / "python"


@pytest.mark.slow
def test_conf_is_not_importable_after_install(installed, tmp_path):
    result = subprocess.run([str(installed), "-c", "import conf"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0 and "No module named 'conf'" in result.stderr
    shipped = (
        "from importlib import resources; f = resources.files('trainer.conf'); "
        "print(sorted(p.name for p in (f / 'method').iterdir()))"
    )
    result = subprocess.run([str(installed), "-c", shipped], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0 and "lora.yaml" in result.stdout, result.stderr


@pytest.mark.slow
def test_a_users_own_conf_package_is_the_one_imported(installed, tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "__init__.py").write_text("OWNER = 'the user'\n")
    (tmp_path / "script.py").write_text("import conf\nimport trainer.conf\nprint(conf.OWNER)\n")
    result = subprocess.run([str(installed), "script.py"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "the user"
