import csv

import numpy as np
import pytest
import torch

from adcli.bundle.model_bundle import Bundle
from adcli.commands.inspect import inspect_folder
from adcli.model.recipe import load_recipe
from adcli.commands.train import train
from tests.conftest import FakeTrainImages


def test_knn_bank_bundle_and_inspect(prepared, demo_root, tmp_path, mobilenet_weights):
    recipe = load_recipe("knn", "test", [f"backbone.weights={mobilenet_weights}"])
    run = train(prepared, tmp_path / "run", recipe, device="cpu")
    model, meta = Bundle(run).load_model()
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

    from adcli.model.nets import weights as W

    with pytest.raises(W.WeightsNotFound, match="adcli weights pull mobilenet_v2"):
        train(prepared, tmp_path / "run", load_recipe("knn", "test"), device="cpu")
    assert not (tmp_path / "run").exists()  # a retry is not blocked by a half-made run folder


def test_patch_averages_count_the_zero_padding_at_borders(mobilenet_weights):
    """As PatchCore's reference code: a corner cell averages 4 real cells over 9, an edge cell 6 over 9."""
    from adcli.model.methods.knn import Knn

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
    from adcli.model.methods.knn import Knn

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
    from adcli.model.methods.knn import nearest_distances

    g = torch.Generator().manual_seed(0)
    query, bank = torch.randn(50, 8, generator=g), torch.randn(30, 8, generator=g) * 2
    want = torch.cdist(query, bank).amin(dim=1)
    torch.testing.assert_close(nearest_distances(query, bank, bank.square().sum(dim=1)), want)
    assert nearest_distances(query[:1], bank[:1], bank[:1].square().sum(dim=1)).item() >= 0


def _stripes(phase: int, period: int, size: int = 64) -> torch.Tensor:
    """Vertical dark lines every `period` px starting at `phase`: (3, size, size) in [0, 1]."""
    image = torch.full((3, size, size), 0.8)
    image[:, :, phase::period] = 0.2
    return image


def test_bank_shifts_add_the_phases_a_pattern_at_the_stride_lacks(mobilenet_weights):
    """A line pattern whose period is the feature grid's stride: every cell of a training image sees the
    same phase, so a normal image at another phase is far from a bank of that image alone. Shifted views
    (knn.bank_shifts) put that phase in the bank; 1 = PatchCore's bank, the unshifted cells only."""
    from adcli.model.methods.knn import Knn, nearest_distances, shift_offsets

    def bank(shifts):
        recipe = load_recipe("knn", "test", [f"backbone.weights={mobilenet_weights}", f"knn.bank_shifts={shifts}"])
        model = Knn(recipe.config, ["stripes"])
        return model, model._bank_rows(_stripes(0, stride)[None], shift_offsets(shifts))

    stride = 4  # the test profile's first layer, features.3
    plain_model, plain = bank(1)
    cells = plain_model.patch_features(_stripes(0, stride)[None])
    assert cells.shape[-1] == 64 // stride
    assert len(plain) == 1 and torch.equal(plain[0], cells.permute(0, 2, 3, 1).reshape(-1, cells.shape[1]))
    model, shifted = bank(2)
    assert len(shifted) == 4 and torch.equal(shifted[0], plain[0])
    h = cells.shape[-1]
    assert [len(rows) for rows in shifted[1:]] == [h * (h - 2), (h - 2) * h, (h - 2) ** 2]  # edge cells left out
    query = model.patch_features(_stripes(stride // 2, stride)[None])[0, :, 2:-2, 2:-2]  # interior cells
    query = query.flatten(1).T
    far = nearest_distances(query, plain[0], plain[0].square().sum(1))
    rows = torch.cat(shifted)
    near = nearest_distances(query, rows, rows.square().sum(1))
    assert near.max() < far.min() / 4  # not 0: the edge strip reaches the interior through the receptive field


def test_shift_offsets_coarsest_first():
    from adcli.model.methods.knn import shift_offsets

    assert shift_offsets(1) == [(0, 0)]
    offsets = shift_offsets(4)
    assert sorted(offsets) == [(y, x) for y in range(4) for x in range(4)]
    assert offsets[:4] == [(0, 0), (0, 2), (2, 0), (2, 2)]  # half-stride views before quarter-stride ones


def test_bank_views_bound_the_shifted_views_per_category(mobilenet_weights, tmp_path):
    """A category gets bank_views // images views per image (at least its own, at most bank_shifts²); the
    coreset keeps coreset_ratio of the unshifted cells, so the bank is as large as without shifts."""
    from adcli.model.methods.base import StageContext
    from adcli.model.methods.knn import Knn

    recipe = load_recipe("knn", "test", [f"backbone.weights={mobilenet_weights}", "knn.bank_shifts=2", "knn.bank_views=6"])
    model = Knn(recipe.config, ["few", "many"])
    offsets_seen = {}
    bank_rows = model._bank_rows

    def recording(images, offsets):
        offsets_seen[len(images)] = offsets
        return bank_rows(images, offsets)

    model._bank_rows = recording
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    model.fit(FakeTrainImages(images, [0, 0, 1, 1, 1, 1]), StageContext.silent("cpu", tmp_path))
    assert offsets_seen == {2: [(0, 0), (0, 1), (1, 0)], 4: [(0, 0)]}  # 6 // 2 = 3 views; 6 // 4 = 1
    cells = model.patch_features(torch.zeros(1, 3, 32, 32)).shape[-1] ** 2
    assert len(model.banks["few"]) == round(0.5 * 2 * cells) and len(model.banks["many"]) == round(0.5 * 4 * cells)


def test_bank_shifts_are_checked():
    from adcli.core.errors import RecipeError

    with pytest.raises(RecipeError, match="--set knn.bank_shifts=0: knn.bank_shifts must be an integer from 1 to 8"):
        load_recipe("knn", "test", ["knn.bank_shifts=0"])
