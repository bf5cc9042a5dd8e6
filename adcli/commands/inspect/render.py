"""Heatmap pictures for `adcli inspect`: the original and the anomaly map over it side by side, both with
the defect contour, under a header an operator reads at a glance (verdict, normalised score, raw score
against threshold, file) and over a colour bar that says what its colours are."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from adcli.commands.inspect.heatmap import JET_TABLE, overlay
from adcli.commands.inspect.intake import display_path

HEADER_PX = 36  # two lines of text
BAR_PX = 46  # colour strip, its end values and contour tick, and a line saying what the colours are
GAP_PX = 4  # between the original and the overlay
MIN_WIDTH = 360  # small pictures are centred on a wider canvas so the text fits
MIN_PICTURE = 256  # px: smaller images are enlarged by a whole factor (crisp pixels) to be seen
MAX_PANEL = 512  # px: larger images are shrunk to this (longer side), so two panels stay about one image's size
VERDICT_COLOURS = {"DEFECT": (200, 30, 30), "OK": (30, 140, 60)}
OTHER_COLOUR = (150, 110, 20)  # uncalibrated, UNKNOWN_CATEGORY
BACKGROUND = (28, 28, 28)
BAR_LEGEND = "colours: anomaly map, model units (blue = typical good pixel)"
BAR_LEGEND_UNCALIBRATED = "colours: anomaly map, model units (uncalibrated: no defect contour)"
HEATMAP_FORMATS = ("jpg", "png")
JPEG_QUALITY = 90


@dataclasses.dataclass(frozen=True)
class Caption:
    """What the header of a heatmap says."""

    name: str  # the file, as shown in results.csv
    score: float  # raw
    threshold: float | None  # None: uncalibrated
    verdict: str
    normalised: float | None = None  # score_normalised (0.5 = threshold); None: uncalibrated


def heatmap_name(path: Path, folder: Path, fmt: str) -> str:
    """A unique, flat, ASCII-safe file name for the heatmap of `path`, ending in .jpg or .png (`fmt`)."""
    rel = display_path(path.relative_to(folder))
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in rel.rsplit(".", 1)[0].replace("/", "__"))
    # The hash of the absolute path keeps names unique when several folders share one --out.
    unique = hashlib.sha1(display_path(path.absolute()).encode()).hexdigest()[:8]
    return f"{stem[:120]}_{unique}_heatmap.{fmt}"


def contour(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Outline (H, W) bool of a defect mask resized to the image size: mask pixels with a 3×3
    neighbour outside it (edges replicated, as Pillow's MinFilter(3), at a tenth of its time)."""
    big = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).resize(size, Image.NEAREST)) > 0
    padded = np.pad(big, 1, mode="edge")
    inner = big.copy()
    for dy in range(3):
        for dx in range(3):
            inner &= padded[dy:dy + big.shape[0], dx:dx + big.shape[1]]
    return big & ~inner


def _outlined(picture: Image.Image, outline: np.ndarray | None) -> Image.Image:
    """`picture` with the (H, W) bool outline drawn white (a copy), or as it is without one."""
    if outline is None or not outline.any():
        return picture
    arr = np.array(picture)
    arr[outline] = (255, 255, 255)
    return Image.fromarray(arr)


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=12)  # Pillow's built-in font: no font files on the line PC


def _fit(draw: ImageDraw.ImageDraw, text: str, width: float, keep_start: bool = False) -> str:
    """`text` cut with '…' until it fits `width` pixels: from the left (the end of a path matters most), or
    with keep_start from the right."""
    if draw.textlength(text, font=_font()) <= width:
        return text
    while text and draw.textlength(text + "…" if keep_start else "…" + text, font=_font()) > width:
        text = text[:-1] if keep_start else text[1:]
    return text + "…" if keep_start else "…" + text


def judged_text(caption: Caption) -> str:
    """The header's score line: "score 0.83 (raw 4.43, threshold 2.48)"; the normalised score first, as it
    reads the same on every model (0.5 = threshold)."""
    if caption.threshold is None:
        return f"raw score {caption.score:.4g} (uncalibrated: no threshold)"
    normalised = f"score {caption.normalised:.2f} " if caption.normalised is not None else ""
    return f"{normalised}(raw {caption.score:.4g}, threshold {caption.threshold:.4g})"


def _panel(picture: Image.Image) -> Image.Image:
    """A panel at a size to be seen: small images enlarged by a whole factor (crisp pixels)."""
    if max(picture.size) < MIN_PICTURE:
        factor = -(-MIN_PICTURE // max(picture.size))
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)
    return picture


