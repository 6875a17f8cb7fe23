"""Colour deconvolution for H&E (Ruifrok & Johnston 2001 stain vectors, as in scikit-image)."""
from __future__ import annotations

import numpy as np

# Rows: haematoxylin, eosin, DAB optical-density vectors (Ruifrok & Johnston 2001).
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
_EPS = 1e-6


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Optical density -log10(I / I0) of RGB in 0..1 (or uint8 0..255), I0 = 1."""
    rgb = np.asarray(rgb, np.float32)
    if rgb.max(initial=0) > 1.0:
        rgb = rgb / 255.0
    return -np.log10(np.clip(rgb, _EPS, 1.0))


def rgb_to_hed(rgb: np.ndarray) -> np.ndarray:
    """Stain concentrations (H, E, D) in optical-density units, for RGB in 0..1 or uint8."""
    return optical_density(rgb) @ _HED_FROM_RGB.astype(np.float32)


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hed`; RGB in 0..1."""
    od = hed @ _RGB_FROM_HED.astype(np.float32)
    return np.clip(10.0 ** (-od), 0.0, 1.0)


def haematoxylin_od(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density per pixel, clipped at 0."""
    return np.clip(rgb_to_hed(rgb)[..., 0], 0, None)
