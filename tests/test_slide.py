"""wsi_nuc.slide: opening real slides, clear one-line errors, exact region reading."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from wsi_nuc.errors import InputError
from wsi_nuc.slide import (
    MPP_MAX,
    MPP_MIN,
    SlideInfo,
    best_level,
    check_mpp,
    open_slide,
    read_region,
    read_thumbnail,
)

CMU = "CMU-1-Small-Region.svs"
OS1 = "OS-1-detail.ome.tif"
JP2K = "TCGA-CR-7395-01A-01-TS1-jp2k-no-mpp.svs"
DCM = "camelyon-multiframe-jpeg.dcm"
BOXES = "synthetic/boxes.tiff"
SMALL = "synthetic/small.svs"


def _input_error(path, **kw) -> str:
    with pytest.raises(InputError) as ei:
        open_slide(path, **kw)
    msg = str(ei.value)
    assert os.path.basename(str(path)) in msg
    assert "\n" not in msg and msg.strip() == msg
    return msg


@pytest.fixture(scope="module")
def cmu(slides):
    with open_slide(slides / CMU) as r:
        yield r


@pytest.fixture(scope="module")
def cmu_level0(slides):
    """All of CMU level 0 as RGB, read with OpenSlide directly (composited on white)."""
    import openslide

    with openslide.OpenSlide(str(slides / CMU)) as s:
        a = np.asarray(s.read_region((0, 0), 0, s.dimensions)).astype(np.float32)
    rgb = a[..., :3] * (a[..., 3:] / 255) + 255 * (1 - a[..., 3:] / 255)
    return np.round(rgb).astype(np.uint8)


# ----------------------------------------------------------------------------- opening


@pytest.mark.parametrize(
    "name, mpp, reader, vendor, size, levels, want_mpp, source",
    [
        (CMU, None, "openslide", "aperio", (2220, 2967), 1, 0.499, "metadata"),
        (OS1, None, "tiffslide", "ome", (1101, 1101), 1, 0.2271, "metadata"),
        (JP2K, 0.5, "openslide", "aperio", (4443, 3567), 2, 0.5, "override"),
        (BOXES, 0.5, "openslide", "generic-tiff", (300, 250), 4, 0.5, "override"),
        (SMALL, None, "openslide", "aperio", (16, 16), 1, 0.499, "metadata"),
        (CMU, 0.25, "openslide", "aperio", (2220, 2967), 1, 0.25, "override"),
    ],
)
def test_open_good_slides(slides, name, mpp, reader, vendor, size, levels, want_mpp, source):
    with open_slide(slides / name, mpp=mpp) as r:
        info = r.info
        assert isinstance(info, SlideInfo)
        assert (info.width, info.height) == size
        assert info.level_dimensions[0] == size and len(info.level_dimensions) == levels
        assert info.level_downsamples[0] == 1.0 and len(info.level_downsamples) == levels
        assert info.reader == reader and info.vendor == vendor
        assert info.mpp == pytest.approx(want_mpp, abs=1e-3) and info.mpp_source == source
        d = info.to_dict()
        assert d["path"] == str(slides / name) and d["mpp"] == info.mpp and d["level_dimensions"][0] == list(size)
        px = r.read_level(len(info.level_dimensions) - 1, 0, 0, 4, 3)
        assert px.shape == (3, 4, 3) and px.dtype == np.uint8


def test_bad_inputs_raise_one_line_errors(slides, tmp_path):
    assert "no such file" in _input_error(tmp_path / "missing.svs")
    (tmp_path / "folder.svs").mkdir()
    assert "directory" in _input_error(tmp_path / "folder.svs")
    (tmp_path / "empty.svs").write_bytes(b"")
    assert "empty" in _input_error(tmp_path / "empty.svs")
    (tmp_path / "random.svs").write_bytes(np.random.default_rng(0).bytes(4096))
    assert "not a slide file OpenSlide/tiffslide/Pillow can open" in _input_error(tmp_path / "random.svs")
    data = (slides / CMU).read_bytes()
    (tmp_path / "truncated.svs").write_bytes(data[: int(len(data) * 0.6)])
    assert "truncated" in _input_error(tmp_path / "truncated.svs")
    msg = _input_error(slides / "bad/unopenable.tiff")
    assert "52479" in msg  # the unsupported compression is named
    msg = _input_error(slides / "bad/unreadable.svs")
    assert "pixel data cannot be decoded" in msg


def test_mpp_rules(slides):
    msg = _input_error(slides / JP2K)
    assert "no microns-per-pixel" in msg and "--mpp" in msg
    msg = _input_error(slides / DCM)
    assert "too coarse" in msg and "28.97" in msg
    assert "too coarse" in _input_error(slides / BOXES)  # 352.8 um/px from TIFF resolution tags
    assert "implausible" in _input_error(slides / CMU, mpp=0.05)
    assert "too coarse" in _input_error(slides / CMU, mpp=3.0)
    assert "positive" in _input_error(slides / CMU, mpp=-1)
    # an explicit --mpp inside the range overrides absurd metadata
    with open_slide(slides / DCM, mpp=0.5) as r:
        assert r.info.mpp == 0.5 and r.info.metadata_mpp == pytest.approx(28.97, abs=0.01)
    # check=False describes anything
    with open_slide(slides / DCM, check=False) as r:
        assert r.info.mpp == pytest.approx(28.97, abs=0.01) and r.info.reader == "openslide" and r.info.vendor == "dicom"
    with open_slide(slides / JP2K, check=False) as r:
        assert r.info.mpp is None and r.info.mpp_source == "none"
    assert check_mpp(0.5, "x.svs") == 0.5
    assert check_mpp(MPP_MIN, "x.svs") == MPP_MIN and check_mpp(MPP_MAX, "x.svs") == MPP_MAX
    with pytest.raises(InputError, match="x.svs: no microns-per-pixel"):
        check_mpp(None, "x.svs")


def test_plain_images(make_image, tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    png = make_image("plain.png", rgb)
    assert "no microns-per-pixel" in _input_error(png)
    with open_slide(png, mpp=0.5) as r:
        assert (r.info.reader, r.info.vendor, r.info.width, r.info.height) == ("image", "image", 40, 30)
        assert np.array_equal(r.read_level(0, 0, 0, 40, 30), rgb)
        # outside the image is white
        assert (r.read_level(0, 35, 25, 10, 10)[5:, :] == 255).all()
    # dpi: a plausible resolution is used, a default 72 dpi is ignored
    with open_slide(make_image("fine.png", rgb, dpi=50800)) as r:
        assert r.info.mpp == pytest.approx(0.5, abs=1e-3) and r.info.mpp_source == "metadata"
    assert "no microns-per-pixel" in _input_error(make_image("dpi72.png", rgb, dpi=72))
    # RGBA composited on white; grey expanded to RGB
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4, :, :3] = 10
    rgba[:4, :, 3] = 255
    with open_slide(make_image("alpha.png", rgba), mpp=0.5) as r:
        px = r.read_level(0, 0, 0, 8, 8)
        assert (px[:4] == 10).all() and (px[4:] == 255).all()
    with open_slide(make_image("grey.png", rgb[..., 0]), mpp=0.5) as r:
        assert np.array_equal(r.read_level(0, 0, 0, 40, 30), np.repeat(rgb[..., :1], 3, axis=2))
    # a plain (stripped) TIFF goes through tiffslide
    with open_slide(make_image("plain.tif", rgb), mpp=0.5) as r:
        assert r.info.reader == "tiffslide" and np.array_equal(r.read_level(0, 0, 0, 40, 30), rgb)
    # a random-bytes PNG
    (tmp_path / "noise.png").write_bytes(rng.bytes(500))
    assert "not a slide file" in _input_error(tmp_path / "noise.png")


def test_reader_lifecycle(slides):
    r = open_slide(slides / SMALL)
    r2 = pickle.loads(pickle.dumps(r))  # reopens by path: what worker processes get
    assert r2.info == r.info
    assert np.array_equal(r2.read_level(0, 0, 0, 16, 16), r.read_level(0, 0, 0, 16, 16))
    r.close()
    r2.close()


def test_late_read_errors_name_the_file(slides, monkeypatch):
    with open_slide(slides / OS1) as r:
        def boom(*a, **k):
            raise ValueError("tile 3 is corrupt")

        monkeypatch.setattr(r._slide, "read_region", boom)
        with pytest.raises(InputError) as ei:
            r.read_level(0, 0, 0, 10, 10)
    msg = str(ei.value)
    assert OS1 in msg and "tile 3 is corrupt" in msg and "\n" not in msg


# ----------------------------------------------------------------------------- read_region


def test_read_region_identity(cmu, cmu_level0):
    a = read_region(cmu, 100, 200, 300, 250, 300, 250)
    assert np.array_equal(a, cmu_level0[200:450, 100:400])
    full = read_region(cmu, 0, 0, 2220, 2967, 2220, 2967)
    assert np.array_equal(full, cmu_level0)


def test_read_region_half_resolution(cmu, cmu_level0):
    a = read_region(cmu, 400, 600, 512, 256, 256, 128).astype(np.float32)
    ref = cmu_level0[600:856, 400:912].astype(np.float32).reshape(128, 2, 256, 2, 3).mean(axis=(1, 3))
    assert np.abs(a - ref).max() <= 2


def test_read_region_outside_is_white(cmu, cmu_level0):
    # box hanging over the bottom-right corner
    a = read_region(cmu, 2120, 2867, 200, 200, 200, 200)
    assert np.array_equal(a[:100, :100], cmu_level0[2867:, 2120:])
    assert (a[100:] == 255).all() and (a[:, 100:] == 255).all()
    # top-left halo with negative coordinates, at half resolution
    b = read_region(cmu, -64, -64, 128, 128, 64, 64)
    assert (b[:32] == 255).all() and (b[:, :32] == 255).all()
    assert not (b[32:, 32:] == 255).all()
    # entirely outside
    assert (read_region(cmu, 5000, -900, 100, 100, 37, 21) == 255).all()


@pytest.mark.parametrize("scale", [1.0, 2.0, 1.5, 0.5])
def test_read_region_tiles_stitch(cmu, scale):
    """Two adjacent boxes read separately equal one box read at once."""
    x0, y0, n = 1000.0, 1200.0, 96  # n output pixels per tile
    w0 = n * scale
    left = read_region(cmu, x0, y0, w0, w0, n, n)
    right = read_region(cmu, x0 + w0, y0, w0, w0, n, n)
    both = read_region(cmu, x0, y0, 2 * w0, w0, 2 * n, n)
    diff = np.abs(np.concatenate([left, right], axis=1).astype(int) - both.astype(int))
    assert diff.max() <= 1


def test_read_region_pyramid_level(slides):
    with open_slide(slides / JP2K, mpp=0.5) as r:
        assert best_level(r, 1.0) == 0 and best_level(r, 2.0) == 1 and best_level(r, 8.0) == 1
        lo = read_region(r, 2000, 1600, 1024, 512, 512, 256).astype(np.float32)  # from level 1
        hi = read_region(r, 2000, 1600, 1024, 512, 1024, 512).astype(np.float32)
        ref = hi.reshape(256, 2, 512, 2, 3).mean(axis=(1, 3))
        assert np.abs(lo - ref).mean() < 12  # same place; level 1 is compressed independently
        shifted = np.abs(lo[:, 2:] - ref[:, :-2]).mean()
        assert np.abs(lo - ref).mean() < shifted


def test_read_thumbnail(slides, cmu):
    t, s = read_thumbnail(cmu, 256)
    assert max(t.shape[:2]) == 256 and s == pytest.approx(2967 / 256)
    assert t.shape == (256, int(np.ceil(2220 / s)), 3)
    with open_slide(slides / SMALL) as r:
        t, s = read_thumbnail(r, 256)  # never enlarged
        assert t.shape == (16, 16, 3) and s == 1.0


def test_read_region_negative_coords_on_pyramid_level(slides):
    """OpenSlide truncates negative level coordinates its own way; the adapter must not."""
    from wsi_nuc.slide import readers

    with open_slide(slides / JP2K, mpp=0.5) as r:
        ts = readers._TiffSlideReader(str(slides / JP2K))  # exact level pixels, no interpolation
        ts.info = r.info
        try:
            for box in [(-100.5, -77.2, 800, 600, 200, 150), (-3, -1, 64, 64, 32, 32)]:
                a = read_region(r, *box).astype(int)
                b = read_region(ts, *box).astype(int)
                assert best_level(r, box[2] / box[4]) == 1
                assert np.abs(a - b).max() <= 2
        finally:
            ts.close()


def test_large_reads_are_chunked_identically(cmu, monkeypatch):
    from wsi_nuc.slide import resample

    whole = read_region(cmu, -10.5, 3.25, 1500.0, 1200.0, 500, 400)
    monkeypatch.setattr(resample, "_MAX_WINDOW_PX", 200 * 200)
    chunked = read_region(cmu, -10.5, 3.25, 1500.0, 1200.0, 500, 400)
    assert np.array_equal(whole, chunked)


def test_ome_physical_size_units():
    from wsi_nuc.slide.mpp import _ome_mpp

    xml = ('<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
           '<Image ID="Image:0"><Pixels PhysicalSizeX="250" PhysicalSizeXUnit="nm" PhysicalSizeY="0.00025" '
           'PhysicalSizeYUnit="mm"/></Image></OME>')
    assert _ome_mpp(xml) == pytest.approx(0.25)
    assert _ome_mpp(xml.replace(' PhysicalSizeXUnit="nm"', "").replace('"250"', '"0.25"')) == pytest.approx(0.25)
    assert _ome_mpp("not xml") is None


def test_small_level0_is_decoded_once_and_cut_exactly(slides, monkeypatch):
    """A small single-level slide (CMU) is decoded whole once per process; every level-0 window cut from that
    copy is the reader's own window, white outside the slide included."""
    from wsi_nuc.slide import resample

    monkeypatch.setattr(resample, "_WHOLE", {})
    with open_slide(slides / CMU) as r:
        calls = []
        plain = r.read_level
        monkeypatch.setattr(r, "read_level", lambda *a: calls.append(a) or plain(*a))
        for x, y, w, h in [(0, 0, 64, 64), (-20, -7, 100, 50), (2900, 2180, 200, 90), (5000, 10, 8, 8), (1000, 1200, 640, 640)]:
            assert np.array_equal(resample.level_window(r, 0, x, y, w, h), plain(0, x, y, w, h))
        assert calls == [(0, 0, 0, 2220, 2967)]           # one whole-level decode, then cuts
        t1 = read_thumbnail(r, 512)[0]
    monkeypatch.setattr(resample, "_WHOLE", {})
    with open_slide(slides / CMU) as r:
        monkeypatch.setattr(resample, "_WHOLE_MAX_PX", 0)   # the plain path
        assert np.array_equal(read_thumbnail(r, 512)[0], t1)