def frame(original: Image.Image, picture: Image.Image, caption: Caption, value_range: tuple[float, float],
          pixel_threshold: float | None) -> Image.Image:
    """The original and the heatmap side by side, with a header (verdict, normalised and raw score vs
    threshold, file) above and a labelled colour bar below (the map values of blue and red, a white tick
    at the contour level, and what the colours are)."""
    left, right = _panel(original), _panel(picture)
    pair = left.width + GAP_PX + right.width
    width = max(pair, MIN_WIDTH)
    canvas = Image.new("RGB", (width, HEADER_PX + right.height + BAR_PX), BACKGROUND)
    x = (width - pair) // 2
    canvas.paste(left, (x, HEADER_PX))
    canvas.paste(right, (x + left.width + GAP_PX, HEADER_PX))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    colour = VERDICT_COLOURS.get(caption.verdict, OTHER_COLOUR)
    badge = draw.textlength(caption.verdict, font=font) + 12
    draw.rectangle((4, 3, 4 + badge, 18), fill=colour)
    draw.text((10, 4), caption.verdict, fill=(255, 255, 255), font=font)
    draw.text((badge + 12, 4), _fit(draw, judged_text(caption), width - badge - 16, keep_start=True), fill=(235, 235, 235), font=font)
    draw.text((6, 20), _fit(draw, caption.name, width - 12), fill=(190, 190, 190), font=font)

    lo, hi = value_range
    y = HEADER_PX + right.height + 4
    x0, x1 = 52, width - 52
    strip = JET_TABLE[np.linspace(0, 255, x1 - x0).round().astype(int)]  # (W, 3)
    canvas.paste(Image.fromarray(np.repeat(strip[None], 10, axis=0)), (x0, y))
    draw.text((4, y - 2), f"{lo:.3g}", fill=(220, 220, 220), font=font)
    draw.text((x1 + 4, y - 2), f"{hi:.3g}", fill=(220, 220, 220), font=font)
    if pixel_threshold is not None and hi > lo:
        tick = x0 + (x1 - x0) * min(max((pixel_threshold - lo) / (hi - lo), 0.0), 1.0)
        draw.line((tick, y - 2, tick, y + 11), fill=(255, 255, 255), width=2)
        label = "defect contour"
        draw.text((min(tick - draw.textlength(label, font=font) / 2, x1 - draw.textlength(label, font=font)), y + 12),
                  label, fill=(255, 255, 255), font=font)
    legend = BAR_LEGEND if pixel_threshold is not None else BAR_LEGEND_UNCALIBRATED
    draw.text((6, y + 27), _fit(draw, legend, width - 12, keep_start=True), fill=(190, 190, 190), font=font)
    return canvas


def render_heatmap(image: Image.Image, anomaly_map: np.ndarray, value_range, pixel_threshold: float | None,
                   caption: Caption | None = None, fmt: str = "png") -> bytes:
    """PNG or JPEG bytes (fmt "png" / "jpg"): the map (model resolution) over the image, white contour where
    map >= pixel_threshold; with a caption, the original (with the same contour) beside it, framed by a
    header and a colour bar, images larger than MAX_PANEL shrunk to it. value_range None = the map's own
    min..max."""
    if fmt not in HEATMAP_FORMATS:
        raise ValueError(f"heatmap format must be one of {', '.join(HEATMAP_FORMATS)}, not {fmt!r}")
    if value_range is None:
        value_range = (float(anomaly_map.min()), float(anomaly_map.max()))
    image = image.convert("RGB")
    if caption is not None and max(image.size) > MAX_PANEL:
        image = image.copy()
        image.thumbnail((MAX_PANEL, MAX_PANEL), Image.BILINEAR)  # before the overlay: less to draw, too
    picture = overlay(image, anomaly_map, value_range)
    outline = contour(anomaly_map >= pixel_threshold, picture.size) if pixel_threshold is not None else None
    picture = _outlined(picture, outline)
    if caption is not None:
        picture = frame(_outlined(image, outline), picture, caption, value_range, pixel_threshold)
    buf = io.BytesIO()
    if fmt == "png":
        picture.save(buf, format="PNG", compress_level=1)  # a few % larger, a third less time than the default 6
    else:
        # ~0.5 ms instead of PNG's ~10 ms for a 384² picture, a quarter of its size; no chroma subsampling,
        # so the one-pixel contour and the coloured header keep their colours.
        picture.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()
