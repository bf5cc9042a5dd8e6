"""DiAD on tiny generated data: stages, reuse, the SG network's zero start, inference."""

import json

import pytest
import torch
from safetensors.torch import load_file

from adcli.core.errors import AdcliError, BundleError, RecipeError
from adcli.model.methods.base import StageContext
from adcli.model.methods.diad import DiAD
from adcli.model.recipe import load_recipe
from adcli.model.registry import get_method, method_names
from adcli.bundle.model_bundle import Bundle
from adcli.commands.train import train


def _recipe(weights, overrides=()):
    return load_recipe("diad", "test", [f"backbone.weights={weights}", *overrides])


@pytest.fixture(scope="module")
def run(prepared, mobilenet_weights, tmp_path_factory):
    return train(prepared, tmp_path_factory.mktemp("diad") / "run", _recipe(mobilenet_weights), device="cpu")


def test_registered_and_paper_settings(no_weights):
    assert "diad" in method_names() and get_method("diad").method_cls is DiAD
    c = load_recipe("diad").config
    assert (c.unet.block_out_channels, c.unet.layers_per_block, c.unet.heads, c.unet.context_dim) == ((320, 640, 1280, 1280), 2, 8, 768)
    assert (c.autoencoder.block_out_channels, c.autoencoder.latent_channels, c.autoencoder.scale_factor) == ((128, 256, 512, 512), 4, 0.18215)
    ae = c.autoencoder  # fine-tuned from SD's (paper), with the authors' fine-tuning settings
    assert (ae.finetune, ae.kl_weight, ae.disc_start, ae.disc_weight, ae.batch_size, ae.lr) == (True, 1e-6, 50001, 0.5, 32, 1.8e-4)
    assert (c.schedule.kind, c.schedule.beta_start, c.schedule.beta_end, c.schedule.num_timesteps) == ("scaled_linear", 0.00085, 0.012, 1000)
    assert (c.sg.hint_channels, c.sg.train, c.sg.lr, c.sg.batch_size, c.sg.epochs) == ((16, 32, 96, 256), "sg_decoder", 1e-5, 12, 1000)
    assert (c.inference.start_t, c.inference.steps, c.scoring.gaussian_sigma, c.scoring.pool_kernel, c.scoring.pool_rounds) == (999, 10, 5.0, 8, 8)
    assert (c.backbone.name, c.backbone.layers) == ("resnet50", ("layer1", "layer2", "layer3"))
    for profile in ("cpu", "demo", "test"):
        load_recipe("diad", profile)
    # the paper settings start from Stable Diffusion 1.5: without it, one line says where to put it
    with pytest.raises(AdcliError, match="stable-diffusion-v1-5.*vae/config.json"):
        DiAD(c, ["a"])


def test_bad_settings_are_named():
    with pytest.raises(RecipeError, match="hint_channels"):
        load_recipe("diad", "test", ["sg.hint_channels=[8, 16, 32]"])  # downsamples 4x, the autoencoder 2x
    with pytest.raises(RecipeError, match="cross_attention"):
        load_recipe("diad", "test", ["unet.cross_attention=[true]"])
    with pytest.raises(RecipeError, match="sg.train"):
        load_recipe("diad", "test", ["sg.train=encoder"])
    with pytest.raises(RecipeError, match="image_size"):
        load_recipe("diad", "test", ["data.image_size=34"])


def test_sg_network_starts_by_changing_nothing(mobilenet_weights, tmp_path):
    config = _recipe(mobilenet_weights).config
    torch.manual_seed(0)
    model = DiAD(config, ["a", "b"])
    torch.nn.init.normal_(model.context)  # a trained-looking denoiser
    for p in model.unet.up_blocks.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    tiny, ctx = _Tiny(), StageContext.silent("cpu", tmp_path)
    latents = model._start_sg(tiny, ctx)
    assert model._latents(tiny, ctx) is latents  # encoded once for both stages
    z, t, images = torch.randn(2, 4, 16, 16), torch.tensor([5, 990]), torch.rand(2, 3, 32, 32)
    with_sg = model.eps(z, t, images)
    sg, model.sg = model.sg, None
    assert torch.equal(with_sg, model.eps(z, t, images))  # zero convolutions and zero SFF: exactly the plain LDM
    model.sg = sg
    assert torch.equal(sg.down_blocks[0].resnets[0].conv1.weight, model.unet.down_blocks[0].resnets[0].conv1.weight)


class _Tiny:
    """TrainImages' interface: four random 32 px images of two categories."""

    def __init__(self):
        import numpy as np

        self.images = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
        self.category_ids = np.array([0, 0, 1, 1])
        self.categories = ["a", "b"]

    def __len__(self):
        return 4


