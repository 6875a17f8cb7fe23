"""The instance heads every network of the package predicts, in channel order (a type head's channels follow)."""

HEADS = ("fg", "boundary", "dist", "hv_x", "hv_y", "centre")
