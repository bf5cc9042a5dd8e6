"""DRDC on tiny generated data: stages, base reuse from uniad, one UNet call per step, fusion."""

import json

import pytest
import torch

from adcli.core.errors import RecipeError
from adcli.model.methods.drdc import DRDC
from adcli.model.recipe import load_recipe
from adcli.model.registry import get_method
from adcli.bundle.model_bundle import Bundle
from adcli.commands.train import train


def _recipe(name, weights, overrides=()):
    return load_recipe(name, "test", [f"backbone.weights={weights}", *overrides])


@pytest.fixture(scope="module")
def runs(prepared, mobilenet_weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("drdc")
    base = train(prepared, root / "uniad", _recipe("uniad", mobilenet_weights), device="cpu")
    return base, train(prepared, root / "drdc", _recipe("drdc", mobilenet_weights), device="cpu", stages_from=base)


def test_registered_with_the_papers_settings(no_weights):
    assert get_method("drdc").method_cls is DRDC
    c = load_recipe("drdc").config
    assert (c.data.image_size, c.fusion.alpha, c.fusion.sets, c.inference.start_t, c.inference.steps) == (224, 0.9, 2, 250, 10)
    assert (c.backbone.name, c.reconstruction.grid, c.reconstruction.neighbour) == ("efficientnet_b4", 14, 7)
    assert load_recipe("uniad").config.reconstruction == c.reconstruction and load_recipe("uniad").config.train == c.train
    for profile in ("cpu", "demo", "test"):
        load_recipe("drdc", profile)
    uniad_cpu, drdc_cpu = load_recipe("uniad", "cpu").config, load_recipe("drdc", "cpu").config
    assert (uniad_cpu.data, uniad_cpu.backbone, uniad_cpu.reconstruction, uniad_cpu.train) == \
        (drdc_cpu.data, drdc_cpu.backbone, drdc_cpu.reconstruction, drdc_cpu.train)  # a uniad cpu run serves DRDC's base


def test_bad_settings_are_named():
    with pytest.raises(RecipeError, match="does not divide"):
        load_recipe("drdc", "test", ["fusion.grid_sizes=[5]"])
    with pytest.raises(RecipeError, match="alpha"):
        load_recipe("drdc", "test", ["fusion.alpha=1.5"])


def test_base_stage_reused_from_uniad_and_calls_in_meta(runs):
    base, drdc = runs
    log = (drdc / "train.log").read_text()
    assert "stage base: reusing" in log
    seconds = json.loads((drdc / "meta.json").read_text())["stage_seconds"]
    assert seconds["base"] == json.loads((base / "meta.json").read_text())["stage_seconds"]["base"]
    meta = json.loads((drdc / "meta.json").read_text())
    assert meta["unet_calls_per_image"] == 3 * 2 * 2  # steps × sets × grid sizes
    assert "12 UNet calls per image" in log


def test_one_unet_call_per_step_for_all_sets_grids_and_images(runs):
    model, _ = Bundle(runs[1]).load_model()
    rows = []
    model.refine.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    images = torch.rand(3, 3, 32, 32)
    out = model.predict(images, torch.tensor([0, 1, 0]))
    assert rows == [3 * 2 * 2] * 3  # 3 DDIM steps, each one call on images × sets × grid sizes
    assert out.anomaly_map.shape == (3, 32, 32) and torch.isfinite(out.score).all()
    assert torch.equal(model.predict(images, torch.tensor([0, 1, 0])).score, out.score)  # fixed noise: same score


def test_fusion_weighs_each_map_in_its_training_normal_unit(runs, monkeypatch):
    model, _ = Bundle(runs[1]).load_model()
    assert (model.base_unit > 0).all() and (model.refine_unit > 0).all() and not torch.equal(model.base_unit, torch.ones(2))
    model.base_unit.copy_(torch.tensor([2.0, 4.0]))
    model.refine_unit.copy_(torch.tensor([0.5, 1.0]))
    monkeypatch.setattr(model.base, "anomaly_map", lambda images: torch.full((len(images), 32, 32), 8.0))
    monkeypatch.setattr(model, "refinement_map", lambda images: torch.full((len(images), 32, 32), 3.0))
    out = model.predict(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
    expected = torch.tensor([0.9 * 3.0 / 0.5 + 0.1 * 8.0 / 2.0, 0.9 * 3.0 / 1.0 + 0.1 * 8.0 / 4.0])
    assert torch.allclose(out.anomaly_map[:, 5, 5], expected) and torch.allclose(out.score, expected)


def test_refine_training_draws_timesteps_below_t_max(mobilenet_weights, monkeypatch):
    from types import SimpleNamespace

    from adcli.model.diffusion.schedules import NoiseSchedule
    model = DRDC(_recipe("drdc", mobilenet_weights, ["refine.t_max=5"]).config, ["a"])
    seen, real = [], NoiseSchedule.q_sample

    def spy(self, x0, t, noise):
        seen.append(t)
        return real(self, x0, t, noise)
    monkeypatch.setattr(NoiseSchedule, "q_sample", spy)
    losses = model._refine_losses(SimpleNamespace(originals=torch.rand(16, 3, 32, 32)), torch.Generator().manual_seed(0))
    assert torch.isfinite(losses["loss"]) and int(seen[0].max()) < 5 and len(seen[0]) == 16


def test_inspect_says_how_many_unet_calls_an_image_costs(runs, demo_root, tmp_path):
    from io import StringIO

    from rich.console import Console

    from adcli.commands.inspect import inspect_folder
    said = StringIO()
    inspect_folder(demo_root / "disc" / "test", runs[1], tmp_path / "out", category="disc", device="cpu", settle_seconds=0,
                   scores_only=True, console=Console(file=said, width=200))
    assert "drdc: 12 UNet calls per image" in said.getvalue()


def test_ddim_starts_from_the_image_noised_to_start_t(runs):
    from adcli.core.device import fixed_noise
    model, _ = Bundle(runs[1]).load_model()
    first = []
    model.refine.register_forward_hook(lambda module, args, out: first.append(args[0][:, :3].clone()) if not first else None)
    images = torch.rand(1, 3, 32, 32)
    model.predict(images, torch.tensor([0]))
    c = model.config
    rows = (images * 2 - 1).repeat_interleave(4, 0)  # 2 grid sizes × 2 sets
    start = torch.full((4,), c.inference.start_t)
    expected = model.schedule.q_sample(rows, start, fixed_noise(c.seed, (1, 3, 32, 32)).expand_as(rows))
    assert torch.allclose(first[0], expected, atol=1e-6)  # every cell, known or not: the image's low frequencies stay


def test_standardised_image_score_is_fitted_after_fusion(runs, prepared, mobilenet_weights, tmp_path):
    from adcli.data.batches import TrainImages
    from adcli.data.manifest import load_manifest
    from adcli.model.postprocess import evenly_spaced
    from adcli.model.score_maps import pixel_statistics, pooled_max

    with pytest.raises(RecipeError, match="scoring.normal_images must be >= 2"):
        _recipe("drdc", mobilenet_weights, ["scoring.image_score=standardised", "scoring.normal_images=1"])
    _, drdc = runs
    z = train(prepared, tmp_path / "z", _recipe("drdc", mobilenet_weights, ["scoring.image_score=standardised",
                                                                            "scoring.normal_images=3"]),
              device="cpu", stages_from=drdc)
    log = (z / "train.log").read_text()
    assert all(f"stage {name}: reusing" in log for name in ("base", "refine", "fusion"))
    model, meta = Bundle(z).load_model()
    plain, _ = Bundle(drdc).load_model()
    cats = meta["categories"]
    data = TrainImages([s for s in load_manifest(prepared) if s.split == "train" and s.category in cats], cats, 32)
    for c in range(len(cats)):
        x = evenly_spaced(data, c, 3)
        with torch.no_grad():
            mean, spread = pixel_statistics(plain.predict(x, torch.full((len(x),), c)).anomaly_map)
        assert torch.allclose(model.map_stats.mean[c], mean, atol=1e-5)
        assert torch.allclose(model.map_stats.spread[c], spread, atol=1e-5)
    images, ids = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    out, before = model.predict(images, ids), plain.predict(images, ids)
    assert torch.equal(out.anomaly_map, before.anomaly_map)  # heatmaps are the plain model's final map
    z_map = (out.anomaly_map - model.map_stats.mean[ids]) / model.map_stats.spread[ids]
    assert torch.allclose(out.score, pooled_max(z_map, model.config.fusion.pool_kernel, 1), rtol=1e-5)
