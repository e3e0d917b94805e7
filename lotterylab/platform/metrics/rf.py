"""Receptive-field widths of first-layer units, read off their masks.

The receptive-field width of a first-layer unit is read off its mask autocorrelation
S(d) = #{pairs of kept inputs at pixel offset d}: a 2-D Gaussian fitted to S (d = 0 left out)
gives sigma_x and sigma_y in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHANNEL_MODES = ("same", "all")
SIGMA_MIN = 0.05
SIGMA_MAX_PER_PIXEL = 4.0
FIT_ITERATIONS = 50
# the fit's basis functions (1, dx^2, dy^2) as powers of dx^2 (row 0) and dy^2 (row 1)
_BASIS_POWERS = torch.tensor([[0, 1, 0], [0, 0, 1]])


def _validate(mask: torch.Tensor, image_shape: tuple[int, int, int], channels: str) -> None:
    if channels not in CHANNEL_MODES:
        raise ValueError(f"channels must be one of {CHANNEL_MODES}, got {channels!r}")
    if len(image_shape) != 3 or any(int(n) < 1 for n in image_shape):
        raise ValueError(
            f"image_shape must be three positive sizes (C, Np, Np), got {tuple(image_shape)}"
        )
    if mask.dim() != 2:
        raise ValueError(
            f"mask must be 2-D (units, C*Np*Np), got {mask.dim()}-D shape {tuple(mask.shape)}"
        )
    c, ny, nx = image_shape
    if mask.shape[1] != c * ny * nx:
        raise ValueError(
            f"mask has {mask.shape[1]} inputs per unit but image_shape {tuple(image_shape)} "
            f"allows only C*Np*Np = {c * ny * nx}"
        )


def mask_autocorrelation(
    mask: torch.Tensor, image_shape: tuple[int, int, int], channels: str = "same"
) -> torch.Tensor:
    """Per-unit autocorrelation S(d) of a first-layer mask, self-pairs left out.

    ``mask`` is (H, C*Np*Np), nonzero entries are kept inputs, laid out as c*Np*Np + y*Np + x.
    Returns a float64 tensor (H, 2Np-1, 2Np-1); axis 1 is dy, axis 2 is dx, and index
    (Np-1, Np-1) is d = 0. ``channels="same"`` counts pairs within each channel (summed over
    channels), ``"all"`` counts pairs across any two channels. The image may be non-square,
    (C, Ny, Nx), giving (H, 2Ny-1, 2Nx-1).
    """
    _validate(mask, image_shape, channels)
    c, ny, nx = image_shape
    m = mask.ne(0).to(torch.float64).reshape(-1, c, ny, nx)
    size = (2 * ny - 1, 2 * nx - 1)  # zero padding: no lag wraps around
    spectrum = torch.fft.rfft2(m, s=size)
    if channels == "all":
        spectrum = spectrum.sum(dim=1, keepdim=True)
    power = spectrum.abs().square().sum(dim=1)
    s = torch.fft.fftshift(torch.fft.irfft2(power, s=size), dim=(-2, -1)).round()
    s[:, ny - 1, nx - 1] -= m.sum(dim=(1, 2, 3))  # every kept input paired with itself
    return s


def rf_width(
    mask: torch.Tensor, image_shape: tuple[int, int, int], channels: str = "same"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit receptive-field widths (sigma_x, sigma_y) in pixels, float64 of shape (H,).

    A Gaussian A*exp(-dx^2/(2 sx^2) - dy^2/(2 sy^2)) is least-squares fitted to S(d), d != 0,
    for all units at once: second moments start it, Levenberg-Marquardt refines it, and the
    sigmas are clamped to [0.05, 4*Np]. Units with fewer than two kept inputs, or with no
    pair at a nonzero offset, get NaN.
    """
    s = mask_autocorrelation(mask, image_shape, channels)
    _, ny, nx = image_shape
    s[:, ny - 1, nx - 1] = 0.0  # the fit leaves d = 0 out
    measurable = (mask.ne(0).sum(dim=1) >= 2) & (s.sum(dim=(1, 2)) > 0)
    s = s / s.amax(dim=(1, 2), keepdim=True).clamp_min(1.0)  # amplitude ~1 for every unit

    dx = torch.arange(1 - nx, nx, dtype=torch.float64, device=s.device)
    dy = torch.arange(1 - ny, ny, dtype=torch.float64, device=s.device)
    mass = s.sum(dim=(1, 2)).clamp_min(1e-300)
    second_moments = torch.stack(
        [(s.sum(dim=1) @ dx.square()) / mass, (s.sum(dim=2) @ dy.square()) / mass], dim=1
    )
    lower = torch.full((2,), SIGMA_MIN, dtype=torch.float64, device=s.device)
    upper = SIGMA_MAX_PER_PIXEL * torch.tensor([nx, ny], dtype=torch.float64, device=s.device)
    sigma = _fit_gaussian(s, dx, dy, second_moments.sqrt().clamp(lower, upper), lower, upper)
    sigma = torch.where(measurable[:, None], sigma, torch.nan)
    return sigma[:, 0], sigma[:, 1]


def _square_powers(d: torch.Tensor, count: int) -> torch.Tensor:
    """(L, count) table of (d^2)^k for k = 0 .. count-1."""
    return d.square()[:, None] ** torch.arange(count, device=d.device)


