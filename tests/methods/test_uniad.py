"""uniad: UniAD as its own recipe (the base model of DRDC)."""

import csv

import pytest
import torch

from adcli.methods.uniad import UniAD
from adcli.recipe import load_recipe
from adcli.registry import get_method
from adcli.run import RunFolder
from adcli.train import train


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

    model, _ = RunFolder(run).load_model()
    images = torch.rand(2, 3, 32, 32)
    out = model.predict(images, torch.tensor([0, 1]))
    features = model.base.align(images)
    distance = (model.base.reconstructor(features) - features).norm(dim=1)
    assert out.anomaly_map.shape == (2, 32, 32)
    assert torch.allclose(out.anomaly_map[:, 0, 0], distance[:, 0, 0])  # corners aligned: the grid's corner cell
    assert torch.allclose(out.score, torch.nn.functional.avg_pool2d(out.anomaly_map[:, None], 4, stride=1).flatten(1).amax(1))