def test_sg_stage_trains_the_sg_network_and_the_decoder_half(mobilenet_weights):
    model = DiAD(_recipe(mobilenet_weights).config, ["a"])
    sg_stage = model.stages()[-1]
    trained = {id(p) for g in sg_stage.param_groups(1)[0] for p in g["params"]}
    named = dict(model.named_parameters())
    assert all(id(p) in trained for n, p in named.items() if n.startswith(("sg.", "sff.", "unet.up_blocks.", "unet.conv_out.")))
    assert not any(id(p) in trained for n, p in named.items() if n.startswith(("unet.down_blocks.", "unet.mid_block.", "context", "autoencoder.")))


def test_autoencoder_stage_adds_the_discriminator_from_disc_start(mobilenet_weights):
    from types import SimpleNamespace

    from adcli.model.nets.discriminator import hinge_discriminator_loss
    model = DiAD(_recipe(mobilenet_weights, ["autoencoder.disc_start=1"]).config, ["a"])
    stage = model.stages()[0]
    groups = stage.param_groups(1)[0]
    assert stage.name == "autoencoder" and len(groups) == 2 and groups[1]["betas"] == (0.5, 0.9)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.discriminator.parameters()}
    batch = SimpleNamespace(originals=torch.rand(2, 3, 32, 32))
    before = stage.losses(batch, torch.Generator().manual_seed(0))
    assert float(before["adversarial"]) == 0 and int(model.discriminator.steps) == 1  # step 0 < disc_start

    seen, adversarial = {}, model._adversarial

    def spy(*args):
        seen["args"] = args
        return adversarial(*args)
    model._adversarial = spy
    after = stage.losses(batch, torch.Generator().manual_seed(0))
    base, _, x, recon = seen["args"]
    disc, last = list(model.discriminator.parameters()), model.autoencoder.decoder.conv_out.weight
    # The discriminator learns from the hinge loss alone (the autoencoder's term does not push it) ...
    total = torch.autograd.grad(after["loss"], disc, retain_graph=True)
    hinge = torch.autograd.grad(hinge_discriminator_loss(model.discriminator(x), model.discriminator(recon.detach())), disc)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(total, hinge))
    # ... and the autoencoder gets the adversarial term on top of its reconstruction + KL loss.
    assert not torch.allclose(torch.autograd.grad(after["loss"], last, retain_graph=True)[0],
                              torch.autograd.grad(base["loss"], last, retain_graph=True)[0])
    assert float(after["disc"]) > 0 and int(model.discriminator.steps) == 2


def test_finetuned_pretrained_autoencoder_is_trained_and_stored(mobilenet_weights, tmp_path):
    torch.manual_seed(4)
    DiAD(_recipe(mobilenet_weights).config, ["a"]).autoencoder.save_pretrained(tmp_path / "sd" / "vae")
    vae = str(tmp_path / "sd")
    frozen = DiAD(_recipe(mobilenet_weights, [f"autoencoder.pretrained={vae}"]).config, ["a"])
    assert "autoencoder" not in [s.name for s in frozen.stages()]
    assert [p.part for p in frozen.frozen_pretrained()] == ["autoencoder"]
    tuned = DiAD(_recipe(mobilenet_weights, [f"autoencoder.pretrained={vae}", "autoencoder.finetune=true"]).config, ["a"])
    assert tuned.stages()[0].name == "autoencoder" and tuned.frozen_pretrained() == []
    assert torch.equal(tuned.autoencoder.decoder.conv_out.weight, frozen.autoencoder.decoder.conv_out.weight)  # starts from it
    with pytest.raises(RecipeError, match="finetune needs autoencoder.pretrained"):
        _recipe(mobilenet_weights, ["autoencoder.finetune=true"])


def test_three_stages_kept_and_bundle_predicts(run):
    assert sorted(p.name for p in (run / "stages").iterdir()) == ["autoencoder.safetensors", "denoiser.safetensors", "sg.safetensors"]
    assert set(json.loads((run / "meta.json").read_text())["stage_seconds"]) == {"autoencoder", "denoiser", "sg"}
    weights = load_file(run / "model.safetensors")
    assert not any(k.startswith("discriminator.") for k in weights)  # training only (the test profile has one)
    assert "disc" in (run / "results.csv").read_text().splitlines()[0]
    scale = float(weights["latent_scale"])
    assert scale > 0 and scale != 1.0  # fitted: scale_factor null in the test profile
    model, _ = Bundle(run).load_model()
    images = torch.rand(2, 3, 32, 32)
    out = model.predict(images, torch.tensor([0, 1]))
    assert out.anomaly_map.shape == (2, 32, 32) and out.reconstruction.shape == (2, 3, 32, 32)
    assert bool(torch.isfinite(out.anomaly_map).all()) and float(out.anomaly_map.min()) >= 0
    assert torch.equal(model.predict(images, torch.tensor([0, 1])).score, out.score)  # one fixed noise draw


