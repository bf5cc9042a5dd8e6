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


def test_export_graph_with_padded_banks_equals_predict(mobilenet_weights):
    """The export form (banks of unequal size padded into one tensor, chosen by index) finds the same
    nearest patches as the per-image loop, for every category in one batch."""
    from adcli.methods.knn import Knn

    recipe = load_recipe("knn", "test", [f"backbone.weights={mobilenet_weights}"])
    model = Knn(recipe.config, ["a", "b", "c"]).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 32, 32, generator=g)
    with torch.no_grad():
        d = model.patch_features(images[:1]).shape[1]
    for cat, rows in zip(model.categories, (5, 40, 17)):  # padding rows must never be a nearest neighbour
        model.banks[cat] = torch.nn.Parameter(torch.randn(rows, d, generator=g), requires_grad=False)
    graph = model.scoring_graph()
    # mixed (cut to the longest bank present), one short bank alone (no padding at all), two short banks
    for ids in (torch.tensor([0, 1, 2, 2, 1, 0]), torch.tensor([0, 0, 0]), torch.tensor([2, 0, 2])):
        with torch.no_grad():
            want = model.predict(images[:len(ids)], ids)
            maps, scores = graph(images[:len(ids)], ids)
        torch.testing.assert_close(scores, want.score, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(maps, want.anomaly_map, rtol=1e-5, atol=1e-5)


def test_nearest_distances_against_cdist():
    from adcli.methods.knn import nearest_distances

    g = torch.Generator().manual_seed(0)
    query, bank = torch.randn(50, 8, generator=g), torch.randn(30, 8, generator=g) * 2
    want = torch.cdist(query, bank).amin(dim=1)
    torch.testing.assert_close(nearest_distances(query, bank, bank.square().sum(dim=1)), want)
    assert nearest_distances(query[:1], bank[:1], bank[:1].square().sum(dim=1)).item() >= 0
