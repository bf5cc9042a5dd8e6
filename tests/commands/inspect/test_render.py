"""Heatmap pictures (adcli/commands/inspect/render.py): header with verdict and score, colour bar, contour."""

import io

import numpy as np
from PIL import Image

from adcli.commands.inspect.heatmap import JET_TABLE
from adcli.commands.inspect.render import (BAR_PX, GAP_PX, HEADER_PX, MAX_PANEL, MIN_WIDTH, VERDICT_COLOURS, Caption,
                                           judged_text, render_heatmap)

GREY = (90, 90, 90)


def _render(size=(400, 300), verdict="DEFECT", threshold=0.5, score=0.7, fmt="png", normalised=0.83):
    image = Image.new("RGB", size, GREY)
    anomaly_map = np.zeros((32, 32), np.float32)
    anomaly_map[10:20, 10:20] = 1.0
    caption = Caption("line/part_7.png", score, threshold, verdict, normalised)
    data = render_heatmap(image, anomaly_map, (0.0, 1.0), 0.75, caption, fmt)
    assert Image.open(io.BytesIO(data)).format == {"png": "PNG", "jpg": "JPEG"}[fmt]
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_header_and_colour_bar_frame_the_original_and_the_overlay_side_by_side():
    picture = _render()
    assert picture.shape == (HEADER_PX + 300 + BAR_PX, 400 + GAP_PX + 400, 3)
    assert tuple(picture[10, 6]) == VERDICT_COLOURS["DEFECT"]  # the verdict badge
    bar = picture[HEADER_PX + 300 + 8, 52:picture.shape[1] - 52]  # one row through the colour strip
    assert tuple(bar[0]) == tuple(JET_TABLE[0]) and tuple(bar[-1]) == tuple(JET_TABLE[255])
    row = picture[HEADER_PX + 150]
    original, overlay = row[:400], row[400 + GAP_PX:]
    assert (overlay == 255).all(axis=-1).any() and (original == 255).all(axis=-1).any()  # the contour on both
    untouched = original[(original != 255).any(axis=-1)]
    assert (untouched == GREY).all()  # the original is shown as it is: the defect stays visible
    assert not (overlay[(overlay != 255).any(axis=-1)] == GREY).all(axis=-1).any()  # the map is over it
    assert tuple(_render(verdict="OK", score=0.1)[10, 6]) == VERDICT_COLOURS["OK"]


def test_header_gives_the_normalised_score_first_then_raw_and_threshold():
    assert judged_text(Caption("a.png", 4.43, 2.48, "DEFECT", 0.8312)) == "score 0.83 (raw 4.43, threshold 2.48)"
    assert judged_text(Caption("a.png", 1.2, 2.48, "OK", 0.0913)) == "score 0.09 (raw 1.2, threshold 2.48)"
    assert judged_text(Caption("a.png", 4.43, None, "uncalibrated")) == "raw score 4.43 (uncalibrated: no threshold)"


def test_large_images_are_shrunk_so_two_panels_stay_about_one_image():
    picture = _render(size=(1600, 1200), fmt="jpg")
    panel = (MAX_PANEL, MAX_PANEL * 3 // 4)
    assert picture.shape == (HEADER_PX + panel[1] + BAR_PX, 2 * panel[0] + GAP_PX, 3)


def test_jpeg_pictures_look_like_the_png_ones():
    lossless, jpeg = _render().astype(int), _render(fmt="jpg").astype(int)
    assert lossless.shape == jpeg.shape
    assert np.abs(lossless - jpeg).mean() < 2.0  # q90 without chroma subsampling
    contour = (lossless == 255).all(axis=-1)
    assert contour.any() and (jpeg[contour] > 200).all()  # the one-pixel white contour survives


def test_small_images_are_enlarged_and_centred_so_the_text_fits():
    picture = _render(size=(64, 48), verdict="uncalibrated", threshold=None, normalised=None)
    assert picture.shape[1] == 2 * 256 + GAP_PX and picture.shape[0] == HEADER_PX + 48 * 4 + BAR_PX  # 64 px -> 256 px
    narrow = _render(size=(20, 200), verdict="uncalibrated", threshold=None, normalised=None)
    assert narrow.shape[1] == MIN_WIDTH and narrow.shape[0] == HEADER_PX + 400 + BAR_PX  # 200 px -> 2 × 200


def test_contour_is_the_mask_pixels_next_to_the_outside_as_pillows_min_filter():
    from PIL import ImageFilter

    from adcli.commands.inspect.render import contour

    rng = np.random.default_rng(0)
    mask = rng.random((16, 16)) > 0.6
    mask[:, :3] = True  # touches the border: replicated edges, no outline along it
    for size in [(16, 16), (40, 33)]:
        big = Image.fromarray((mask * 255).astype(np.uint8)).resize(size, Image.NEAREST)
        expected = (np.asarray(big) > 0) & ~(np.asarray(big.filter(ImageFilter.MinFilter(3))) > 0)
        assert (contour(mask, size) == expected).all() and expected.any()
