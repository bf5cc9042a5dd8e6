"""TimeNet on tiny generated data: stages, reuse, resume, reflow pairs, inference."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from adcli.data.manifest import load_manifest
from adcli.bundle.model_bundle import Bundle
from adcli.core.errors import RecipeError
from adcli.model.methods.timenet import TimeNet
from adcli.model.nets.unet import UNet
from adcli.model.recipe import load_recipe
from adcli.model.registry import get_method, method_names
from adcli.commands.train import train
from tests.conftest import FakeTrainImages, interrupt_on_call


@pytest.fixture(scope="module")
def backbone_weights(mobilenet_weights):
    return mobilenet_weights


def _recipe(weights, overrides=()):
    return load_recipe("timenet", "test", [f"backbone.weights={weights}", *overrides])


@pytest.fixture(scope="module")
def run(prepared, backbone_weights, tmp_path_factory):
    return train(prepared, tmp_path_factory.mktemp("tn") / "run", _recipe(backbone_weights), device="cpu")


def _weights(run):
    return load_file(run / "model.safetensors")


def test_registered_and_paper_settings():
    assert "timenet" in method_names() and get_method("timenet").method_cls is TimeNet
    c = load_recipe("timenet").config
    assert (c.unet.base_channels, c.unet.channel_mults, c.unet.attention_resolutions) == (64, (1, 1, 2, 2, 4, 4), (16, 8))
    assert (c.inference.t, c.scoring.feature_weight, c.scoring.pixel_weight, c.scoring.gaussian_sigma) == (0.83, 7.0, 7.0, 4.0)
    assert (c.scoring.pool_kernel, c.scoring.pool_rounds, c.reflow.rounds, c.reflow.rtol) == (8, 8, 1, 1e-5)
    assert (c.backbone.name, c.backbone.layers) == ("wide_resnet101_2", ("layer1", "layer2", "layer3"))
    n = sum(p.numel() for p in UNet(c.unet, 256, num_classes=15).parameters())
    assert 25e6 < n < 40e6  # METHODS.md: ≈ 30 M
    for profile in ("cpu", "demo", "test"):
        load_recipe("timenet", profile)


def test_bad_settings_are_named():
    with pytest.raises(RecipeError, match="inference.steps must be 1 with the TPN"):
        load_recipe("timenet", "test", ["inference.steps=3"])
    load_recipe("timenet", "test", ["inference.steps=3", "tpn.enabled=false"])
    with pytest.raises(RecipeError, match="tpn.train_t"):
        load_recipe("timenet", "test", ["tpn.train_t=[0.9, 0.5]"])
    with pytest.raises(RecipeError, match="section 'tpn' has no key 'depth'"):
        load_recipe("timenet", "test", ["tpn.depth=3"])
    with pytest.raises(RecipeError, match="not divisible by 2\\^3 for the 4 levels of tpn.unet.channel_mults"):
        load_recipe("timenet", "test", ["tpn.unet.channel_mults=[1, 2, 2, 2]", "data.image_size=36"])
    with pytest.raises(RecipeError, match="levels of unet.channel_mults"):
        load_recipe("diffusionad", "test", ["data.image_size=31"])


def test_stages_from_a_folder_without_stages_writes_nothing(prepared, backbone_weights, tmp_path):
    from adcli.core.errors import BundleError

    with pytest.raises(BundleError, match="no stages/ folder"):
        train(prepared, tmp_path / "new", _recipe(backbone_weights), device="cpu", stages_from=tmp_path / "missing")
    assert not (tmp_path / "new").exists()


def test_three_stages_kept_and_bundle_predicts(run, prepared):
    assert sorted(p.name for p in (run / "stages").iterdir()) == ["flow.safetensors", "reflow1.safetensors", "tpn.safetensors"]
    meta = json.loads((run / "meta.json").read_text())
    assert set(meta["stage_seconds"]) == {"flow", "reflow1", "tpn"}
    assert not (run / "checkpoint").exists()
    assert [line.split(",")[0] for line in (run / "results.csv").read_text().splitlines()[1:]] == ["flow", "reflow1", "tpn"]
    # The kept stage outputs are the bundle's weights: the TPN's from the last stage, the denoiser's from reflow.
    final, reflow, tpn = _weights(run), load_file(run / "stages" / "reflow1.safetensors"), load_file(run / "stages" / "tpn.safetensors")
    assert all(torch.equal(final[k], v) for k, v in {**reflow, **tpn}.items())
    assert set(reflow) == {k for k in final if k.startswith("denoiser.")}
    model, _ = Bundle(run).load_model()
    images = torch.rand(2, 3, 32, 32)
    out = model.predict(images, torch.tensor([0, 1]))
    assert out.anomaly_map.shape == (2, 32, 32) and out.score.shape == (2,) and out.reconstruction.shape == (2, 3, 32, 32)
    assert bool(torch.isfinite(out.anomaly_map).all()) and float(out.anomaly_map.min()) >= 0
    again = model.predict(images[:1], torch.tensor([0]))  # one fixed noise draw: the batch does not matter
    assert torch.allclose(again.score, out.score[:1], rtol=1e-5)


def test_ablations_reuse_the_stages_they_share(run, prepared, backbone_weights, tmp_path):
    no_tpn = train(prepared, tmp_path / "no_tpn", _recipe(backbone_weights, ["tpn.enabled=false"]), device="cpu", stages_from=run)
    w = _weights(no_tpn)
    assert not any(k.startswith("tpn.") for k in w)
    assert all(torch.equal(w[k], v) for k, v in load_file(run / "stages" / "reflow1.safetensors").items())
    seconds = json.loads((run / "meta.json").read_text())["stage_seconds"]
    assert json.loads((no_tpn / "meta.json").read_text())["stage_seconds"] == {"flow": seconds["flow"], "reflow1": seconds["reflow1"]}
    no_reflow = train(prepared, tmp_path / "no_reflow", _recipe(backbone_weights, ["reflow.rounds=0"]), device="cpu", stages_from=run)
    assert sorted(p.name for p in (no_reflow / "stages").iterdir()) == ["flow.safetensors", "tpn.safetensors"]
    flow = load_file(run / "stages" / "flow.safetensors")
    assert all(torch.equal(_weights(no_reflow)[k], v) for k, v in flow.items())  # v_0, not v_1
    flow_only = train(prepared, tmp_path / "flow_only", _recipe(backbone_weights, ["reflow.rounds=0", "tpn.enabled=false"]),
                      device="cpu", stages_from=run)  # a single kept stage is reused too: nothing trains
    assert json.loads((flow_only / "meta.json").read_text())["stage_seconds"] == {"flow": seconds["flow"]}
    assert not (flow_only / "results.csv").exists() or "flow" not in (flow_only / "results.csv").read_text()
    other_seed = train(prepared, tmp_path / "seed1", _recipe(backbone_weights, ["seed=1", "tpn.enabled=false"]),
                       device="cpu", stages_from=run)  # nothing matches: every stage is trained
    assert not torch.equal(_weights(other_seed)["denoiser.out.2.weight"], flow["denoiser.out.2.weight"])


def test_interrupted_in_the_last_stage_resumes_exactly(run, prepared, backbone_weights, tmp_path, monkeypatch):
    interrupt_on_call(monkeypatch, TimeNet, "_tpn_losses", 2)
    with pytest.raises(KeyboardInterrupt):
        train(prepared, tmp_path / "killed", _recipe(backbone_weights), device="cpu")
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "killed" / "stages").iterdir()) == ["flow.safetensors", "reflow1.safetensors"]
    train(prepared, tmp_path / "killed", None, resume=True, device="cpu")
    a, b = _weights(run), _weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class ConstantField(torch.nn.Module):
    """v(x, t, y) = shift[y]: the ODE solution is X_1 = X_0 + shift[y]."""

    def __init__(self):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.tensor([-1.0, 2.0]))

    def forward(self, x, t_scaled, y):
        return self.shift[y].reshape(-1, 1, 1, 1).expand_as(x)


def test_reflow_pairs_follow_a_known_field_and_resume(backbone_weights, tmp_path):
    from adcli.model.methods.base import StageContext

    config = load_recipe("timenet", "test", [f"backbone.weights={backbone_weights}", "reflow.pairs_per_category=3",
                                              "reflow.solve_batch=2"]).config
    model = TimeNet(config, ["a", "b"])
    model.denoiser = ConstantField()
    ctx = StageContext.silent("cpu", tmp_path / "ck")
    pairs = model._reflow_pairs(1, ctx)
    assert len(pairs) == 6 and pairs.category_ids.tolist() == [0, 0, 0, 1, 1, 1]
    expected = pairs.x0 + torch.tensor([-1.0, 2.0])[pairs.category_ids].reshape(-1, 1, 1, 1)
    assert torch.allclose(pairs.x1, expected, atol=1e-4)
    # A generation stopped after two of its three chunks continues with the same noises.
    chunks = sorted((tmp_path / "ck" / "reflow1_pairs_mixed").iterdir())
    assert len(chunks) == 3  # 6 pairs in chunks of 2; the middle one holds both categories
    from safetensors.torch import load_file as read
    assert read(chunks[1])["y"].tolist() == [0, 1]
    for chunk in chunks[2:]:
        chunk.unlink()
    resumed = model._reflow_pairs(1, ctx)
    assert torch.equal(resumed.x0, pairs.x0) and torch.allclose(resumed.x1, pairs.x1)


def test_without_tpn_one_step_is_the_rectified_flow_update(backbone_weights):
    config = load_recipe("timenet", "test", [f"backbone.weights={backbone_weights}", "tpn.enabled=false"]).config
    model = TimeNet(config, ["a", "b"]).eval()
    model.denoiser = ConstantField()
    x_t, t, y = torch.zeros(2, 3, 8, 8), torch.full((2,), 0.75), torch.tensor([0, 1])
    x_hat = model.reconstruct(x_t, t, y)
    assert torch.allclose(x_hat[0], torch.full((3, 8, 8), -0.25)) and torch.allclose(x_hat[1], torch.full((3, 8, 8), 0.5))


def test_same_weights_other_inference_settings_is_another_model(run, prepared, backbone_weights, tmp_path):
    from adcli.bundle.model_bundle import Bundle

    a = train(prepared, tmp_path / "one", _recipe(backbone_weights, ["tpn.enabled=false"]), device="cpu", stages_from=run)
    b = train(prepared, tmp_path / "three", _recipe(backbone_weights, ["tpn.enabled=false", "inference.steps=3"]),
              device="cpu", stages_from=run)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert Bundle(a).model_id() != Bundle(b).model_id()  # inspect and report must not reuse one's results for the other


def _fitted_on_random_images(backbone_weights, tmp_path, overrides, seed):
    """A TimeNet `test` model with normals maxima whose score stage was fitted on random images (5 of category
    a, 2 of b, 3 normals each at most) -> (model, the 3 images of a it picked, as a tensor)."""
    from adcli.model.methods.base import StageContext

    config = load_recipe("timenet", "test", [f"backbone.weights={backbone_weights}", "scoring.normaliser=normals",
                                              "scoring.normaliser_images=3", *overrides]).config
    model = TimeNet(config, ["a", "b"]).eval()
    score_scale = model.stages()[-1]
    assert score_scale.name == "score_scale"
    images = np.random.default_rng(seed).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    score_scale.fit(FakeTrainImages(images, [0, 0, 0, 0, 0, 1, 1]), StageContext.silent("cpu", tmp_path))
    return model, torch.from_numpy(images[[0, 2, 4]]).permute(0, 3, 1, 2).float() / 255  # evenly spaced: 3 of 5


def test_normals_normaliser_is_the_mean_of_training_maxima(backbone_weights, tmp_path):
    from adcli.model.score_maps import euclidean_distance

    model, picked = _fitted_on_random_images(backbone_weights, tmp_path, [], seed=0)
    with torch.no_grad():
        recon = model._reconstruct_images(picked, torch.zeros(3, dtype=torch.long))
        by_hand = [float(euclidean_distance(a, b).flatten(1).amax(1).mean()) for a, b in zip(model.backbone(picked), model.backbone(recon))]
        pixel_max = float((picked - recon).pow(2).sum(1).flatten(1).amax(1).mean())
    assert model.score_maxima[0, :-1, 0].tolist() == pytest.approx(by_hand, rel=1e-5)
    assert float(model.score_maxima[0, -1, 0]) == pytest.approx(pixel_max, rel=1e-5)
    assert not torch.equal(model.score_maxima[0], model.score_maxima[1])  # per category (b: its 2 images)
    # The score depends on the fitted constants (and not on the image's own maxima alone).
    x = picked[:2]
    before = model.predict(x, torch.zeros(2, dtype=torch.long)).score
    model.score_maxima[0, -1, 0] *= 2
    assert bool((model.predict(x, torch.zeros(2, dtype=torch.long)).score < before).all())


def test_standardised_image_score_uses_the_normals_per_pixel_statistics(backbone_weights, tmp_path):
    from adcli.model.score_maps import pixel_statistics, pooled_max

    with pytest.raises(RecipeError, match="scoring.image_score must be 'map' or 'standardised'"):
        load_recipe("timenet", "test", ["scoring.image_score=zscore"])
    with pytest.raises(RecipeError, match="a per-pixel spread needs two images"):
        load_recipe("timenet", "test", ["scoring.image_score=standardised", "scoring.normaliser_images=1"])
    model, picked = _fitted_on_random_images(backbone_weights, tmp_path, ["scoring.image_score=standardised"], seed=1)
    config, rng = model.config, np.random.default_rng(2)
    zeros = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        normal_maps = model.predict(picked, zeros).anomaly_map  # S with the fitted maxima
    mean, spread = pixel_statistics(normal_maps)
    assert torch.allclose(model.map_stats.mean[0], mean, atol=1e-6) and torch.allclose(model.map_stats.spread[0], spread, atol=1e-6)
    assert not torch.equal(model.map_stats.mean[0], model.map_stats.mean[1])  # per category
    # The image score pools (S − μ) / spread; the anomaly map stays S.
    x = torch.from_numpy(rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255
    out = model.predict(x, torch.zeros(2, dtype=torch.long))
    sc = config.scoring
    expected = pooled_max((out.anomaly_map - mean) / spread, sc.pool_kernel, sc.pool_rounds)
    assert torch.allclose(out.score, expected, rtol=1e-5)
    model.map_stats.mean[0] += 1.0
    shifted = model.predict(x, torch.zeros(2, dtype=torch.long))
    assert torch.equal(shifted.anomaly_map, out.anomaly_map) and bool((shifted.score < out.score).all())


def test_standardised_image_score_with_each_images_own_maxima(backbone_weights, tmp_path):
    from adcli.model.score_maps import pixel_statistics

    model, picked = _fitted_on_random_images(backbone_weights, tmp_path, ["scoring.normaliser=image",
                                                                          "scoring.image_score=standardised"], seed=3)
    assert not hasattr(model, "score_maxima")
    with torch.no_grad():
        mean, spread = pixel_statistics(model.predict(picked, torch.zeros(3, dtype=torch.long)).anomaly_map)
    assert torch.allclose(model.map_stats.mean[0], mean, atol=1e-6) and torch.allclose(model.map_stats.spread[0], spread, atol=1e-6)


def test_feature_size_scores_features_of_the_resized_images(backbone_weights, tmp_path):
    with pytest.raises(RecipeError, match="scoring.feature_size must be null or at least 32 px"):
        load_recipe("timenet", "test", ["scoring.feature_size=16"])
    model, picked = _fitted_on_random_images(backbone_weights, tmp_path, ["scoring.feature_size=64"], seed=4)
    fit = [s for s in model.stages() if s.name == "score_scale"][0]
    assert fit.settings["scoring"]["feature_size"] == 64  # a new size refits the score stage
    seen = []
    model.backbone.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    zeros = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        out = model.predict(picked, zeros)
        recon = model._reconstruct_images(picked, zeros)
        up = [torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False) for x in (picked, recon)]
        by_hand = [model.backbone(x) for x in up]
    assert seen[:2] == [(3, 3, 64, 64)] * 2 and out.anomaly_map.shape == (3, 32, 32)
    from adcli.model.score_maps import euclidean_distance
    first_layer = [float(euclidean_distance(a, b).flatten(1).amax(1).mean()) for a, b in zip(*(f[:1] for f in by_hand))]
    assert float(model.score_maxima[0, 0, 0]) == pytest.approx(first_layer[0], rel=1e-5)  # fitted on the same view
    plain = _fitted_on_random_images(backbone_weights, tmp_path, [], seed=4)[0]
    assert "feature_size" not in [s for s in plain.stages() if s.name == "score_scale"][0].settings["scoring"]
    with torch.no_grad():
        assert not torch.allclose(plain.predict(picked, zeros).anomaly_map, out.anomaly_map)


def test_standardised_image_score_refits_only_the_score_stage(run, prepared, backbone_weights, tmp_path):
    z = train(prepared, tmp_path / "z", _recipe(backbone_weights, ["scoring.normaliser=normals", "scoring.image_score=standardised"]),
              device="cpu", stages_from=run)
    w = _weights(z)
    assert all(torch.equal(w[k], v) for k, v in _weights(run).items())
    assert w["map_stats.mean"].shape == w["map_stats.spread"].shape == (2, 32, 32) and bool((w["map_stats.spread"] > 0).all())
    model, _ = Bundle(z).load_model()
    assert torch.equal(model.map_stats.spread, w["map_stats.spread"])


def test_normals_normaliser_reuses_the_trained_stages(run, prepared, backbone_weights, tmp_path):
    fixed = train(prepared, tmp_path / "fixed", _recipe(backbone_weights, ["scoring.normaliser=normals"]), device="cpu", stages_from=run)
    assert sorted(p.name for p in (fixed / "stages").iterdir()) == ["flow.safetensors", "reflow1.safetensors",
                                                                    "score_scale.safetensors", "tpn.safetensors"]
    w = _weights(fixed)
    assert all(torch.equal(w[k], v) for k, v in _weights(run).items())
    assert w["score_maxima"].shape == (2, 3, 2) and bool((w["score_maxima"] > 0).all())
    model, _ = Bundle(fixed).load_model()
    assert torch.equal(model.score_maxima, w["score_maxima"])


def test_probe_defects_example_reports_every_defect_type(run, prepared):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "examples" / "probe_defects.py"
    done = subprocess.run([sys.executable, str(script), str(run), str(prepared), "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| ") and "defect type" not in line]
    samples = [s for s in load_manifest(prepared) if s.split == "test"]
    assert {(r[0].strip(), r[1].strip()) for r in rows} == {(s.category, s.defect) for s in samples}
    for r in rows:
        assert len(r) == 13  # TimeNet has a reconstruction and a TPN: error and T columns are filled
        if r[1].strip() != "good":
            assert float(r[6]) > 0 and float(r[9]) > 0 and float(r[12]) > 0  # every ratio measured


def test_timestep_map_is_the_tpns_t_that_predict_uses(run):
    model, _ = Bundle(run).load_model()
    model.eval()
    seen = []
    model.tpn.register_forward_hook(lambda module, args, out: seen.append(out[0]))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([0, 1])
    model.predict(x, ids)
    t_map = model.timestep_map(x, ids)
    assert t_map.shape == (2, 32, 32) and torch.equal(t_map, seen[0][:, 0])
    assert bool(((t_map > 0) & (t_map < 1)).all())
    model.tpn = None
    assert model.timestep_map(x, ids) is None


def test_intensity_fraction_enters_the_tpn_fingerprint_only_when_set(backbone_weights):
    def tpn_synth(overrides):
        model = TimeNet(_recipe(backbone_weights, overrides).config, ["a", "b"])
        return [s for s in model.stages() if s.name == "tpn"][0].settings["synth"]

    assert "intensity_fraction" not in tpn_synth([])  # runs trained before the key keep their TPN
    assert tpn_synth(["synth.intensity_fraction=0.5"])["intensity_fraction"] == 0.5
    with pytest.raises(RecipeError, match=r"synth.intensity_fraction must be in \[0, 1\]"):
        load_recipe("timenet", "test", ["synth.intensity_fraction=1.5"])


def test_coarse_noise_enters_the_flow_fingerprint_only_when_set_and_changes_the_inference_noise(backbone_weights):
    def flow_and_noise(overrides):
        model = TimeNet(_recipe(backbone_weights, overrides).config, ["a", "b"])
        x_t, _ = model._noised(torch.full((1, 3, 32, 32), 0.5))
        return [s for s in model.stages() if s.name == "flow"][0].settings["train"], x_t

    plain, plain_x_t = flow_and_noise([])
    assert "coarse_noise" not in plain and "coarse_scale" not in plain  # runs trained before the key keep their stages
    coarse, coarse_x_t = flow_and_noise(["train.coarse_noise=0.5"])
    assert coarse["coarse_noise"] == 0.5 and coarse["coarse_scale"] == 0.0625
    assert not torch.equal(plain_x_t, coarse_x_t)
    # neighbouring pixels of the noise share its coarse part (the image is flat, so X_t's variation is noise)
    def lag1(x):
        x = x - x.mean()
        return float((x[..., 1:] * x[..., :-1]).mean() / x.pow(2).mean())
    assert lag1(coarse_x_t) > lag1(plain_x_t) + 0.2
    with pytest.raises(RecipeError, match=r"train.coarse_noise must be in \[0, 1\)"):
        load_recipe("timenet", "test", ["train.coarse_noise=1.0"])
