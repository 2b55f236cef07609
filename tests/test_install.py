"""converters/ sits at the top of the checkout and installs as `tflm_swap.converters`: importable
after `pip install .` (a copy in site-packages) and after `pip install -e .` (the checkout itself)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = ("import tflm_swap, tflm_swap.converters, tflm_swap.converters.graph, tflm_swap.native as n; "
         "print(tflm_swap.converters.__file__); print(n.native_library() is not None)")


def _probe(env_path: str | None, cwd: Path) -> list[str]:
    env = {**os.environ, "PYTHONPATH": env_path} if env_path else None
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_converters_import_from_the_installed_package(tmp_path: Path) -> None:
    """The environment the tests run in (CI: `pip install -e`), seen from outside the checkout."""
    converters_file, has_native = _probe(None, tmp_path)
    assert Path(converters_file).parent.name == "converters"
    assert has_native == "True"


@pytest.mark.native
def test_pip_install_copies_converters_into_the_package(tmp_path: Path) -> None:
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"pip cannot build here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    converters_file, has_native = _probe(str(target), tmp_path)
    assert Path(converters_file) == target / "tflm_swap" / "converters" / "__init__.py"
    assert has_native == "True"


def test_every_micro_source_is_packaged() -> None:
    """A wheel carries delegates/micro and delegates/common as data files (setup.cfg): a source the
    micro target uses but the list forgets works from a checkout and breaks an installed package."""
    import configparser

    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    listed = {line.strip() for value in config["options.data_files"].values() for line in value.splitlines()}
    sources = {str(p.relative_to(REPO)) for d in ("delegates/micro", "delegates/common") for p in (REPO / d).rglob("*")
               if p.is_file() and p.suffix in (".c", ".cc", ".h", ".in", ".cmake", ".ld")}
    assert sources - listed == set()
