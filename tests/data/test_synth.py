import numpy as np

from adcli.data import synth as synth_module
from adcli.data.synth import foreground_mask, perlin_mask, perlin_noise, shuffled_strips, synthesize


def test_perlin_noise_is_deterministic_and_bounded():
    a = perlin_noise((32, 32), (4, 4), np.random.default_rng(0))
    b = perlin_noise((32, 32), (4, 4), np.random.default_rng(0))
    assert np.array_equal(a, b)
    assert np.abs(a).max() <= 1.0 + 1e-6
    assert np.allclose(a[::8, ::8], 0.0, atol=1e-9)  # gradient noise vanishes on lattice points


def test_perlin_mask_properties():
    rng = np.random.default_rng(0)
    fractions = []
    for _ in range(30):
        m = perlin_mask((40, 56), rng)  # not a multiple of 32: generated larger and cropped
        assert m.shape == (40, 56) and m.dtype == bool
        fractions.append(m.mean())
    fractions = np.array(fractions)
    assert 0.0 < fractions.mean() < 0.3  # blobs, not the whole image
    assert (fractions > 0).sum() >= 15


def test_synthesis_only_changes_masked_pixels_of_the_foreground():
    rng = np.random.default_rng(2)
    image = np.zeros((32, 32, 3), np.float32)
    image[8:24, 8:24] = 0.8  # an object on a black background
    textures = [np.full((32, 32, 3), 255, np.uint8)]
    for _ in range(10):
        out, mask = synthesize(image, rng, textures, is_object=True)
        assert out.shape == image.shape and mask.shape == (32, 32)
        assert np.array_equal(out[mask == 0], image[mask == 0])
        assert not mask[:8].any() and not mask[24:].any()  # never on the background
        assert (out >= 0).all() and (out <= 1).all()


def test_foreground_and_strips():
    image = np.zeros((16, 16, 3), np.float32)
    image[4:12, 4:12] = 1.0
    fg = foreground_mask(image)
    assert fg.sum() == 64 and fg[4:12, 4:12].all()
    strips = shuffled_strips(np.arange(16 * 16 * 3, dtype=np.float32).reshape(16, 16, 3), np.random.default_rng(0))
    assert sorted(strips.ravel()) == list(range(16 * 16 * 3))


def test_a_mask_that_keeps_missing_the_object_leaves_a_normal_row(monkeypatch):
    """As the authors' data/dataset_beta_thresh.py: retry the Perlin draw, then label the row normal."""
    from adcli.core.config import SynthConfig
    from adcli.data.batches import Synthesizer, TrainImages

    blank = np.zeros((16, 16, 3), np.float32)  # one colour: no foreground for an object category
    draws = {"n": 0}
    original = synth_module.perlin_mask

    def counting(*args, **kwargs):
        draws["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(synth_module, "perlin_mask", counting)
    out, mask = synthesize(blank, np.random.default_rng(0), [], is_object=True, retries=7)
    assert draws["n"] == 7 and not mask.any() and np.array_equal(out, blank)

    data = TrainImages.__new__(TrainImages)  # two blank images of one object category
    data.images = np.zeros((2, 16, 16, 3), np.uint8)
    data.category_ids = np.zeros(2, np.int64)
    synthesizer = Synthesizer(SynthConfig(procedural_textures=0, empty_mask_retries=3), [], {0})
    batch = data.batch(np.array([0, 1]), np.random.default_rng(0), synthesizer)
    assert batch.is_anomaly.tolist() == [False, False] and batch.masks.sum() == 0


def test_self_augmentation_of_the_authors_shuffles_both_axes_and_changes_colours(monkeypatch):
    rows, cols = np.mgrid[0:64, 0:64]
    image = np.dstack([rows / 63, cols / 63, np.full((64, 64), 0.5)]).astype(np.float32)  # R = row, G = column
    monkeypatch.setattr(synth_module, "_random_ops", lambda im, rng, count=3: im)  # the shuffle alone
    out = synth_module.self_augmented(image, np.random.default_rng(1))
    out_rows, out_cols = np.rint(out[..., 0] * 63).astype(int), np.rint(out[..., 1] * 63).astype(int)
    assert sorted(out_rows[:, 0].tolist()) == list(range(64)) and out_rows[:, 0].tolist() != list(range(64))
    assert sorted(out_cols[0].tolist()) == list(range(64)) and out_cols[0].tolist() != list(range(64))
    assert (np.diff(out_cols[0][:8]) == 1).all()  # strips of 8 columns move whole
    monkeypatch.undo()
    coloured = synth_module.self_augmented(image, np.random.default_rng(1))
    assert not np.allclose(np.sort(coloured.ravel()), np.sort(out.ravel()), atol=2 / 255)  # 3 random ops applied


def test_intensity_anomalies_scale_the_image_itself_inside_the_mask():
    rng = np.random.default_rng(3)
    image = np.random.default_rng(0).uniform(0.2, 0.5, (32, 32, 3)).astype(np.float32)  # a texture, no clipping
    textures = [np.zeros((32, 32, 3), np.uint8)]  # would darken to 0 if it were used
    ratios = []
    for _ in range(20):
        out, mask = synthesize(image, rng, textures, is_object=False, intensity_fraction=1.0)
        inside = mask > 0
        if not inside.any():
            continue
        assert np.array_equal(out[~inside], image[~inside])
        ratio = out[inside] / image[inside]
        assert np.allclose(ratio, ratio.flat[0], atol=1e-5)  # one gain for the whole region: the texture is kept
        ratios.append(float(ratio.flat[0]))
    ratios = np.array(ratios)
    assert len(ratios) >= 10 and (ratios < 0.96).any() and (ratios > 1.05).any()  # darker and brighter
    assert ((ratios > 0.5 - 1e-6) & (ratios < 1.8 + 1e-6)).all() and (np.abs(ratios - 1) > 0.04).all()


def test_intensity_fraction_zero_draws_the_same_anomalies_as_before():
    image = np.random.default_rng(0).uniform(0, 1, (32, 32, 3)).astype(np.float32)
    textures = [np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)]
    a = synthesize(image, np.random.default_rng(5), textures, is_object=False)
    b = synthesize(image, np.random.default_rng(5), textures, is_object=False, intensity_fraction=0.0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
