import math

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

from lotterylab.platform.metrics import (
    RFWidthSummary,
    accuracy,
    image_components,
    mask_autocorrelation,
    rf_width,
    rf_width_summary,
)


def _mask(image_shape, pixels):
    """One unit keeping the inputs at (c, y, x) in ``pixels``."""
    m = torch.zeros(image_shape, dtype=torch.bool)
    for c, y, x in pixels:
        m[c, y, x] = True
    return m.reshape(1, -1)


def _brute_force(mask, image_shape, channels):
    """S(d) by looping over every pair of kept inputs."""
    c, n, _ = image_shape
    out = np.zeros((mask.shape[0], 2 * n - 1, 2 * n - 1))
    for i, row in enumerate(mask.numpy().reshape(-1, c, n, n)):
        kept = np.argwhere(row)
        for a in kept:
            for b in kept:
                if (a == b).all() or (channels == "same" and a[0] != b[0]):
                    continue
                out[i, a[1] - b[1] + n - 1, a[2] - b[2] + n - 1] += 1
    return out


def _gaussian_masks(sigma, units=256, n=32, seed=0):
    """Units keeping pixel z with probability 0.9 exp(-|z - c|^2 / 2 sigma^2), c near the centre."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    centre = (n - 1) / 2 + 2 * torch.rand(units, 2, generator=g) - 1
    r2 = (x - centre[:, 0, None, None]) ** 2 + (y - centre[:, 1, None, None]) ** 2
    keep = 0.9 * torch.exp(-r2 / (2 * sigma**2))
    return (torch.rand(keep.shape, generator=g) < keep).reshape(units, -1)


@pytest.mark.parametrize("channels", ["same", "all"])
def test_single_pixel_pair(channels):
    s = mask_autocorrelation(_mask((2, 8, 8), [(1, 2, 1), (1, 3, 4)]), (2, 8, 8), channels)
    assert s.shape == (1, 15, 15) and s.dtype == torch.float64
    expected = torch.zeros(1, 15, 15, dtype=torch.float64)
    expected[0, 7 + 1, 7 + 3] = 1  # dy = 1, dx = 3
    expected[0, 7 - 1, 7 - 3] = 1
    assert torch.equal(s, expected)
    assert torch.equal(s, s.flip(1, 2))


def test_square_block():
    k, n = 3, 8
    s = mask_autocorrelation(
        _mask((1, n, n), [(0, 2 + i, 1 + j) for i in range(k) for j in range(k)]), (1, n, n)
    )[0]
    d = torch.arange(1 - n, n)
    overlap = (k - d.abs()).clamp_min(0).to(torch.float64)
    expected = overlap[:, None] * overlap[None, :]
    expected[n - 1, n - 1] = 0
    assert torch.equal(s, expected)


def test_same_pixel_on_two_channels():
    mask = _mask((2, 4, 4), [(0, 1, 2), (1, 1, 2)])
    assert torch.equal(mask_autocorrelation(mask, (2, 4, 4), "same"), torch.zeros(1, 7, 7).double())
    s_all = mask_autocorrelation(mask, (2, 4, 4), "all")
    assert s_all[0, 3, 3] == 2 and s_all.sum() == 2


@pytest.mark.parametrize("image_shape", [(1, 5, 5), (3, 6, 6), (2, 4, 4), (3, 7, 7)])
@pytest.mark.parametrize("channels", ["same", "all"])
def test_matches_brute_force(image_shape, channels):
    g = torch.Generator().manual_seed(sum(image_shape))
    mask = torch.rand(4, math.prod(image_shape), generator=g) < 0.4
    expected = _brute_force(mask, image_shape, channels)
    np.testing.assert_array_equal(mask_autocorrelation(mask, image_shape, channels), expected)
    as_float = mask_autocorrelation(mask.float(), image_shape, channels)
    np.testing.assert_array_equal(as_float, expected)


@pytest.mark.parametrize("sigma", [2.5, 3.0, 4.0])
def test_rf_width_of_gaussian_masks(sigma):
    sigma_x, sigma_y = rf_width(_gaussian_masks(sigma), (1, 32, 32))
    assert sigma_x.dtype == torch.float64 and sigma_x.shape == (256,)
    target = math.sqrt(2) * sigma  # S is the Gaussian profile correlated with itself
    assert abs(sigma_x.median().item() / target - 1) < 0.1
    assert abs(sigma_y.median().item() / target - 1) < 0.1


def test_fit_reaches_the_least_squares_optimum():
    n = 12
    mask = _gaussian_masks(2.0, units=6, n=n, seed=3)
    s = mask_autocorrelation(mask, (1, n, n)).numpy()
    sigma_x, sigma_y = rf_width(mask, (1, n, n))
    dy, dx = np.meshgrid(np.arange(1 - n, n), np.arange(1 - n, n), indexing="ij")
    off = (dx != 0) | (dy != 0)
    for unit, target in enumerate(s):

        def residual(p, target=target):
            exponent = (dx[off] / p[1]) ** 2 + (dy[off] / p[2]) ** 2
            return p[0] * np.exp(-exponent / 2) - target[off]

        fit = least_squares(residual, [target.max(), 2.0, 2.0], bounds=([-np.inf, 0.05, 0.05], 48))
        assert sigma_x[unit].item() == pytest.approx(fit.x[1], rel=1e-3)
        assert sigma_y[unit].item() == pytest.approx(fit.x[2], rel=1e-3)


def test_uniform_mask_is_wider_than_a_localised_one():
    g = torch.Generator().manual_seed(1)
    uniform = torch.rand(64, 3 * 32 * 32, generator=g) < 0.3
    wide = rf_width_summary(uniform, (3, 32, 32))
    narrow = rf_width_summary(_gaussian_masks(3.0, units=64).repeat(1, 3), (3, 32, 32))
    assert wide.median_x > 2 * narrow.median_x and wide.median_y > 2 * narrow.median_y
    assert wide.measured_units == narrow.measured_units == 64


def test_units_without_a_pair_are_nan_and_counted():
    shape = (2, 6, 6)
    mask = torch.cat(
        [
            _mask(shape, []),
            _mask(shape, [(0, 3, 3)]),
            _mask(shape, [(0, 1, 1), (1, 4, 4)]),  # two inputs, but no same-channel pair
            _mask(shape, [(0, 2, 2), (0, 2, 3), (0, 3, 2), (0, 3, 3)]),
        ]
    )
    sigma_x, sigma_y = rf_width(mask, shape)
    assert sigma_x[:3].isnan().all() and sigma_y[:3].isnan().all()
    assert sigma_x[3].isfinite() and sigma_y[3].isfinite()
    assert rf_width(mask, shape, "all")[0][:2].isnan().all()
    assert rf_width(mask, shape, "all")[0][2:].isfinite().all()

    summary = rf_width_summary(mask, shape)
    assert summary.empty_units == 2 and summary.measured_units == 1
    assert summary.median_x == summary.mean_x == sigma_x[3].item()
    assert summary.median_y == summary.mean_y == sigma_y[3].item()


def test_summary_of_empty_layer_is_nan():
    summary = rf_width_summary(torch.zeros(3, 16), (1, 4, 4))
    assert summary.empty_units == 3 and summary.measured_units == 0
    assert all(math.isnan(v) for v in (summary.median_x, summary.mean_x, summary.median_y))
    assert isinstance(summary, RFWidthSummary)


@pytest.mark.parametrize(
    ("mask", "image_shape", "channels", "names"),
    [
        (torch.zeros(48), (3, 4, 4), "same", ["mask", "1-D"]),
        (torch.zeros(2, 3, 16), (3, 4, 4), "same", ["mask", "3-D"]),
        (torch.zeros(2, 47), (3, 4, 4), "same", ["mask", "47", "image_shape", "48"]),
        (torch.zeros(2, 48), (3, 16), "same", ["image_shape", "(3, 16)"]),
        (torch.zeros(2, 48), (3, 4, 4), "cross", ["channels", "cross", "same", "all"]),
    ],
)
def test_invalid_arguments(mask, image_shape, channels, names):
    for function in (mask_autocorrelation, rf_width, rf_width_summary):
        with pytest.raises(ValueError) as error:
            function(mask, image_shape, channels)
        assert all(name in str(error.value) for name in names)


def test_accuracy():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 4.0], [0.5, 0.0, 0.1]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 2])) == 0.5
    assert accuracy(logits, torch.tensor([0, 1, 2, 0])) == 1.0
    with pytest.raises(ValueError, match="labels"):
        accuracy(logits, torch.tensor([0, 1]))


def _laplace_mixture(seed, n=4000, d=16, k=6):
    """Patches that are an orthonormal mixture of k unit-variance Laplace sources, plus noise.

    The sources share one variance, so the covariance cannot tell their directions apart: only
    their non-Gaussianity can.
    """
    g = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0]
    u = torch.rand(n, k, generator=g, dtype=torch.float64) - 0.5
    sources = -(2**-0.5) * u.sign() * torch.log1p(-2 * u.abs())  # Laplace, variance 1
    noise = 0.01 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return (sources @ directions.T + noise).float(), directions.T


def _best_cosines(rows, directions):
    """For each direction, the largest |cosine| with any row."""
    rows = rows.double() / rows.double().norm(dim=1, keepdim=True)
    return (directions @ rows.T).abs().amax(dim=1)


def test_image_components_ica_recovers_independent_sources():
    patches, directions = _laplace_mixture(seed=0)
    pca, ica = image_components(patches, n_components=6, seed=0)
    assert pca.shape == ica.shape == (6, 16)
    assert pca.dtype == ica.dtype == torch.float32
    assert torch.allclose(
        pca.double() @ pca.double().T, torch.eye(6, dtype=torch.float64), atol=1e-5
    )
    assert float(_best_cosines(ica, directions).min()) > 0.9
    # every ICA row is matched to a different source
    rows = ica.double() / ica.double().norm(dim=1, keepdim=True)
    assert sorted((directions @ rows.T).abs().argmax(dim=0).tolist()) == list(range(6))
    # PCA spans the same subspace but cannot single out the sources' directions
    assert float(_best_cosines(pca, directions).min()) < 0.9
    projection = pca.double().T @ pca.double()
    assert torch.allclose(projection @ directions.T, directions.T, atol=0.02)
    # unit rows, largest entry positive
    assert torch.allclose(ica.norm(dim=1), torch.ones(6), atol=1e-5)
    assert bool((ica.gather(1, ica.abs().argmax(dim=1, keepdim=True)) > 0).all())


def test_image_components_are_deterministic_and_flatten_images():
    patches, _ = _laplace_mixture(seed=1, n=600, d=16, k=4)
    first = image_components(patches.reshape(600, 1, 4, 4), n_components=4, seed=3)
    second = image_components(patches, n_components=4, seed=3)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_image_components_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"n_components must be in \[1, min\(N, D\)\] = \[1, 5\]"):
        image_components(torch.randn(10, 5), n_components=6)
    with pytest.raises(ValueError, match="patches must be"):
        image_components(torch.randn(10), n_components=1)
