"""Heatmap pictures (adcli/commands/inspect/render.py): header with verdict and score, colour bar, contour."""

import io

import numpy as np
from PIL import Image

from adcli.commands.inspect.heatmap import JET_TABLE
from adcli.commands.inspect.render import BAR_PX, HEADER_PX, MIN_WIDTH, VERDICT_COLOURS, Caption, render_heatmap


def _render(size=(400, 300), verdict="DEFECT", threshold=0.5, score=0.7, fmt="png"):
    image = Image.new("RGB", size, (90, 90, 90))
    anomaly_map = np.zeros((32, 32), np.float32)
    anomaly_map[10:20, 10:20] = 1.0
    data = render_heatmap(image, anomaly_map, (0.0, 1.0), 0.75, Caption("line/part_7.png", score, threshold, verdict), fmt)
    assert Image.open(io.BytesIO(data)).format == {"png": "PNG", "jpg": "JPEG"}[fmt]
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_header_and_colour_bar_frame_the_image():
    picture = _render()
    assert picture.shape == (HEADER_PX + 300 + BAR_PX, 400, 3)
    assert tuple(picture[10, 6]) == VERDICT_COLOURS["DEFECT"]  # the verdict badge
    bar = picture[HEADER_PX + 300 + 8, 52:400 - 52]  # one row through the colour strip
    assert tuple(bar[0]) == tuple(JET_TABLE[0]) and tuple(bar[-1]) == tuple(JET_TABLE[255])
    assert (picture[HEADER_PX + 150, :] == 255).all(axis=-1).any()  # the white defect contour is drawn
    assert tuple(_render(verdict="OK", score=0.1)[10, 6]) == VERDICT_COLOURS["OK"]


def test_jpeg_pictures_look_like_the_png_ones():
    lossless, jpeg = _render().astype(int), _render(fmt="jpg").astype(int)
    assert lossless.shape == jpeg.shape
    assert np.abs(lossless - jpeg).mean() < 2.0  # q90 without chroma subsampling
    contour = (lossless == 255).all(axis=-1)
    assert contour.any() and (jpeg[contour] > 200).all()  # the one-pixel white contour survives


def test_small_images_are_enlarged_and_centred_so_the_text_fits():
    picture = _render(size=(64, 48), verdict="uncalibrated", threshold=None)
    assert picture.shape[1] == MIN_WIDTH and picture.shape[0] == HEADER_PX + 48 * 4 + BAR_PX  # 64 px -> 256 px


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
