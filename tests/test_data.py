"""NLGP, its analytic Gaussian clone, the generic Gaussian clone and the dataset container.

Statistical checks compare estimates with their own standard errors (z-scores), so tolerances
follow from the sample size rather than from tuning.
"""

import math

import pytest
import torch

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.data.gaussian_clone import GaussianCloneFit, gaussian_clone
from lotterylab.platform.data.nlgp import (
    make_nlgp,
    make_nlgp_clone,
    nlgp_covariance,
    nlgp_gain_gamma,
    sample_nlgp,
)

GRID, CHANNELS, XI, GAIN = 8, 2, (1.0, 2.5), 3.0
PIXELS = GRID * GRID
MAX_Z = 5.5  # a few thousand correlated entries: |z| beyond 5.5 is ~1e-7 per entry


@pytest.fixture(scope="module")
def nlgp():
    return make_nlgp(GRID, CHANNELS, XI, GAIN, n_train=16000, n_test=2000, seed=0)


@pytest.fixture(scope="module")
def nlgp_clone():
    return make_nlgp_clone(GRID, CHANNELS, XI, GAIN, n_train=16000, n_test=2000, seed=0)


def _per_channel(x, y, k):
    """Class-k images as (samples * channels, Np^2) float64: channels are i.i.d. fields."""
    return x[y == k].double().reshape(-1, PIXELS)


def _second_moments(x):
    """Covariance of zero-mean rows and the standard error of each entry."""
    m = x.shape[0]
    cov = x.T @ x / m
    fourth = (x * x).T @ (x * x) / m
    return cov, ((fourth - cov**2).clamp(min=0) / m).sqrt()


def _centred(x):
    return x - x.mean(0)


def _excess_kurtosis(x):
    """Pooled excess kurtosis of the columns of zero-mean rows ``x``."""
    return float((x**4).mean() / (x**2).mean() ** 2 - 3.0)


def _kurtosis_tolerance(m):
    """Four standard errors of a Gaussian's kurtosis estimate, even if all pixels were one."""
    return 4.0 * math.sqrt(24.0 / m)


def test_gain_gamma_normalises_erf_to_unit_variance():
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for gain in (0.1, 1.0, 3.0):
        second = float((torch.erf(gain * z / math.sqrt(2.0)) ** 2).mean())
        assert second == pytest.approx(nlgp_gain_gamma(gain), rel=5e-3)


def test_nlgp_shapes_dtypes_and_balanced_shuffled_labels():
    generator = torch.Generator().manual_seed(0)
    x, y = sample_nlgp(1001, GRID, CHANNELS, (1.0, 2.0, 3.0), GAIN, generator)
    assert x.shape == (1001, CHANNELS * PIXELS) and x.dtype == torch.float32
    assert y.shape == (1001,) and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [334, 334, 333]
    assert not bool((y[1:] >= y[:-1]).all())


def test_nlgp_pixels_have_zero_mean_and_unit_variance(nlgp):
    x = nlgp.train_x.double()
    m = x.shape[0]
    mean, var = x.mean(0), x.var(0)
    assert float(mean.abs().max()) < MAX_Z * float(x.std(0).max()) / math.sqrt(m)
    var_se = ((x**2).var(0) / m).sqrt()
    assert float(((var - 1.0) / var_se).abs().max()) < MAX_Z


@pytest.mark.parametrize("k", range(len(XI)))
def test_nlgp_covariance_matches_the_analytic_one(nlgp, k):
    cov, se = _second_moments(_per_channel(nlgp.train_x, nlgp.train_y, k))
    target = nlgp_covariance(GRID, XI[k], GAIN)
    assert torch.allclose(target.diagonal(), torch.ones(PIXELS, dtype=torch.float64))
    assert float(((cov - target) / se).abs().max()) < MAX_Z


def test_nlgp_channels_are_independent(nlgp):
    x = nlgp.train_x[nlgp.train_y == 0].double().reshape(-1, CHANNELS, PIXELS)
    a, b = x[:, 0], x[:, 1]
    cross = a.T @ b / x.shape[0]
    se = ((a * a).T @ (b * b) / x.shape[0] - cross**2).clamp(min=0).sqrt() / math.sqrt(x.shape[0])
    assert float((cross / se).abs().max()) < MAX_Z


def test_nlgp_is_non_gaussian_at_large_gain_and_gaussian_at_small_gain(nlgp):
    kurtosis = _excess_kurtosis(nlgp.train_x.double())
    assert -1.9 < kurtosis < -1.5  # about -1.76 at gain 3: nearly binary pixels
    small = make_nlgp(GRID, 1, XI, 0.05, n_train=16000, n_test=2, seed=1)
    assert abs(_excess_kurtosis(small.train_x.double())) < _kurtosis_tolerance(16000)


