"""uniad: UniAD as its own recipe (the base model of DRDC)."""

import csv

import pytest
import torch

from adcli.model.methods.uniad import UniAD
from adcli.model.recipe import load_recipe
from adcli.model.registry import get_method
from adcli.bundle.model_bundle import Bundle
from adcli.commands.train import train


def test_registered_with_the_authors_settings(no_weights):
    assert get_method("uniad").method_cls is UniAD
    c = load_recipe("uniad").config
    r, t = c.reconstruction, c.train
    assert (c.data.image_size, c.backbone.name, r.grid, r.hidden_dim, r.heads, r.encoder_layers, r.decoder_layers) == \
        (224, "efficientnet_b4", 14, 256, 8, 4, 4)
    assert (r.feedforward, r.dropout, r.neighbour, r.mask, r.jitter_scale, r.jitter_prob) == (1024, 0.1, 7, (True, True, True), 20.0, 1.0)
    assert (t.epochs, t.batch_size, t.lr, t.weight_decay, t.lr_drop_epoch, t.clip_grad_norm, c.scoring.pool_kernel) == \
        (1000, 8, 1e-4, 1e-4, 800, 0.1, 16)
    for profile in ("cpu", "demo", "test"):
        load_recipe("uniad", profile)


def test_trains_with_adamw_clipping_and_the_lr_drop(prepared, mobilenet_weights, tmp_path, monkeypatch):
    made, clipped = [], []

    class SpyAdamW(torch.optim.AdamW):
        def __init__(self, groups, *args, **kwargs):
            made.append(groups)
            super().__init__(groups, *args, **kwargs)
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy_clip(params, max_norm, *args, **kwargs):
        clipped.append(max_norm)
        return real_clip(params, max_norm, *args, **kwargs)
    monkeypatch.setattr(torch.optim, "AdamW", SpyAdamW)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy_clip)

    run = train(prepared, tmp_path / "run", load_recipe("uniad", "test", [f"backbone.weights={mobilenet_weights}"]), device="cpu")
    assert len(made) == 1 and made[0][0]["weight_decay"] == 1e-4 and clipped and set(clipped) == {0.1}
    with open(run / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-4, 1e-5])  # x0.1 from epoch lr_drop_epoch + 1
    assert (run / "stages" / "base.safetensors").is_file()

    model, _ = Bundle(run).load_model()
    images = torch.rand(2, 3, 32, 32)
    out = model.predict(images, torch.tensor([0, 1]))
    features = model.base.align(images)
    distance = (model.base.reconstructor(features) - features).norm(dim=1)
    assert out.anomaly_map.shape == (2, 32, 32)
    assert torch.allclose(out.anomaly_map[:, 0, 0], distance[:, 0, 0])  # corners aligned: the grid's corner cell
    assert torch.allclose(out.score, torch.nn.functional.avg_pool2d(out.anomaly_map[:, None], 4, stride=1).flatten(1).amax(1))


def test_standardised_image_score_is_fitted_after_the_base_stage(prepared, mobilenet_weights, tmp_path):
    from adcli.data.batches import TrainImages
    from adcli.data.manifest import load_manifest
    from adcli.core.errors import RecipeError
    from adcli.model.postprocess import evenly_spaced
    from adcli.model.score_maps import pixel_statistics

    with pytest.raises(RecipeError, match="scoring.normal_images must be >= 2"):
        load_recipe("uniad", "test", ["scoring.image_score=standardised", "scoring.normal_images=1"])
    plain = train(prepared, tmp_path / "plain", load_recipe("uniad", "test", [f"backbone.weights={mobilenet_weights}"]), device="cpu")
    recipe = load_recipe("uniad", "test", [f"backbone.weights={mobilenet_weights}", "scoring.image_score=standardised",
                                            "scoring.normal_images=3"])
    z = train(prepared, tmp_path / "z", recipe, device="cpu", stages_from=plain)
    assert sorted(p.name for p in (z / "stages").iterdir()) == ["base.safetensors", "score_scale.safetensors"]
    model, meta = Bundle(z).load_model()
    plain_model, _ = Bundle(plain).load_model()
    assert all(torch.equal(v, plain_model.state_dict()[k]) for k, v in model.state_dict().items() if k.startswith("base."))
    cats = meta["categories"]
    data = TrainImages([s for s in load_manifest(prepared) if s.split == "train" and s.category in cats], cats, 32)
    for c in range(len(cats)):
        with torch.no_grad():
            maps = model.base.anomaly_map(evenly_spaced(data, c, 3))
        mean, spread = pixel_statistics(maps)
        assert torch.allclose(model.map_stats.mean[c], mean, atol=1e-5) and torch.allclose(model.map_stats.spread[c], spread, atol=1e-5)
    images = torch.rand(2, 3, 32, 32)
    ids = torch.tensor([0, 1])
    out, before = model.predict(images, ids), plain_model.predict(images, ids)
    assert torch.equal(out.anomaly_map, before.anomaly_map)  # the map is the plain model's
    z_map = (out.anomaly_map - model.map_stats.mean[ids]) / model.map_stats.spread[ids]
    assert torch.allclose(out.score, torch.nn.functional.avg_pool2d(z_map[:, None], 4, stride=1).flatten(1).amax(1), rtol=1e-5)
