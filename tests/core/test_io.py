import os

import numpy as np
import pytest
from PIL import Image

from adcli.core import io as aio
from adcli.core.errors import ImageError
from tests.conftest import save_png


def test_conversions_to_rgb(tmp_path):
    gray = save_png(tmp_path / "g.png", np.full((4, 5), 100, np.uint8))
    rgba = save_png(tmp_path / "a.png", np.dstack([np.full((4, 5, 3), 200, np.uint8), np.zeros((4, 5), np.uint8)]))
    deep = tmp_path / "d.png"
    Image.fromarray(np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)).save(deep)
    pal = tmp_path / "p.png"
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).convert("P").save(pal)
    for p in (gray, rgba, deep, pal):
        im = aio.read_image(p)
        assert im.mode == "RGB"
    assert np.asarray(aio.read_image(gray))[0, 0].tolist() == [100, 100, 100]
    assert np.asarray(aio.read_image(rgba)).max() == 0  # fully transparent over black
    d = np.asarray(aio.read_image(deep))[..., 0]
    assert d[0, 0] == 0 and d[1, 1] == 255 and 0 < d[1, 0] < 255  # rescaled, not clipped


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"hello, not an image", "not an image"),
])
def test_bad_files_give_one_line_reasons(tmp_path, content, reason):
    p = tmp_path / "x.png"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=reason) as exc:
        aio.read_image(p)
    assert "\n" not in str(exc.value)


def test_truncated_and_huge(tmp_path, monkeypatch):
    good = save_png(tmp_path / "ok.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    trunc = tmp_path / "t.png"
    trunc.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        aio.read_image(trunc)
    monkeypatch.setattr(aio, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match="too large"):
        aio.read_image(good)
    with pytest.raises(ImageError, match="cannot read"):
        aio.read_image(tmp_path / "missing.png")


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    aio.atomic_write_text(target, "one")
    aio.atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert os.listdir(target.parent) == ["f.txt"]
