"""Semi-synthetic grouped data built from the bundled real COCO-500 pairs: mechanics checks, NOT real data.

No multi-caption or product set with shippable real embeddings exists here (see ../shared/notes/facts.md),
so these sets exercise the code paths real grouped data takes. Their numbers say whether the mechanics
work (groups, siblings, near-copies); they do not say how the calibrator does on real data.

- ``multi_caption``: each real pair becomes one image with 5 captions: the real one and 4 built from it
  (weight 0.4), from the image's content mapped into text space by a ridge map (0.5) and from Gaussian
  noise shaped like real caption residuals. Sibling captions sit ~2.6 null-sigma above unrelated caption
  pairs, their image ~2.7 (real Flickr8k ViT-B/32: 2.5 and 3.3).
- ``products``: each real pair becomes a product with 3 variants (photo, title); variants 1-2 perturb both
  sides with shaped noise ("other colours").
- ``repeated``: each real pair 3 times exactly and twice as near-copies (tiny noise on both sides).
"""

from __future__ import annotations

import numpy as np

from gapcal.data import load_coco500


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _shaped_noise(x, rng, n):
    """Gaussian rows with the covariance of ``x``'s residuals around its mean."""
    residual = x - x.mean(0)
    return (rng.standard_normal((n, len(x))) / np.sqrt(len(x))) @ residual


def multi_caption(text, image, k=5, own=0.4, content=0.5, seed=0):
    rng = np.random.default_rng(seed)
    t_mean, i_mean = text.mean(0), image.mean(0)
    rt, ri = text - t_mean, image - i_mean
    ridge = np.linalg.solve(ri.T @ ri + np.trace(ri.T @ ri) / ri.shape[1] * np.eye(ri.shape[1]), ri.T @ rt)
    mapped = ri @ ridge
    mapped *= np.linalg.norm(rt, axis=1, keepdims=True) / np.linalg.norm(mapped, axis=1, keepdims=True)
    rest = np.sqrt(max(0.0, 1 - own ** 2 - content ** 2))
    texts, images, groups = [], [], []
    for j in range(len(text)):
        noise = _shaped_noise(text, rng, k - 1)
        noise *= np.linalg.norm(rt[j]) / np.linalg.norm(noise, axis=1, keepdims=True)
        siblings = t_mean + own * rt[j] + content * mapped[j] + rest * noise
        texts.append(np.vstack([text[j:j + 1], siblings]))
        images.append(np.repeat(image[j:j + 1], k, axis=0))
        groups += [j] * k
    return _unit(np.vstack(texts)), _unit(np.vstack(images)), np.array(groups)


def products(text, image, k=3, keep_text=0.6, keep_image=0.7, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for x, keep in ((text, keep_text), (image, keep_image)):
        mean = x.mean(0)
        variants = (mean + np.sqrt(keep) * (x - mean))[:, None] + np.sqrt(1 - keep) * \
            _shaped_noise(x, rng, len(x) * k).reshape(len(x), k, -1)
        variants[:, 0] = x
        out.append(_unit(variants.reshape(len(x) * k, -1)))
    return out[0], out[1], np.repeat(np.arange(len(text)), k)


def repeated(text, image, copies=3, near=2, noise=0.003, seed=0):
    rng = np.random.default_rng(seed)
    texts = [text] * copies + [_unit(text + noise * rng.standard_normal(text.shape)) for _ in range(near)]
    images = [image] * copies + [_unit(image + noise * rng.standard_normal(image.shape)) for _ in range(near)]
    return np.vstack(texts).astype(np.float32), np.vstack(images).astype(np.float32), \
        np.tile(np.arange(len(text)), copies + near)


def simulated_sets():
    """{name: (text, image, groups)} of the three sets, from COCO-500."""
    text, image = load_coco500()
    return {"multi-caption (simulated)": multi_caption(text, image),
            "products (simulated)": products(text, image),
            "repeated items (simulated)": repeated(text, image)}