def test_nlgp_clone_is_gaussian_with_the_nlgp_covariance(nlgp, nlgp_clone):
    assert abs(_excess_kurtosis(nlgp_clone.train_x.double())) < _kurtosis_tolerance(16000)
    assert torch.bincount(nlgp_clone.train_y).tolist() == [8000, 8000]
    for k, xi in enumerate(XI):
        clone_cov, clone_se = _second_moments(
            _per_channel(nlgp_clone.train_x, nlgp_clone.train_y, k)
        )
        nlgp_cov, nlgp_se = _second_moments(_per_channel(nlgp.train_x, nlgp.train_y, k))
        target = nlgp_covariance(GRID, xi, GAIN)
        assert float(((clone_cov - target) / clone_se).abs().max()) < MAX_Z
        pooled_se = (clone_se**2 + nlgp_se**2).sqrt()
        assert float(((clone_cov - nlgp_cov) / pooled_se).abs().max()) < MAX_Z


def test_nlgp_covariance_test_detects_a_missing_asin_transform(nlgp):
    """The tolerance above is tight enough to reject the raw field correlation."""
    cov, se = _second_moments(_per_channel(nlgp.train_x, nlgp.train_y, 1))
    idx = torch.arange(GRID, dtype=torch.float64)
    c1 = torch.exp(-((idx[:, None] - idx[None, :]) ** 2) / XI[1] ** 2)
    assert float(((cov - torch.kron(c1, c1)) / se).abs().max()) > 2 * MAX_Z


@pytest.mark.parametrize("make", [make_nlgp, make_nlgp_clone])
def test_generators_are_deterministic_in_the_seed(make):
    a = make(GRID, CHANNELS, XI, GAIN, n_train=300, n_test=100, seed=7)
    b = make(GRID, CHANNELS, XI, GAIN, n_train=300, n_test=100, seed=7)
    c = make(GRID, CHANNELS, XI, GAIN, n_train=300, n_test=100, seed=8)
    for field in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.train_x, c.train_x)
    assert a.image_shape == (CHANNELS, GRID, GRID) and a.num_classes == len(XI)
    assert torch.bincount(a.test_y).tolist() == [50, 50]


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"grid": 1}, "grid"),
        ({"channels": 0}, "channels"),
        ({"xi": []}, "xi"),
        ({"xi": [1.0, -2.0]}, "xi"),
        ({"gain": 0.0}, "gain"),
        ({"n_train": 1}, "n_train"),
        ({"n_test": 1}, "n_test"),
    ],
)
@pytest.mark.parametrize("make", [make_nlgp, make_nlgp_clone])
def test_generators_reject_bad_arguments(make, kwargs, argument):
    args = {"grid": GRID, "channels": 1, "xi": XI, "gain": GAIN, "n_train": 10, "n_test": 10}
    with pytest.raises(ValueError, match=argument):
        make(**{**args, **kwargs}, seed=0)


@pytest.fixture(scope="module")
def shifted_source(nlgp):
    """NLGP with class-dependent means, so the clone must track non-zero means too."""
    shift = lambda x, y: x + 0.5 * (y[:, None] + 1.0)  # noqa: E731
    return ImageDataset(
        "shifted",
        shift(nlgp.train_x[:8000], nlgp.train_y[:8000]),
        nlgp.train_y[:8000],
        shift(nlgp.test_x, nlgp.test_y),
        nlgp.test_y,
        nlgp.image_shape,
        nlgp.num_classes,
    )


def _fit(x, y, batch_sizes):
    fit = GaussianCloneFit((CHANNELS, GRID, GRID), len(XI))
    for xb, yb in zip(x.split(batch_sizes), y.split(batch_sizes), strict=True):
        fit.update(xb, yb)
    return fit.finalize()


def test_clone_fit_is_the_empirical_mean_and_covariance_plus_ridge(shifted_source):
    x, y = shifted_source.train_x, shifted_source.train_y
    model = _fit(x, y, [x.shape[0]])
    assert model.means.shape == (len(XI), CHANNELS, PIXELS)
    assert model.covariances.shape == (len(XI), CHANNELS, PIXELS, PIXELS)
    for k in range(len(XI)):
        images = x[y == k].double().reshape(-1, CHANNELS, PIXELS)
        for c in range(CHANNELS):
            expected = torch.cov(images[:, c].T) + 1e-3 * torch.eye(PIXELS, dtype=torch.float64)
            assert torch.allclose(model.means[k, c], images[:, c].mean(0), rtol=0, atol=1e-12)
            assert torch.allclose(model.covariances[k, c], expected, rtol=0, atol=1e-12)


