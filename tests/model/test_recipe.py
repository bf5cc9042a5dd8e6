import pytest

from adcli.core.errors import RecipeError
from adcli.model.recipe import load_recipe, recipes_dir


def test_paper_settings_load_as_frozen_dataclasses():
    r = load_recipe("diffusionad")
    c = r.config
    assert c.method == "diffusionad" and c.data.image_size == 256
    assert c.unet.base_channels == 128 and c.unet.channel_mults == (1, 1, 2, 2, 4, 4)
    assert c.unet.attention_resolutions == (32, 16, 8) and c.unet.num_heads == 4
    assert (c.inference.t_s, c.inference.t_b, c.inference.top_k) == (200, 400, 50)
    assert (c.train.epochs, c.train.batch_size, c.train.focal_weight) == (3000, 16, 5.0)
    with pytest.raises(Exception):
        c.seed = 1  # frozen


def test_profile_and_set_override_paper_settings():
    r = load_recipe("diffusionad", "cpu", ["train.epochs=5", "inference.t_s=150"])
    assert r.config.data.image_size == 128
    assert r.config.train.epochs == 5 and r.config.inference.t_s == 150
    assert load_recipe("diffusionad").config.data.image_size == 256
    # YAML 1.1 reads 3e-4 (no dot) as a string; a float key takes it as the number it plainly is
    assert load_recipe("diffusionad", overrides=["train.lr_unet=3e-4"]).config.train.lr_unet == 3e-4
    with pytest.raises(RecipeError, match="expects a number"):
        load_recipe("diffusionad", overrides=["train.lr_unet=3e-4x"])


@pytest.mark.parametrize("override, message", [
    ("train.epoch=5", r"section 'train' has no key 'epoch' \(it has: batch_size, checkpoint_minutes, [a-z_, ]*epochs"),
    ("train.epochs=five", r"^--set train.epochs=five: key 'train.epochs' expects an integer"),
    ("unet.channel_mults=3", "key 'unet.channel_mults' expects a list"),
    ("nosuch.key=1", r"recipe diffusionad has no section 'nosuch' \(it has: data, engine, inference, method"),
    ("train.epochs", "expects key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("diffusionad", overrides=[override])


def test_unknown_profile_and_recipe():
    with pytest.raises(RecipeError, match="unknown profile 'gpu'"):
        load_recipe("diffusionad", "gpu")
    with pytest.raises(RecipeError, match="unknown recipe 'nope'"):
        load_recipe("nope")


def test_a_folder_named_like_a_recipe_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "knn").mkdir()  # e.g. an output folder
    assert load_recipe("knn").config.method == "knn"


def test_bad_files_name_the_file(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("method: diffusionad\nseed: [1\n")
    with pytest.raises(RecipeError, match="bad.yaml.*invalid YAML"):
        load_recipe(str(bad_yaml))
    missing = tmp_path / "missing.yaml"
    missing.write_text("method: diffusionad\nseed: 0\n")
    with pytest.raises(RecipeError, match="missing.yaml.*missing key 'data'"):
        load_recipe(str(missing))
    extra = tmp_path / "extra.yaml"
    extra.write_text((recipes_dir() / "diffusionad.yaml").read_text() + "\nbogus: 1\n")
    with pytest.raises(RecipeError, match="extra.yaml.*unknown key 'bogus'"):
        load_recipe(str(extra))
    unknown_method = tmp_path / "m.yaml"
    unknown_method.write_text("method: nosuch\n")
    with pytest.raises(RecipeError, match="unknown method 'nosuch'"):
        load_recipe(str(unknown_method))


def test_invalid_values_are_rejected():
    with pytest.raises(RecipeError, match="t_s < inference.t_b"):
        load_recipe("diffusionad", overrides=["inference.t_s=500"])


@pytest.mark.parametrize("name", ["diffusionad", "timenet", "diad", "drdc", "uniad", "knn"])
def test_profiles_take_their_defaults_from_the_data(name):
    """A profile must work on any user's data: no texture folder inside a demo's output, no category
    names of the demo data (both come from the data: procedural textures, object or texture per category)."""
    for profile in ("cpu", "demo", "test"):
        synth = getattr(load_recipe(name, profile).config, "synth", None)
        if synth is not None:
            assert synth.texture_dir is None and not synth.object_categories, (name, profile)  # [] names none


def test_the_diffusion_recipes_point_cpu_lines_at_knn():
    for name in ("diffusionad", "timenet", "diad", "drdc", "uniad"):
        note = load_recipe(name, "cpu").on_cpu
        assert note and "--recipe knn" in note and "GPU" in note, name
    assert load_recipe("knn", "cpu").on_cpu is None


def test_on_cpu_is_not_a_setting(tmp_path):
    text = (recipes_dir() / "uniad.yaml").read_text()
    with pytest.raises(RecipeError, match=r"has no section 'on_cpu' \(it has: backbone, data, engine"):
        load_recipe("uniad", overrides=["on_cpu.x=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace('on_cpu: "', 'on_cpu: ["', 1).replace('(docs/gpu.md)"\n', '(docs/gpu.md)"]\n', 1))
    with pytest.raises(RecipeError, match="'on_cpu' must be one line of text"):
        load_recipe(str(bad))