def _weights(run) -> dict[str, torch.Tensor]:
    files = [run / "model.safetensors", *sorted((run / "stages").iterdir())]
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(f).items()}


def test_same_seed_same_weights_whatever_the_global_torch_seed(run, prepared, mobilenet_weights, tmp_path):
    """torch's global generator starts from a different seed in every process: a run (and the SG stage
    trained alone on reused stages) must not draw from it unseeded, or the same seed gives other weights."""
    with torch.random.fork_rng():
        torch.manual_seed(12345)  # another process's global state
        again = _weights(train(prepared, tmp_path / "again", _recipe(mobilenet_weights), device="cpu"))
    first = _weights(run)
    assert again.keys() == first.keys() and [k for k in first if not torch.equal(first[k], again[k])] == []
    sg_alone = []
    for global_seed in (1, 2):
        with torch.random.fork_rng():
            torch.manual_seed(global_seed)
            sg_alone.append(load_file(train(prepared, tmp_path / f"sg{global_seed}", _recipe(mobilenet_weights, ["sg.lr=3e-4"]),
                                            device="cpu", stages_from=run) / "stages" / "sg.safetensors"))
    assert [k for k, v in sg_alone[0].items() if not torch.equal(v, sg_alone[1][k])] == []


def test_plain_ldm_ablation_reuses_the_autoencoder_and_denoiser(run, prepared, mobilenet_weights, tmp_path):
    plain = train(prepared, tmp_path / "plain", _recipe(mobilenet_weights, ["sg.enabled=false"]), device="cpu", stages_from=run)
    w = load_file(plain / "model.safetensors")
    assert not any(k.startswith(("sg.", "sff.")) for k in w)
    assert all(torch.equal(w[k], v) for k, v in load_file(run / "stages" / "denoiser.safetensors").items())
    seconds = json.loads((run / "meta.json").read_text())["stage_seconds"]
    assert json.loads((plain / "meta.json").read_text())["stage_seconds"] == {k: seconds[k] for k in ("autoencoder", "denoiser")}
    other_sg = train(prepared, tmp_path / "sg_lr", _recipe(mobilenet_weights, ["sg.lr=3e-4"]), device="cpu", stages_from=run)
    assert "stage sg" in (other_sg / "train.log").read_text() and "reusing" in (other_sg / "train.log").read_text()
    assert not torch.equal(load_file(other_sg / "stages" / "sg.safetensors")["sg.conv_in.weight"],
                           load_file(run / "stages" / "sg.safetensors")["sg.conv_in.weight"])


def test_standardised_image_score_is_fitted_after_the_trained_stages(run, prepared, mobilenet_weights, tmp_path):
    from adcli.data.batches import TrainImages
    from adcli.data.manifest import load_manifest
    from adcli.model.postprocess import evenly_spaced
    from adcli.model.score_maps import pixel_statistics, pooled_max

    with pytest.raises(RecipeError, match="scoring.normal_images must be >= 2"):
        _recipe(mobilenet_weights, ["scoring.image_score=standardised", "scoring.normal_images=1"])
    z = train(prepared, tmp_path / "z", _recipe(mobilenet_weights, ["scoring.image_score=standardised", "scoring.normal_images=3"]),
              device="cpu", stages_from=run)
    log = (z / "train.log").read_text()
    assert all(f"stage {name}: reusing" in log for name in ("autoencoder", "denoiser", "sg"))
    assert (z / "stages" / "score_scale.safetensors").is_file()
    model, meta = Bundle(z).load_model()
    plain, _ = Bundle(run).load_model()
    cats = meta["categories"]
    data = TrainImages([s for s in load_manifest(prepared) if s.split == "train" and s.category in cats], cats, 32)
    for c in range(len(cats)):
        with torch.no_grad():
            x = evenly_spaced(data, c, 3)
            mean, spread = pixel_statistics(model.anomaly_maps(x, model.reconstruct(x)))
        assert torch.allclose(model.map_stats.mean[c], mean, atol=1e-5)
        assert torch.allclose(model.map_stats.spread[c], spread, atol=1e-5)
    images, ids = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    out, before = model.predict(images, ids), plain.predict(images, ids)
    assert torch.equal(out.anomaly_map, before.anomaly_map)  # heatmaps are the plain model's
    sc = model.config.scoring
    z_map = (out.anomaly_map - model.map_stats.mean[ids]) / model.map_stats.spread[ids]
    assert torch.allclose(out.score, pooled_max(z_map, sc.pool_kernel, sc.pool_rounds), rtol=1e-5)


