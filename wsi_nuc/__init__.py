"""wsi-nuc: every cell nucleus in a whole-slide image, as instances, measured."""
__version__ = "0.1.0"
