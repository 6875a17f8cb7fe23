"""Reading whole-slide images: one small reader interface over OpenSlide, tiffslide and Pillow.

``open_slide(path)`` tries, in order:

1. OpenSlide (Aperio, Hamamatsu, MIRAX, DICOM, generic tiled TIFF, ...);
2. tiffslide (OME-TIFF and other TIFFs OpenSlide refuses, including plain single-image TIFFs);
3. Pillow, for plain images (PNG, JPEG, BMP, ...; never for files that start like a TIFF).

Every reader opened by ``open_slide`` has passed a tiny probe read (a few pixels at the slide
centre, coarsest level), so a slide whose tile data cannot be decoded fails when it is opened.
Every problem with the input becomes one :class:`~wsi_nuc.errors.InputError` whose message is a
single line naming the file and the cause.

Microns per pixel (mpp)
-----------------------
* Slide formats (anything OpenSlide opens; OME-TIFF; TIFFs with a vendor or a pyramid):
  mpp comes from the metadata (``openslide.mpp-x/y``, OME ``PhysicalSizeX/Y`` with their unit,
  ``tiffslide.mpp-x/y``) and is checked against ``MPP_MIN``..``MPP_MAX``.
* Plain images (Pillow, and single-level TIFFs without vendor or OME metadata): their
  resolution tags are usually a default (72, 96 or 300 dpi), so they are used only when they give
  a plausible 0.1-2 um/px; otherwise the image has no mpp and ``--mpp`` is needed.
* ``mpp=`` (the ``--mpp`` option) always wins over metadata (``mpp_source="override"``).

Coordinates
-----------
``read_level(level, x, y, w, h)`` takes ``x, y`` in level-0 pixels like OpenSlide and returns
``(h, w, 3)`` RGB uint8 at that level; pixels outside the slide are white.  ``read_region`` maps a
float level-0 box onto an exact output grid: output pixel ``(r, c)`` covers level-0
``[x0 + c*sx, x0 + (c+1)*sx) x [y0 + r*sy, y0 + (r+1)*sy)`` with ``sx = w0/out_w``,
``sy = h0/out_h``, so tiles read separately stitch seamlessly.

Readers hold no global state; open one per worker process.  Pickling a reader pickles its path
and options and reopens the slide on unpickling.
"""
from __future__ import annotations

from .info import SlideInfo, SlideReader
from .mpp import MPP_MAX, MPP_MIN, check_mpp
from .opening import open_slide
from .resample import best_level, read_region, read_scaled_slide, read_thumbnail

__all__ = [
    "MPP_MAX",
    "MPP_MIN",
    "SlideInfo",
    "SlideReader",
    "best_level",
    "check_mpp",
    "open_slide",
    "read_region",
    "read_scaled_slide",
    "read_thumbnail",
]
