"""``scipy.signal.medfilt`` of a 1-D series, without importing ``scipy.signal``.

``scipy.signal`` costs about 1.3 CPU s to import (scipy 1.17 builds its docstrings and array-API wrappers,
pulling in ``scipy.stats``) and every stage used it for this one call. ``medfilt`` is
``ndimage.rank_filter(x, size // 2, size=size, mode="constant")`` (zero padding) in scipy 1.17; older releases
computed the same order statistic with ``_order_filterND``. A median is a selection, not arithmetic, so the
values are the same bit for bit (``tests/test_medfilt.py`` checks this against ``scipy.signal.medfilt``).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.errors import InputError


def medfilt(values: np.ndarray, kernel_frames: int) -> np.ndarray:
    """Running median of ``values`` over an odd ``kernel_frames``, zero-padded at both ends (the first and last
    ``kernel_frames // 2`` outputs lean towards 0, as ``scipy.signal.medfilt``'s and syncnet_python's do)."""
    series = np.asarray(values)
    if series.ndim != 1:
        raise InputError(f"medfilt needs a 1-D series, got shape {series.shape}")
    if kernel_frames < 1 or kernel_frames % 2 != 1:
        raise InputError(f"a median filter needs an odd kernel of at least 1 frame, got {kernel_frames}")
    if not (np.issubdtype(series.dtype, np.integer) or series.dtype in (np.float32, np.float64)):
        raise InputError(f"medfilt does not take {series.dtype} values")
    return ndimage.rank_filter(series, kernel_frames // 2, size=kernel_frames, mode="constant")
