"""A text-side projection trained contrastively on the sample's pairs with false-negative-aware soft targets
(numpy only).

CLIP-style training treats every unmatched pair of a batch as unrelated, so a caption of a dog next to
another dog photo is pushed away: a false negative. Here the target of an unmatched pair (text a, image b)
comes from the unimodal geometry, S(a, b) = (cos(image a, image b) + cos(text a, text b)) / 2, while
matched pairs and pairs of one group (siblings) keep S = 1; the target distribution of a row is
softmax(S / temperature). The model is x -> (x - text mean) (I + A B^T), low rank and initialised at the
identity, trained with Adam on minibatches (symmetric cross-entropy at a fixed temperature) under weight
decay on A and B, and stopped early on held-out groups: it returns the identity when no step lowers their
loss by ``MIN_GAIN``.
"""

from __future__ import annotations

import numpy as np

from .._checks import l2_normalize

DEFAULT_TEMPERATURE = 0.01  # CLIP's own learned scale (logit scale 100); higher ones measured worse
RANK = 64
BATCH = 128
MAX_STEPS = 300
EVAL_EVERY = 5
PATIENCE = 3
LEARNING_RATE = 5e-4
WEIGHT_DECAY = 1e-3
VALIDATION_SHARE = 0.2
MIN_VALIDATION_GROUPS = 3
MIN_GAIN = 0.005  # a held-out loss must fall by this share to count as better: noise moves it by ~0.1%


def soft_name(temperature: float) -> str:
    return f"soft({temperature:g})"


def _targets(x: np.ndarray, z: np.ndarray, group: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise soft targets for texts ``x`` against images ``z`` (rows of one batch, unit vectors)."""
    s = 0.5 * (z @ z.T + x @ x.T)
    s[group[:, None] == group[None, :]] = 1.0  # the pair itself and its siblings
    s = s / temperature
    s -= s.max(axis=1, keepdims=True)
    p = np.exp(s)
    return p / p.sum(axis=1, keepdims=True)


def _softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _loss_and_grad(x, z, target, a, b, temperature, with_grad=True):
    """Symmetric soft cross-entropy of texts ``x`` (centred rows) mapped by I + A B^T and normalised, against
    images ``z`` (unit rows); the gradients for A and B. ``target``: row-wise targets of the texts; the
    images' targets over the texts are its transpose (the similarity behind it is symmetric)."""
    xa = x @ a
    h = x + xa @ b.T
    norm = np.sqrt(np.einsum("ij,ij->i", h, h))[:, None] + np.float32(1e-12)
    y = h / norm
    logits = (y @ z.T) / np.float32(temperature)
    row, col = _softmax(logits, 1), _softmax(logits, 0)
    n = len(x)
    loss = -(np.sum(target * np.log(row + 1e-30)) + np.sum(target.T * np.log(col + 1e-30))) / (2 * n)
    if not with_grad:
        return float(loss), None, None
    g = ((row - target) + (col - target.T)) / np.float32(2 * n)
    dy = (g @ z) / np.float32(temperature)
    dh = (dy - y * np.einsum("ij,ij->i", y, dy)[:, None]) / norm
    return float(loss), x.T @ (dh @ b), dh.T @ xa


def soft_projection(text_units, image_units, text_mean, image_mean, group, *, temperature, seed=0):
    """The (d, d) text projection (applied to mean-shifted texts; ``text_mean``/``image_mean`` None when
    the stage does not shift) trained on these sample pairs, and what training did."""
    t = text_units if text_mean is None else text_units - text_mean.astype(np.float32)
    v = image_units if image_mean is None else image_units - image_mean.astype(np.float32)
    x = np.ascontiguousarray(t, dtype=np.float32)
    x_unit = l2_normalize(x.copy(), floor=1e-12)
    z = l2_normalize(np.ascontiguousarray(v, dtype=np.float32), floor=1e-12)
    n, dim = x.shape
    rank = min(RANK, dim)
    rng = np.random.default_rng(seed)
    labels = np.unique(group)
    held = np.zeros(n, dtype=bool)
    n_val = int(round(VALIDATION_SHARE * len(labels)))
    if n_val >= MIN_VALIDATION_GROUPS and len(labels) - n_val >= MIN_VALIDATION_GROUPS:
        held = np.isin(group, rng.choice(labels, size=n_val, replace=False))
    train, val = np.flatnonzero(~held), np.flatnonzero(held)
    val_target = _targets(x_unit[val], z[val], group[val], temperature) if len(val) else None

    a = (rng.standard_normal((dim, rank)) / np.sqrt(dim)).astype(np.float32)
    b = np.zeros((dim, rank), dtype=np.float32)
    moments = [np.zeros_like(a), np.zeros_like(a), np.zeros_like(b), np.zeros_like(b)]

    def validation(a, b):
        return _loss_and_grad(x[val], z[val], val_target, a, b, temperature, with_grad=False)[0]

    best_loss = validation(a, b) if len(val) else np.inf
    best, best_step, bad, step = (a.copy(), b.copy()), 0, 0, 0
    steps = MAX_STEPS if len(val) else MAX_STEPS // 4  # no held-out groups: a short, fixed run
    beta1, beta2 = 0.9, 0.999
    for step in range(1, steps + 1):
        rows = rng.choice(train, size=min(BATCH, len(train)), replace=False)
        target = _targets(x_unit[rows], z[rows], group[rows], temperature)
        _, grad_a, grad_b = _loss_and_grad(x[rows], z[rows], target, a, b, temperature)
        for param, grad, m1, m2 in ((a, grad_a + WEIGHT_DECAY * a, moments[0], moments[1]),
                                    (b, grad_b + WEIGHT_DECAY * b, moments[2], moments[3])):
            m1 *= beta1
            m1 += (1 - beta1) * grad
            m2 *= beta2
            m2 += (1 - beta2) * grad * grad
            param -= LEARNING_RATE * (m1 / (1 - beta1 ** step)) / (np.sqrt(m2 / (1 - beta2 ** step)) + 1e-8)
        if len(val) and step % EVAL_EVERY == 0:
            loss = validation(a, b)
            if loss < best_loss * (1 - MIN_GAIN):
                best_loss, best, best_step, bad = loss, (a.copy(), b.copy()), step, 0
            else:
                bad += 1
                if bad >= PATIENCE:
                    break
    if not len(val):
        best, best_step = (a, b), step
    delta = best[0].astype(np.float64) @ best[1].astype(np.float64).T
    return np.eye(dim) + delta, {"temperature": temperature, "steps": step, "best_step": best_step,
                                 "validation_pairs": int(len(val)),
                                 "distance_from_identity": float(np.linalg.norm(delta))}
