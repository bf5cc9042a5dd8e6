import numpy as np
import pytest

from adcli.core.config import SynthConfig
from adcli.data.batches import Synthesizer, TrainImages
from adcli.data.manifest import load_manifest
from adcli.data.synth import is_object_category
from adcli.data.textures import FAMILIES, procedural_texture, procedural_textures


def test_procedural_textures_are_deterministic_by_seed_and_varied():
    a, b, c = procedural_textures(12, 40, seed=0), procedural_textures(12, 40, seed=0), procedural_textures(12, 40, seed=1)
    assert len(a) == 12 and all(t.shape == (40, 40, 3) and t.dtype == np.uint8 for t in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not any(np.array_equal(x, y) for x, y in zip(a, c))
    assert all(t.std() > 5 for t in a)  # patterns, not flat colour
    assert len({t.tobytes() for t in a}) == 12


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_fills_any_size(family):
    for size in (33, 64):
        t = procedural_texture(family, size, np.random.default_rng(3))
        assert t.shape == (size, size, 3) and t.std() > 1


def test_object_categories_found_from_training_images(prepared):
    """The demo's disc is an object on a plain background, its weave a texture."""
    samples = [s for s in load_manifest(prepared) if s.split == "train"]
    data = TrainImages(samples, ["disc", "weave"], 32)
    assert is_object_category(data.of_category(0)) and not is_object_category(data.of_category(1))
    assert Synthesizer.object_categories(SynthConfig(), data) == {"disc"}
    assert Synthesizer.object_categories(SynthConfig(object_categories=("weave",)), data) == {"weave"}  # the key overrides


def test_texture_source_is_the_folder_or_code(tmp_path):
    from adcli.core.errors import DataError

    assert len(Synthesizer.textures_for(SynthConfig(procedural_textures=5), 16, seed=0)) == 5
    assert Synthesizer.textures_for(SynthConfig(procedural_textures=0), 16, seed=0) == []
    with pytest.raises(DataError, match="texture folder not found"):
        Synthesizer.textures_for(SynthConfig(texture_dir=str(tmp_path / "none")), 16, seed=0)
