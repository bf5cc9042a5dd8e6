"""Atomic file writes, safetensors I/O and checked image decoding.

Every file adcli writes goes through `atomic_write_bytes`: a temporary file in the same folder,
fsync, then `os.replace`, so a killed process leaves either the old file or the new one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file, save_file

from adcli.core.errors import BundleError, ImageError

# Larger than any industrial camera frame we expect; bigger files are refused as decompression bombs.
MAX_IMAGE_PIXELS = 100_000_000
# Camera and archive formats. Pillow opens many more (DDS, PSD, ICNS, ...), whose rarely used
# decoders are where damaged files crash; those are refused as "not an image file".
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM")


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())  # mkstemp creates 0600; finished files get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors, atomically (contiguous CPU copies, as the format requires)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a damaged header
        raise BundleError(f"cannot read weights {path}: {exc}") from None


def read_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """Decode an image file fully and convert it to `mode` (see decode_image)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_image(data, str(path), mode)


def decode_image(data: bytes, name: str, mode: str = "RGB") -> Image.Image:
    """Decode image bytes fully and convert them to `mode` (a GIF or multi-page TIFF: its first frame).

    Grayscale, palette, RGBA and 16-bit images are converted, not rejected. Raises ImageError with a
    one-line reason for empty, truncated, corrupt, non-image, other-format or oversized (decompression
    bomb) data, and for any other exception a decoder raises on damaged data.
    """
    if not data:
        raise ImageError(f"empty file (0 bytes): {name}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged file's metadata warnings: the row says enough
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise ImageError(f"image too large ({w}x{h} pixels > {MAX_IMAGE_PIXELS}): {name}")
                im.load()
                return _convert(im, mode)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"image too large (decompression bomb guard): {name}") from None
    except UnidentifiedImageError:
        raise ImageError(f"not an image file: {name}") from None
    except OSError as exc:
        raise ImageError(f"corrupt or truncated image: {name} ({exc})") from None
    except (ValueError, SyntaxError) as exc:
        raise ImageError(f"corrupt image: {name} ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file must cost one ERROR row, never the run
        raise ImageError(f"cannot decode {name} ({type(exc).__name__}: {exc})") from None


def _convert(im: Image.Image, mode: str) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit grayscale: rescale the actual range to 8 bits instead of clipping at 255.
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        im = Image.fromarray(((arr - lo) * scale).round().astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        # Composite transparent pixels over black, the usual background of a product photo.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert(mode)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask as a bool array (H, W): any non-zero pixel is a defect."""
    return np.asarray(read_image(path, mode="L")) > 0


def sha256_file(path: Path) -> str:
    """A file's SHA-256 (hex), read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
