"""The contrastive projection with false-negative-aware soft targets: its gradients, its targets, that it
learns where there is something to learn, stays the identity where there is not, and is kept by the
calibrator only when it wins on held-out groups."""

import numpy as np
import pytest
from sklearn.base import clone

from gapcal import GapCalibrator
from gapcal.calibration import contrastive


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    n, d, r = 12, 8, 3
    x, z = rng.normal(size=(n, d)), unit(rng.normal(size=(n, d)))
    group = np.arange(n) % 9  # three pairs share a group with another
    target = contrastive._targets(unit(x), z, group, 0.3)
    a, b = rng.normal(size=(d, r)), 0.1 * rng.normal(size=(d, r))
    _, grad_a, grad_b = contrastive._loss_and_grad(x, z, target, a, b, 0.3)
    for param, grad in ((a, grad_a), (b, grad_b)):
        numeric = np.zeros_like(param)
        for index in np.ndindex(param.shape):
            param[index] += 1e-6
            up = contrastive._loss_and_grad(x, z, target, a, b, 0.3, with_grad=False)[0]
            param[index] -= 2e-6
            down = contrastive._loss_and_grad(x, z, target, a, b, 0.3, with_grad=False)[0]
            param[index] += 1e-6
            numeric[index] = (up - down) / 2e-6
        np.testing.assert_allclose(grad, numeric, atol=1e-7)


def test_soft_targets_weigh_siblings_like_the_pair_and_near_copies_above_strangers():
    rng = np.random.default_rng(1)
    z = unit(rng.normal(size=(4, 16)))
    x = unit(rng.normal(size=(4, 16)))
    z[3], x[3] = unit(z[2] + 0.05 * rng.normal(size=16)), unit(x[2] + 0.05 * rng.normal(size=16))  # a near-copy
    target = contrastive._targets(x, z, np.array([0, 0, 1, 2]), 0.05)
    np.testing.assert_allclose(target.sum(axis=1), 1.0)
    assert target[0, 0] == pytest.approx(target[0, 1]) and target[0, 0] == pytest.approx(0.5, abs=1e-3)
    assert target[2, 3] > 0.1 and target[2, 0] < 1e-4  # the near-copy is no stranger, the other item is


def rotated_pairs(n, d, seed, rotated_dims=12):
    """Texts whose first dimensions are images' rotated: a linear map the identity cannot match."""
    rng = np.random.default_rng(seed)
    image = unit(rng.normal(size=(n, d)))
    q, _ = np.linalg.qr(rng.normal(size=(rotated_dims, rotated_dims)))
    text = image.copy()
    text[:, :rotated_dims] = image[:, :rotated_dims] @ q
    return unit(text + 0.9 / np.sqrt(d) * rng.normal(size=(n, d))).astype(np.float32), image.astype(np.float32)


def cross_modal_r1(text, image, proj):
    y = unit((text - text.mean(0)) @ proj)
    z = unit(image - image.mean(0))
    return float((np.argmax(y @ z.T, axis=1) == np.arange(len(y))).mean())


def test_training_learns_a_map_that_generalises_to_held_out_pairs():
    text, image = rotated_pairs(1500, 32, seed=2)
    proj, info = contrastive.soft_projection(text[:1000], image[:1000], text[:1000].mean(0), image[:1000].mean(0),
                                             np.arange(1000), temperature=0.05)
    assert info["best_step"] > 0 and info["distance_from_identity"] > 0.1 and info["validation_pairs"] == 200
    held_text, held_image = text[1000:], image[1000:]
    assert cross_modal_r1(held_text, held_image, proj) > cross_modal_r1(held_text, held_image, np.eye(32)) + 0.3


def test_no_signal_keeps_the_identity():
    rng = np.random.default_rng(3)
    text, image = unit(rng.normal(size=(600, 32))), unit(rng.normal(size=(600, 32)))
    proj, info = contrastive.soft_projection(text, image, text.mean(0), image.mean(0), np.arange(600),
                                             temperature=0.01)
    assert info["best_step"] == 0 and info["steps"] < contrastive.MAX_STEPS
    np.testing.assert_array_equal(proj, np.eye(32))


def test_auto_never_keeps_it_where_it_loses(coco):
    text, image = coco
    for cal in (GapCalibrator().fit(text[:50], image[:50]),  # too few pairs to learn a 512 x 512 map
                GapCalibrator().fit(text[:400], image[np.random.default_rng(4).permutation(400)])):  # no signal
        rows = {c["projection"]: c for c in cal.fit_report_["candidates"]}
        assert "soft(0.01)" in rows and cal.projection_ != "soft(0.01)"
        assert rows["soft(0.01)"]["gain"] <= 2 * rows["soft(0.01)"]["se"]


def test_forced_on_it_is_deterministic_saved_and_reported(coco, tmp_path):
    text, image = coco[0][:300], coco[1][:300]
    cal = GapCalibrator(mean_shift=True, projection="soft(0.05)").fit(text, image)
    again = clone(cal).fit(text, image)
    assert cal.projection_ == "soft(0.05)" and again.fingerprint_ == cal.fingerprint_
    training = cal.fit_report_["projection_training"]
    assert training["temperature"] == 0.05 and training["validation_pairs"] == 60
    assert "contrastive projection (soft targets, temperature 0.05)" in cal.summary()
    cal.save(tmp_path / "soft.npz")
    loaded = GapCalibrator.load(tmp_path / "soft.npz")
    np.testing.assert_array_equal(loaded.transform(text[:5], modality="text"), cal.transform(text[:5], modality="text"))
    assert GapCalibrator(projection="soft").get_params()["projection"] == "soft"


@pytest.mark.parametrize("value", ["soft(0)", "soft(abc)", "soft(11)", "soft()", "Soft", "soft(0.0005)", 3])
def test_projection_option_is_checked(coco, value):
    with pytest.raises(ValueError, match=r"projection must be one of 'auto', 'none', 'ridge', 'procrustes', 'soft' "
                                         r"or 'soft\(T\)' with a temperature T from 0.001 to 10, got"):
        GapCalibrator(projection=value).fit(*coco)
