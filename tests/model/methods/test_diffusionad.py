"""DiffusionAD settings that follow the authors' code (adcli/model/methods/diffusionad.py)."""

import pytest
import torch

from adcli.core.errors import RecipeError
from adcli.model.methods.diffusionad import seg_lr_factor
from adcli.model.recipe import load_recipe


def test_cosine_cycles_follow_pytorchs_cosine_annealing_stepped_per_iteration():
    """The authors' train.py: CosineAnnealingLR(T_max=10, eta_min=0), scheduler.step() after each batch."""
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-5)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10, eta_min=0)
    factor = seg_lr_factor("cosine_cycles", 10, total_steps=1000)
    for step in range(45):  # two full 20-step cycles and a bit
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5 * factor(step), abs=1e-12), step
        optimizer.step()
        scheduler.step()
    assert factor(10) == pytest.approx(0.0) and factor(20) == pytest.approx(1.0)


def test_paper_settings_use_the_cycles_and_small_profiles_keep_one_half_cosine():
    assert load_recipe("diffusionad").config.train.seg_lr_schedule == "cosine_cycles"
    assert load_recipe("diffusionad").config.train.seg_lr_t_max == 10
    for profile in ("cpu", "demo", "test"):
        assert load_recipe("diffusionad", profile).config.train.seg_lr_schedule == "half_cosine"
    half = seg_lr_factor("half_cosine", 10, total_steps=100)
    assert half(0) == 1.0 and half(50) == pytest.approx(0.5) and half(100) == pytest.approx(0.0)
    with pytest.raises(RecipeError, match="seg_lr_schedule must be one of"):
        load_recipe("diffusionad", overrides=["train.seg_lr_schedule=steps"])


def test_bundles_that_stored_seg_cosine_keep_their_schedule():
    from adcli.model.recipe import config_from_dict, recipes_dir, resolve_tree

    tree = resolve_tree(recipes_dir() / "diffusionad.yaml", "test")
    for old, schedule in ((True, "half_cosine"), (False, "constant")):
        tree["train"].pop("seg_lr_schedule", None)
        tree["train"]["seg_cosine"] = old
        assert config_from_dict(tree, "old recipe.yaml").train.seg_lr_schedule == schedule


def test_loop_settings_are_still_checked():
    with pytest.raises(RecipeError, match="train.epochs must be >= 1"):
        load_recipe("diffusionad", "test", ["train.epochs=0"])


def _model_and_batch(overrides, anomalous):
    from adcli.data.batches import TrainBatch
    from adcli.model.methods.diffusionad import DiffusionAD

    config = load_recipe("diffusionad", "test", overrides).config
    model = DiffusionAD(config, ["a"])
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 32, 32, generator=g)
    masks = torch.zeros(4, 1, 32, 32)
    masks[:, :, 8:16, 8:16] = 1.0
    batch = TrainBatch(images=images, masks=masks, category_ids=torch.zeros(4, dtype=torch.long),
                       is_anomaly=torch.full((4,), anomalous), originals=images)
    return model, batch


def test_training_noise_levels_follow_the_ranges(monkeypatch):
    import adcli.model.methods.diffusionad as dad

    seen = {}
    real = dad.norm_guided_x0

    def spy(unet, x0, t_s, t_b, *args, **kwargs):
        seen.setdefault("t_s", []).extend(t_s.tolist())
        seen.setdefault("t_b", []).extend(t_b.tolist())
        return real(unet, x0, t_s, t_b, *args, **kwargs)

    monkeypatch.setattr(dad, "norm_guided_x0", spy)
    model, batch = _model_and_batch(["train.t_s_range=[150, 160]", "train.t_b_range=[390, 400]"], False)
    for seed in range(20):
        model.training_losses(batch, torch.Generator().manual_seed(seed))
    assert set(seen["t_s"]) <= set(range(150, 160)) and set(seen["t_b"]) <= set(range(390, 400))
    assert len(set(seen["t_s"])) > 5  # drawn, not fixed
    paper = load_recipe("diffusionad", "test").config
    assert (paper.t_s_bounds, paper.t_b_bounds) == ((0, 300), (300, 1000))
    with pytest.raises(RecipeError, match="t_b_range must be"):
        load_recipe("diffusionad", "test", ["train.t_b_range=[500, 400]"])


@pytest.mark.parametrize("detach", [False, True])
def test_detached_reconstruction_keeps_the_segmentation_loss_out_of_the_unet(detach):
    # Every row anomalous: the ε-loss is zero, so the UNet's gradient is the segmentation loss's alone.
    model, batch = _model_and_batch([f"train.seg_detach_recon={'true' if detach else 'false'}"], True)
    model.training_losses(batch, torch.Generator().manual_seed(0))["loss"].backward()
    unet_grad = sum(float(p.grad.abs().sum()) for p in model.unet.parameters() if p.grad is not None)
    seg_grad = sum(float(p.grad.abs().sum()) for p in model.segnet.parameters() if p.grad is not None)
    assert seg_grad > 0 and ((unet_grad == 0) if detach else (unet_grad > 0))


