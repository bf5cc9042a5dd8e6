import sys
import time

import numpy as np
import pytest
from PIL import Image

from adcli.data.demo import generate_demo
from adcli.data.manifest import prepare, write_prepared


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A tiny MVTec-layout dataset (two categories, 32 px), generated once per test session."""
    out = tmp_path_factory.mktemp("demo")
    return generate_demo(out, size=32, n_train=8, n_test_good=2, n_per_defect=1, seed=0)


@pytest.fixture(scope="session")
def prepared(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    write_prepared(prepare(demo_root, calib_fraction=0.25), out)
    return out


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """No real caches, no packaged weights: every weights location is an empty temporary folder."""
    from adcli.model.nets import weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("ADCLI_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr(weights, "OFFLINE_PACKAGES", {})
    return tmp_path


def save_png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array), mode=mode).save(path)
    return path


@pytest.fixture(scope="session")
def mobilenet_weights(tmp_path_factory):
    """A random MobileNetV2 state dict on disk: backbone recipes load it without any real weights."""
    import torch
    import torchvision

    path = tmp_path_factory.mktemp("weights") / "mnv2.pth"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.save(torchvision.models.mobilenet_v2().state_dict(), path)
    return path


def recipe_with_weights(name, weights, overrides=()):
    """The `test` profile of a built-in recipe, pointed at local backbone weights where it has a backbone."""
    from adcli.model.recipe import load_recipe, recipes_dir, resolve_tree

    tree = resolve_tree(recipes_dir() / f"{name}.yaml", "test")
    extra = [f"backbone.weights={weights}"] if "backbone" in tree else []
    return load_recipe(name, "test", [*extra, *overrides])


def interrupt_on_call(monkeypatch, owner, name: str, call: int) -> None:
    """Make `owner.name` (a stage's loss function) raise KeyboardInterrupt on its `call`-th call — a run
    killed mid-stage; `monkeypatch.undo()` (or the test's end) restores it."""
    original, calls = getattr(owner, name), {"n": 0}

    def dies(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, dies)


class FakeTrainImages:
    """TrainImages' interface over given uint8 (N, H, W, 3) images and their category ids, for fit stages
    and batches without a prepared dataset."""

    def __init__(self, images: np.ndarray, category_ids, categories=()):
        self.images, self.category_ids, self.categories = images, np.asarray(category_ids), list(categories)

    def __len__(self):
        return len(self.images)

    def of_category(self, index):
        return self.images[self.category_ids == index]

    def batch(self, indices, rng, synthesizer):
        from adcli.data.batches import TrainImages

        return TrainImages.batch(self, indices, rng, synthesizer)


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    """Poll `condition` until it holds (a watcher's thread or subprocess got there), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def without_test_profile_line(err: str) -> str:
    """The test models are trained with the `test` profile, so calibrate and inspect say so in one warning
    line first (tests/test_pipeline.py tests that line); tests that count the lines after it drop it."""
    return "".join(line for line in err.splitlines(keepends=True) if "was trained with the test profile" not in line)


def run_cli(args, monkeypatch, capsys) -> tuple[int | None, str]:
    """`adcli ARGS` in this process -> (exit code, stderr without the test-profile line)."""
    from adcli.cli import main

    capsys.readouterr()  # what came before
    monkeypatch.setattr(sys, "argv", ["adcli", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, without_test_profile_line(capsys.readouterr().err)
