"""The installed package works outside the checkout: recipes inside the wheel, no path into the repo."""

import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_for_the_wheel():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "adcli").rglob("__init__.py")}
    assert found | {"adcli.recipes"} == listed


@pytest.mark.slow
def test_wheel_trains_calibrates_and_inspects_from_an_empty_folder(tmp_path, demo_root):
    """Build the wheel, install it alone into a fresh venv (dependencies reached through a path entry,
    not the editable install), and run the CLI in an empty folder with a built-in recipe."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(REPO)], check=True, capture_output=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    *map(str, wheels.glob("adcli-*.whl"))], check=True, capture_output=True)
    # The test environment's packages (torch, ...) without its editable adcli: a plain path entry
    # does not run the .pth finder that points at the checkout.
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def adcli(*args, ok=(0,)):
        done = subprocess.run([str(venv / "bin" / "adcli"), *args], cwd=work, env=env, capture_output=True, text=True)
        assert done.returncode in ok, done.stderr[-2000:]
        return done

    where = subprocess.run([str(python), "-c", "import adcli; print(adcli.__file__)"], cwd=work, env=env,
                           check=True, capture_output=True, text=True).stdout
    assert where.startswith(str(venv)), where  # the wheel's copy, not the checkout
    adcli("prepare", str(demo_root), "--out", "prepared", "--calib-fraction", "0.25")
    adcli("train", "--recipe", "knn", "--profile", "test", "--data", "prepared", "--out", "run")
    adcli("calibrate", "run", "--data", "prepared", "--target-fpr", "0.2")
    done = adcli("inspect", str(demo_root / "disc" / "test"), "--model", "run", "--out", "inspected",
                 "--category", "disc", ok=(0, 1))
    assert "Speed:" in done.stderr
    assert (work / "inspected" / "results.csv").read_text().count("\n") == 1 + len(list((demo_root / "disc" / "test").rglob("*.png")))