def test_pretrained_autoencoder_and_denoiser_leave_only_the_sg_stage(mobilenet_weights, tmp_path):
    config = _recipe(mobilenet_weights).config
    torch.manual_seed(1)
    source = DiAD(config, ["a"])
    source.autoencoder.save_pretrained(tmp_path / "sd" / "vae")
    source.unet.save_pretrained(tmp_path / "sd" / "unet")
    folder = str(tmp_path / "sd")
    model = DiAD(_recipe(mobilenet_weights, [f"autoencoder.pretrained={folder}", f"unet.pretrained={folder}",
                                             "autoencoder.scale_factor=0.5"]).config, ["a"])
    assert [s.name for s in model.stages()] == ["sg"]
    assert torch.equal(model.unet.conv_out.weight, source.unet.conv_out.weight)
    assert float(model.latent_scale) == 0.5


def test_bundle_references_frozen_pretrained_weights_and_packs_them(prepared, mobilenet_weights, tmp_path, monkeypatch):
    config = _recipe(mobilenet_weights).config
    torch.manual_seed(2)
    source = DiAD(config, ["a"])
    weights_dir = tmp_path / "weights"
    source.autoencoder.save_pretrained(weights_dir / "tiny-sd" / "vae")
    source.unet.save_pretrained(weights_dir / "tiny-sd" / "unet")
    monkeypatch.setenv("ADCLI_WEIGHTS_DIR", str(weights_dir))  # found by name, as SD 1.5 would be
    recipe = _recipe(mobilenet_weights, ["autoencoder.pretrained=tiny-sd", "unet.pretrained=tiny-sd", "autoencoder.scale_factor=0.5"])
    out = train(prepared, tmp_path / "run", recipe, device="cpu")

    stored = load_file(out / "model.safetensors")
    assert not any(k.startswith(("autoencoder.", "unet.down_blocks.", "unet.mid_block.", "unet.conv_in.")) for k in stored)
    assert any(k.startswith("unet.up_blocks.") for k in stored) and any(k.startswith("sg.") for k in stored)
    assert not any(k.startswith("autoencoder.") for k in load_file(out / "stages" / "sg.safetensors"))
    references = {r["part"]: r for r in json.loads((out / "meta.json").read_text())["pretrained"]}
    from adcli.model.nets.weights import sha256_file
    assert references["autoencoder"]["sha256"] == sha256_file(weights_dir / "tiny-sd" / "vae" / "diffusion_pytorch_model.safetensors")
    assert references["unet"]["source"] == "tiny-sd"

    images = torch.rand(2, 3, 32, 32)
    model, _ = Bundle(out).load_model()
    expected = model.predict(images, torch.tensor([0, 0])).score
    assert torch.equal(model.autoencoder.decoder.conv_out.weight, source.autoencoder.decoder.conv_out.weight)
    model_id = Bundle(out).model_id()

    # Other content under the same name is refused, not silently used.
    vae_file = weights_dir / "tiny-sd" / "vae" / "diffusion_pytorch_model.safetensors"
    original = vae_file.read_bytes()
    torch.manual_seed(3)
    DiAD(config, ["a"]).autoencoder.save_pretrained(weights_dir / "tiny-sd" / "vae")
    with pytest.raises(BundleError, match="not the autoencoder weights"):
        Bundle(out).load_model()
    vae_file.write_bytes(original)

    from typer.testing import CliRunner

    from adcli.cli import app
    result = CliRunner().invoke(app, ["weights", "pack", str(out)])
    assert result.exit_code == 0 and result.output.count("copied") == 2, result.output
    assert sorted(p.name for p in (out / "pretrained" / "unet").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    monkeypatch.delenv("ADCLI_WEIGHTS_DIR")
    packed, _ = Bundle(out).load_model()  # the folder alone is enough now
    assert torch.equal(packed.predict(images, torch.tensor([0, 0])).score, expected)
    assert Bundle(out).model_id() == model_id  # a calibration stays valid
    assert Bundle(out).pack() == []  # nothing left to copy
    assert CliRunner().invoke(app, ["weights", "pack", str(out)]).output.count("already packed") == 2

    (out / "pretrained" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(BundleError, match="does not hold.*tiny-sd"):
        Bundle(out).load_model()
