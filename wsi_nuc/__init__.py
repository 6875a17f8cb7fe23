"""wsi-nuc: every cell nucleus in a whole-slide image, as instances, measured.

Python API (see README.md, "Python and notebooks")::

    labels, table = wsi_nuc.segment_image(rgb, mpp=0.25)        # one image in memory
    summary = wsi_nuc.run_slide("slide.svs", "out", quiet=True)  # one slide, as `wsi-nuc run`
"""
__version__ = "0.7.0"   # pyproject.toml's; wsi_nuc.version.build_version() adds the git commit


def segment_image(rgb, mpp, model=None, device="auto", min_area_um2=3.0, **options):
    """Segment, measure and type the nuclei of one RGB image as ``wsi-nuc run`` does; see
    :func:`wsi_nuc.api.segment_image`."""
    from .api import segment_image as _f

    return _f(rgb, mpp, model=model, device=device, min_area_um2=min_area_um2, **options)


def slide_stain(path, model=None, mpp=None):
    """A slide's stain statistics as ``wsi-nuc run`` takes them; see :func:`wsi_nuc.api.slide_stain`."""
    from .api import slide_stain as _f

    return _f(path, model=model, mpp=mpp)


def run_slide(path, out, **settings):
    """One slide end to end, as ``wsi-nuc run``; see :func:`wsi_nuc.api.run_slide`."""
    from .api import run_slide as _f

    return _f(path, out, **settings)


__all__ = ["__version__", "segment_image", "slide_stain", "run_slide"]
