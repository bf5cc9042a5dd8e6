import pytest

from adcli.calibrate import calibrate
from adcli.recipe import load_recipe
from adcli.train import train


@pytest.fixture(scope="session")
def model(prepared, tmp_path_factory):
    """A calibrated DiffusionAD `test` model of the demo data (tests that change it copy it first)."""
    run = train(prepared, tmp_path_factory.mktemp("insp") / "run", load_recipe("diffusionad", "test"), device="cpu")
    calibrate(run, prepared, 0.05, device="cpu")
    return run
