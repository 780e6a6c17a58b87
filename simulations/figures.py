"""Image grids for reports: torchvision does the tiling, we only colour the frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image

from fedsieve.shared.data.images import display_rgb

FRAME = 2
FLAG_COLOUR = (0.9, 0.1, 0.1)
PLAIN_COLOUR = (0.35, 0.35, 0.35)


def framed_grid(images: np.ndarray, flagged: np.ndarray, path: str | Path, *,
                nrow: int = 16, max_images: int = 256) -> Path:
    """Save a PNG grid of ``images`` with ``flagged`` ones outlined in red.

    Parameters
    ----------
    images : numpy.ndarray
        Images in any form :func:`fedsieve.shared.data.images.check_images` reads.
    flagged : numpy.ndarray
        bool (N,), which images get the red frame.
    path : str or Path
        Output PNG.
    nrow, max_images : int
        Images per row; at most this many of the first images are drawn.
    """
    images = display_rgb(np.asarray(images)[:max_images])
    flagged = np.asarray(flagged, dtype=bool)[:max_images]
    n, _, h, w = images.shape
    tiles = torch.empty((n, 3, h + 2 * FRAME, w + 2 * FRAME))
    colours = torch.tensor([FLAG_COLOUR if f else PLAIN_COLOUR for f in flagged]).view(n, 3, 1, 1)
    tiles[:] = colours
    tiles[:, :, FRAME:-FRAME, FRAME:-FRAME] = torch.from_numpy(images)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(tiles, path, nrow=nrow, padding=1, pad_value=1.0)
    return path