def _gaussian_sums(
    s: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over d != 0 that the least-squares fit needs, for g(d) = exp(-dx^2/2sx^2 - dy^2/2sy^2).

    Returns ``moments`` (H, 3, 3), the Gram matrix of g * (1, dx^2, dy^2), and ``overlap``
    (H, 3), the sums of S * g * (1, dx^2, dy^2). The Gaussian is separable, so each sum is a
    product of 1-D sums, except the overlap with S, which is one batched bilinear form.
    """
    gx = torch.exp(-0.5 * dx.square() / sigma[:, :1].square())
    gy = torch.exp(-0.5 * dy.square() / sigma[:, 1:].square())
    x_sums = gx.square() @ _square_powers(dx, 3)  # sums of gx^2 * dx^(0, 2, 4)
    y_sums = gy.square() @ _square_powers(dy, 3)
    x_power, y_power = _BASIS_POWERS.to(s.device)
    moments = (
        x_sums[:, x_power[:, None] + x_power[None, :]]
        * y_sums[:, y_power[:, None] + y_power[None, :]]
    )
    moments[:, 0, 0] -= 1.0  # the centre, g = 1, is left out
    gx_powers = gx[:, :, None] * _square_powers(dx, 2)  # (H, Lx, 2)
    gy_powers = gy[:, :, None] * _square_powers(dy, 2)
    overlaps = gy_powers.transpose(1, 2) @ s @ gx_powers  # (H, dy power, dx power)
    return moments, overlaps[:, y_power, x_power]


def _fit_gaussian(
    s: torch.Tensor,
    dx: torch.Tensor,
    dy: torch.Tensor,
    sigma: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
) -> torch.Tensor:
    """Batched Levenberg-Marquardt least-squares fit of A*g(d) to ``s`` (H, Ly, Lx), d != 0.

    Parameters are (A, sigma_x, sigma_y); ``sigma`` (H, 2) is the start and the sigmas stay
    within [lower, upper]. Returns the fitted sigmas (H, 2).
    """

    def cost(a: torch.Tensor, moments: torch.Tensor, overlap: torch.Tensor) -> torch.Tensor:
        return a.square() * moments[:, 0, 0] - 2 * a * overlap[:, 0]  # sum (A g - S)^2 - sum S^2

    moments, overlap = _gaussian_sums(s, dx, dy, sigma)
    amplitude = overlap[:, 0] / moments[:, 0, 0].clamp_min(1e-300)  # best A for the start
    params = torch.cat([amplitude[:, None], sigma], dim=1)
    error = cost(amplitude, moments, overlap)
    damping = torch.full_like(error, 1e-3)
    for _ in range(FIT_ITERATIONS):
        a = params[:, :1]
        # Jacobian columns are g * (1, dx^2, dy^2) scaled by (1, A/sx^3, A/sy^3)
        scale = torch.cat([torch.ones_like(a), a / params[:, 1:] ** 3], dim=1)
        jtj = scale[:, :, None] * moments * scale[:, None, :]
        jtr = scale * (a * moments[:, 0] - overlap)
        diagonal = torch.diagonal(jtj, dim1=1, dim2=2).clamp_min(1e-12)
        step = torch.linalg.solve(jtj + torch.diag_embed(damping[:, None] * diagonal), -jtr)
        trial = params + step
        trial[:, 1:] = trial[:, 1:].clamp(lower, upper)
        trial_moments, trial_overlap = _gaussian_sums(s, dx, dy, trial[:, 1:])
        trial_error = cost(trial[:, 0], trial_moments, trial_overlap)
        better = trial_error < error  # NaN steps are never taken
        params = torch.where(better[:, None], trial, params)
        moments = torch.where(better[:, None, None], trial_moments, moments)
        overlap = torch.where(better[:, None], trial_overlap, overlap)
        error = torch.where(better, trial_error, error)
        damping = torch.where(better, damping / 3, damping * 4).clamp(1e-10, 1e10)
    return params[:, 1:]


@dataclass(frozen=True)
class RFWidthSummary:
    """Medians and means over units with a finite width (NaN if none).

    ``empty_units`` have fewer than two kept inputs; ``measured_units`` have a finite width.
    """

    median_x: float
    mean_x: float
    median_y: float
    mean_y: float
    empty_units: int
    measured_units: int


def rf_width_summary(
    mask: torch.Tensor, image_shape: tuple[int, int, int], channels: str = "same"
) -> RFWidthSummary:
    """Summary of :func:`rf_width` over the units of one layer."""
    sigma_x, sigma_y = rf_width(mask, image_shape, channels)
    measured = sigma_x.isfinite() & sigma_y.isfinite()
    x, y = sigma_x[measured], sigma_y[measured]

    def median(v: torch.Tensor) -> float:
        return float(v.quantile(0.5)) if len(v) else float("nan")

    def mean(v: torch.Tensor) -> float:
        return float(v.mean()) if len(v) else float("nan")

    return RFWidthSummary(
        median_x=median(x),
        mean_x=mean(x),
        median_y=median(y),
        mean_y=mean(y),
        empty_units=int((mask.ne(0).sum(dim=1) < 2).sum()),
        measured_units=int(measured.sum()),
    )
