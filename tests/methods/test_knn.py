import csv

import pytest
import torch

from adcli.run import RunFolder
from adcli.inspect import inspect_folder
from adcli.recipe import load_recipe
from adcli.train import train


def test_knn_bank_bundle_and_inspect(prepared, demo_root, tmp_path, mobilenet_weights):
    recipe = load_recipe("knn", "test", [f"backbone.weights={mobilenet_weights}"])
    run = train(prepared, tmp_path / "run", recipe, device="cpu")
    model, meta = RunFolder(run).load_model()
    assert meta["method"] == "knn" and set(model.banks) == {"disc", "weave"}
    # 8 train images × 8×8 patches, half kept by the coreset
    assert model.banks["disc"].shape == (256, 24 + 32)
    # a training image is (almost) its own nearest neighbour: its score is lower than a defect's
    images = torch.stack([torch.ones(3, 32, 32) * 0.5, torch.rand(3, 32, 32)])
    out = model.predict(images, torch.tensor([0, 0]))
    assert out.anomaly_map.shape == (2, 32, 32) and out.score.shape == (2,)
    # PatchCore's image score: the largest patch distance, not the peak of the smoothed map (lower)
    assert (out.score > out.anomaly_map.flatten(1).amax(dim=1)).all()
    summary = inspect_folder(demo_root / "disc" / "test", run, tmp_path / "out", category="disc", device="cpu", settle_seconds=0,
                            scores_only=True)
    with open(tmp_path / "out" / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 5 and summary.errors == 0


def test_missing_weights_fail_before_anything_is_written(prepared, tmp_path, no_weights):
    import pytest

    from adcli.nets import weights as W

    with pytest.raises(W.WeightsNotFound, match="adcli weights pull mobilenet_v2"):
        train(prepared, tmp_path / "run", load_recipe("knn", "test"), device="cpu")
    assert not (tmp_path / "run").exists()  # a retry is not blocked by a half-made run folder


def test_patch_averages_count_the_zero_padding_at_borders(mobilenet_weights):
    """As PatchCore's reference code: a corner cell averages 4 real cells over 9, an edge cell 6 over 9."""
    from adcli.methods.knn import Knn

    recipe = load_recipe("knn", "test", [f"backbone.weights={mobilenet_weights}"])
    model = Knn(recipe.config, ["disc"])

    class ConstantFeatures(torch.nn.Module):
        def forward(self, images):
            return [torch.ones(1, 2, 4, 4)]  # one layer, a constant feature map

    model.backbone = ConstantFeatures()
    feats = model.patch_features(torch.zeros(1, 3, 32, 32))[0, 0]  # (h, w)
    assert feats[0, 0] == pytest.approx(4 / 9) and feats[0, 1] == pytest.approx(6 / 9) and feats[1, 1] == 1.0
