"""Self-check defects: deterministic, inside the object, of the sizes they name, and visible."""

import numpy as np
import pytest

from adcli.data.defects import FAMILIES, SCRATCH_WIDTH, SIZES, defect_region, extent_pixels, make_defect

SIDE = 128


def _object(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured disc (radius 40 px) on a flat light-grey background -> (image uint8, the disc bool)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    disc = (yy - 64) ** 2 + (xx - 64) ** 2 <= 40**2
    image = np.full((SIDE, SIDE, 3), 200, np.uint8)
    texture = 60 + 40 * np.sin(xx / 3.0)[..., None] + rng.integers(0, 30, (SIDE, SIDE, 3))
    image[disc] = texture[disc].astype(np.uint8)
    return image, disc


@pytest.mark.parametrize("family", FAMILIES)
def test_a_defect_is_the_same_for_the_same_seed(family):
    image, disc = _object()
    donor, _ = _object(1)
    a = make_defect(image, family, "large", np.random.default_rng(7), disc, donor)
    b = make_defect(image, family, "large", np.random.default_rng(7), disc, donor)
    c = make_defect(image, family, "large", np.random.default_rng(8), disc, donor)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])  # another seed, another place


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", list(SIZES))
def test_a_defect_lies_inside_the_object_and_changes_only_its_mask(family, size):
    image, disc = _object()
    donor, _ = _object(1)
    for seed in range(5):
        out, mask = make_defect(image, family, size, np.random.default_rng(seed), defect_region(image, True), donor)
        assert mask.any() and not (mask & ~disc).any()
        assert np.array_equal(out[~mask], image[~mask])
        changed = (out != image).any(axis=-1)
        assert changed[mask].mean() > 0.3, f"{family} {size}: the defect barely changes its pixels"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", list(SIZES))
def test_a_defect_spans_its_named_share_of_the_side(family, size):
    image, _ = _object()
    extent = extent_pixels(size, SIDE)
    assert extent == round(SIZES[size] * SIDE)
    full = np.ones((SIDE, SIDE), bool)
    for seed in range(5):
        _, mask = make_defect(image, family, size, np.random.default_rng(seed), full, image[::-1].copy())
        ys, xs = np.nonzero(mask)
        height, width = np.ptp(ys) + 1, np.ptp(xs) + 1
        if family == "scratch":  # a line: its length is the box's diagonal, give or take its width
            assert abs(np.hypot(height, width) - extent) <= 2 + SCRATCH_WIDTH * SIDE * 2
            assert mask.sum() <= extent * (SCRATCH_WIDTH * SIDE + 2)  # thin
        else:  # a disc of diameter `extent`
            assert abs(height - extent) <= 1 and abs(width - extent) <= 1


def test_large_defects_cover_more_than_small_ones():
    image, disc = _object()
    for family in FAMILIES:
        small = make_defect(image, family, "small", np.random.default_rng(0), disc, image)[1].sum()
        large = make_defect(image, family, "large", np.random.default_rng(0), disc, image)[1].sum()
        assert large > 2 * small, family


def test_the_region_is_the_object_for_objects_and_everything_for_textures():
    image, disc = _object()
    region = defect_region(image, True)
    assert (region == disc).mean() > 0.98
    assert defect_region(image, False).all()
    flat = np.full((SIDE, SIDE, 3), 90, np.uint8)  # nothing stands out from the border: no object found
    assert defect_region(flat, True).all()


def test_a_patch_comes_from_the_donor_at_another_place():
    image = np.zeros((SIDE, SIDE, 3), np.uint8)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    donor = np.stack([yy, xx, np.full_like(yy, 255)], -1).astype(np.uint8)  # each pixel says where it is
    for seed in range(5):
        out, mask = make_defect(image, "patch", "large", np.random.default_rng(seed), np.ones((SIDE, SIDE), bool), donor)
        assert (out[mask][:, 2] == 255).all()  # every pixel of the disc comes from the donor
        shifts = {(int(out[y, x, 0]) - y, int(out[y, x, 1]) - x) for y, x in zip(*np.nonzero(mask))}
        assert len(shifts) == 1, "one disc moved whole"
        dy, dx = shifts.pop()
        assert max(abs(dy), abs(dx)) > extent_pixels("large", SIDE)  # from another place