def test_streaming_fit_equals_one_shot_fit(shifted_source):
    x, y = shifted_source.train_x, shifted_source.train_y
    one_shot = _fit(x, y, [x.shape[0]])
    streamed = _fit(x, y, [1, 999, 2500, 7, x.shape[0] - 3507])
    assert torch.allclose(streamed.means, one_shot.means, rtol=1e-12, atol=1e-14)
    assert torch.allclose(streamed.covariances, one_shot.covariances, rtol=1e-12, atol=1e-14)


def test_fit_rejects_classes_without_enough_images():
    fit = GaussianCloneFit((1, 2, 2), 3)
    fit.update(torch.zeros(4, 4), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match=r"classes \[2\]"):
        fit.finalize()


def test_gaussian_clone_matches_source_statistics(shifted_source):
    clone = gaussian_clone(shifted_source, seed=5)
    assert clone.name == "shifted_gaussian_clone"
    assert clone.image_shape == shifted_source.image_shape
    for split in ("train_y", "test_y"):
        assert torch.equal(
            torch.bincount(getattr(clone, split)), torch.bincount(getattr(shifted_source, split))
        )
    for k in range(len(XI)):
        for c in range(CHANNELS):
            src = shifted_source.train_x[shifted_source.train_y == k].double()
            cln = clone.train_x[clone.train_y == k].double()
            src, cln = (t.reshape(-1, CHANNELS, PIXELS)[:, c] for t in (src, cln))
            mean_se = (src.var(0) / src.shape[0] + cln.var(0) / cln.shape[0]).sqrt()
            assert float(((cln.mean(0) - src.mean(0)) / mean_se).abs().max()) < MAX_Z
            src_cov, src_se = _second_moments(_centred(src))
            cln_cov, cln_se = _second_moments(_centred(cln))
            pooled_se = (src_se**2 + cln_se**2).sqrt()
            assert float(((cln_cov - src_cov) / pooled_se).abs().max()) < MAX_Z
            assert abs(_excess_kurtosis(_centred(cln))) < _kurtosis_tolerance(cln.shape[0])
            assert _excess_kurtosis(_centred(src)) < -1.0


def test_gaussian_clone_is_deterministic_in_the_seed(shifted_source):
    a, b = gaussian_clone(shifted_source, seed=1), gaussian_clone(shifted_source, seed=1)
    c = gaussian_clone(shifted_source, seed=2, name="other")
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)
    assert c.name == "other"


def _dataset(**overrides):
    fields = {
        "name": "toy",
        "train_x": torch.zeros(4, 12),
        "train_y": torch.tensor([0, 1, 2, 0]),
        "test_x": torch.zeros(2, 12),
        "test_y": torch.tensor([1, 2]),
        "image_shape": (3, 2, 2),
        "num_classes": 3,
    }
    return ImageDataset(**{**fields, **overrides})


def test_dataset_accepts_valid_fields_and_reports_input_dim():
    assert _dataset().input_dim == 12


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"train_x": torch.zeros(4, 12, dtype=torch.float64)}, "train_x"),
        ({"train_x": torch.zeros(4, 11)}, "train_x"),
        ({"test_x": torch.zeros(2, 3, 2, 2)}, "test_x"),
        ({"train_y": torch.tensor([0, 1, 2, 0], dtype=torch.int32)}, "train_y"),
        ({"test_y": torch.tensor([1, 2, 0])}, "test_y"),
        ({"test_y": torch.tensor([1, 3])}, "test_y"),
        ({"image_shape": (3, 4)}, "image_shape"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_dataset_validation_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        _dataset(**overrides)


def test_clone_model_shapes_when_classes_and_channels_differ():
    source = make_nlgp(3, 1, (1.0, 2.0, 3.0), GAIN, n_train=300, n_test=30, seed=4)
    fit = GaussianCloneFit(source.image_shape, source.num_classes)
    fit.update(source.train_x, source.train_y)
    model = fit.finalize()
    assert model.means.shape == (3, 1, 9) and model.covariances.shape == (3, 1, 9, 9)
    x, y = model.sample([5, 0, 2], torch.Generator().manual_seed(0))
    assert x.shape == (7, 9) and x.dtype == torch.float32
    assert torch.bincount(y, minlength=3).tolist() == [5, 0, 2]
    clone = gaussian_clone(source, seed=0)
    assert clone.train_x.shape == source.train_x.shape