def test_standardised_image_score_reuses_the_trained_model_and_fits_per_pixel_statistics(prepared, tmp_path):
    from adcli.data.batches import TrainImages
    from adcli.data.manifest import load_manifest
    from adcli.model.postprocess import evenly_spaced
    from adcli.bundle.model_bundle import Bundle
    from adcli.model.score_maps import pixel_statistics, top_k_mean
    from adcli.commands.train import train

    with pytest.raises(RecipeError, match="scoring.normal_images must be >= 2"):
        load_recipe("diffusionad", "test", ["scoring.image_score=standardised", "scoring.normal_images=1"])
    assert load_recipe("diffusionad").config.scoring.image_score == "map"  # the paper's score
    plain = train(prepared, tmp_path / "plain", load_recipe("diffusionad", "test"), device="cpu")
    recipe = load_recipe("diffusionad", "test", ["scoring.image_score=standardised", "scoring.normal_images=3"])
    z = train(prepared, tmp_path / "z", recipe, device="cpu", stages_from=plain)
    assert sorted(p.name for p in (z / "stages").iterdir()) == ["model.safetensors", "score_scale.safetensors"]
    model, meta = Bundle(z).load_model()
    plain_model, _ = Bundle(plain).load_model()
    assert all(torch.equal(v, plain_model.state_dict()[k]) for k, v in model.state_dict().items()
               if k.startswith(("unet.", "segnet.")))
    cats = meta["categories"]
    data = TrainImages([s for s in load_manifest(prepared) if s.split == "train" and s.category in cats], cats, 32)
    for c in range(len(cats)):
        mean, spread = pixel_statistics(model.anomaly_map(evenly_spaced(data, c, 3))[0])
        assert torch.allclose(model.map_stats.mean[c], mean, atol=1e-5)
        assert torch.allclose(model.map_stats.spread[c], spread, atol=1e-5)
    images, ids = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    out, before = model.predict(images, ids), plain_model.predict(images, ids)
    assert torch.equal(out.anomaly_map, before.anomaly_map)  # heatmaps stay the segmentation net's probabilities
    z_map = (out.anomaly_map - model.map_stats.mean[ids]) / model.map_stats.spread[ids]
    assert torch.allclose(out.score, top_k_mean(z_map, 4), rtol=1e-5)
    assert torch.equal(before.score, top_k_mean(before.anomaly_map, 4))


def test_only_settings_that_change_the_weights_change_the_model_stage_fingerprint():
    from adcli.commands.train.stages import fingerprints as _fingerprints

    samples = []
    base = load_recipe("diffusionad", "test").config
    for key in ("train.lr_seg=0.5", "train.t_s_range=[10, 20]", "segnet.widths=[4, 8, 8]", "synth.beta_max=0.5",
                "synth.intensity_fraction=0.5", "train.coarse_noise=0.5"):
        other = load_recipe("diffusionad", "test", [key]).config
        assert _fingerprints(_stages(other), other, samples)[0] != _fingerprints(_stages(base), base, samples)[0], key
    rescored = load_recipe("diffusionad", "test", ["scoring.image_score=standardised"]).config
    assert _fingerprints(_stages(rescored), rescored, samples)[0] == _fingerprints(_stages(base), base, samples)[0]
    # A key added later, left off, keeps the fingerprint runs trained before it have.
    assert "intensity_fraction" not in _stages(base)[0].settings["synth"]
    assert "coarse_noise" not in _stages(base)[0].settings["train"]


def test_coarse_noise_reaches_training_and_inference_noise(monkeypatch):
    import adcli.model.methods.diffusionad as dad

    def lag1(x):
        x = x - x.mean()
        return float((x[..., 1:] * x[..., :-1]).mean() / x.pow(2).mean())

    seen = []
    real = dad.norm_guided_x0

    def spy(unet, x0, t_s, t_b, noise_s, noise_b, *args, **kwargs):
        seen.append((noise_s, noise_b))
        return real(unet, x0, t_s, t_b, noise_s, noise_b, *args, **kwargs)

    monkeypatch.setattr(dad, "norm_guided_x0", spy)
    correlations = {}
    for overrides in ([], ["train.coarse_noise=0.5"]):
        model, batch = _model_and_batch(overrides, anomalous=False)
        inference = model._inference_noise((3, 32, 32), torch.device("cpu"))
        model.training_losses(batch, torch.Generator().manual_seed(0))
        correlations[bool(overrides)] = [lag1(n) for n in (*seen[-1], *inference)]
    # training's two draws and inference's two: neighbouring pixels share the coarse part only when it is on
    assert all(c > p + 0.2 for p, c in zip(correlations[False], correlations[True])), correlations
    with pytest.raises(RecipeError, match=r"train.coarse_noise must be in \[0, 1\)"):
        load_recipe("diffusionad", "test", ["train.coarse_noise=-0.1"])


def _stages(config):
    from adcli.model.methods.diffusionad import DiffusionAD

    return DiffusionAD(config, ["a", "b"]).stages()


def test_the_map_is_smoothed_by_the_recipes_sigma_and_stays_a_probability():
    from adcli.model.methods.diffusionad import DiffusionAD
    from adcli.model.score_maps import gaussian_blur, top_k_mean

    plain = DiffusionAD(load_recipe("diffusionad", "test").config, ["a"]).eval()
    smooth = DiffusionAD(load_recipe("diffusionad", "test", ["inference.gaussian_sigma=1.5"]).config, ["a"]).eval()
    smooth.load_state_dict(plain.state_dict())
    images, ids = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 0])
    raw, out = plain.predict(images, ids), smooth.predict(images, ids)
    assert torch.allclose(out.anomaly_map, gaussian_blur(raw.anomaly_map, 1.5), atol=1e-6)
    assert not torch.allclose(out.anomaly_map, raw.anomaly_map)
    assert 0 <= float(out.anomaly_map.min()) and float(out.anomaly_map.max()) <= 1
    assert torch.allclose(out.score, top_k_mean(out.anomaly_map, 4))
    assert load_recipe("diffusionad").config.inference.gaussian_sigma == 0.0  # the paper's metrics
    with pytest.raises(RecipeError, match="gaussian_sigma must be >= 0"):
        load_recipe("diffusionad", "test", ["inference.gaussian_sigma=-1"])
