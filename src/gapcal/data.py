"""Bundled real data: CLIP ViT-B/16 embeddings of 500 MSCOCO val2017 image-caption pairs.

Source: the repository of Liang et al., "Mind the Gap: Understanding the Modality Gap in Multi-modal
Contrastive Representation Learning" (NeurIPS 2022), MIT licence (``data/coco500/LICENSE``).
"""

from __future__ import annotations

from importlib import resources

import numpy as np


def load_coco500() -> tuple[np.ndarray, np.ndarray]:
    """(text, image): two float32 (500, 512) arrays of unit vectors; row i of each is one pair."""
    with resources.files("gapcal").joinpath("data/coco500/clip_vitb16_coco500.npz").open("rb") as fh:
        with np.load(fh, allow_pickle=False) as data:
            return np.ascontiguousarray(data["text"], np.float32), np.ascontiguousarray(data["image"], np.float32)
