"""The embedded default data set: scikit-learn's 8x8 handwritten digits.

1,797 images with 16 grey levels (0..16), 10 classes. The split is fixed: 360 test images
(20%) drawn by ``train_test_split(random_state=0, stratify=labels)``, 1,437 for training.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from cnnlab.data.registry import DatasetInfo

TEST_SIZE = 360
SPLIT_SEED = 0
GREY_LEVELS = 16


@functools.cache
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # slow import; only when this set is used
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images, labels = bunch.images.astype(np.float32), bunch.target.astype(np.int64)
    train, test = train_test_split(np.arange(len(labels)), test_size=TEST_SIZE,
                                   random_state=SPLIT_SEED, stratify=labels)
    return images, labels, train, test


def read_digits_split(info: DatasetInfo, split: str, root: Path | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 8, 8) float32 in [0, 1] and int64 labels; ``root`` is not used."""
    images, labels, train, test = _split()
    index = train if split == "train" else test
    x = torch.from_numpy(images[index]).unsqueeze(1) / GREY_LEVELS  # N x 1 x 8 x 8
    return x, torch.from_numpy(labels[index])
