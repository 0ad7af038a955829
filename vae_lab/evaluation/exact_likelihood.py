"""The exact marginal likelihood of a model with a 2-d latent, by quadrature over the prior.

log p(x) = log integral p(x|z) p(z) dz. In two dimensions the integral is a sum over one grid of
codes: decode the grid once, then log p(x|z_j) for every image and grid point is one matrix product
(the Bernoulli log-likelihood is linear in x, the Gaussian one linear in x beside |x|^2), and
log p(x) = logsumexp_j [log p(x|z_j) + log w_j]. The grid is the trapezoid rule in the prior's
whitened coordinates u (z = mean + L u), whose error for smooth integrands falls exponentially with
the points per width of the integrand's peak; whether the grid resolves it is measured by the same sum
over every other grid point (twice the spacing): where the two agree the finer one is converged.
"""

import math
from dataclasses import dataclass

import torch


@dataclass
class QuadratureGrid:
    """Grid points z_j (G, 2) of a Gaussian p(z) and the log of their weights w_j, p(z_j) dz summed to
    about 1; `coarse` selects the points of the grid of twice the spacing (its weights: 4 w_j)."""

    codes: torch.Tensor  # (G, 2), float64
    log_weights: torch.Tensor  # (G,)
    coarse: torch.Tensor  # (G_coarse,) indices into codes
    points_per_axis: int
    span: float  # in standard deviations of p(z), each way


def gaussian_grid(points_per_axis: int, span: float, mean=None, covariance=None) -> QuadratureGrid:
    """Give back the trapezoid grid of N(mean, covariance) (N(0, I) by default) over [-span, span]^2
    standard deviations: points_per_axis (odd, so the coarse grid shares the ends) nodes per axis."""
    if points_per_axis < 5 or points_per_axis % 2 == 0:
        raise ValueError(f"points_per_axis must be odd and at least 5, not {points_per_axis}")
    axis = torch.linspace(-span, span, points_per_axis, dtype=torch.float64)
    spacing = axis[1] - axis[0]
    u2, u1 = torch.meshgrid(axis, axis, indexing="ij")
    whitened = torch.stack([u1.flatten(), u2.flatten()], 1)  # (G, 2)
    mean = torch.zeros(2, dtype=torch.float64) if mean is None else torch.as_tensor(mean).double().cpu()
    covariance = torch.eye(2, dtype=torch.float64) if covariance is None else torch.as_tensor(covariance)
    cholesky = torch.linalg.cholesky(covariance.double().cpu())
    # p(z) dz = N(u; 0, I) du under z = mean + L u: the weights are the whitened density times du
    log_weights = -0.5 * whitened.pow(2).sum(1) - math.log(2 * math.pi) + 2 * spacing.log()
    index = torch.arange(points_per_axis)
    every_other = index[::2]
    coarse = (every_other[:, None] * points_per_axis + every_other[None, :]).flatten()
    return QuadratureGrid(mean + whitened @ cholesky.T, log_weights, coarse, points_per_axis, span)


def log_marginal(
    images: torch.Tensor, grid: QuadratureGrid, log_likelihood_matrix, chunk: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Give back (log p(x) on the grid, log p(x) on the grid of twice the spacing) per image: (N,) each.

    log_likelihood_matrix(images_chunk) gives log p(x|z_j) (chunk, G) for the grid's points (a pixel
    likelihood's `log_likelihood_matrix` with the grid's decoded logits); at most chunk x G values exist
    at once.
    """
    log_weights = grid.log_weights.to(images.device)
    fine, coarse = [], []
    for start in range(0, len(images), chunk):
        joint = log_likelihood_matrix(images[start : start + chunk]).double() + log_weights  # (chunk, G)
        fine.append(torch.logsumexp(joint, 1))
        coarse.append(torch.logsumexp(joint[:, grid.coarse.to(images.device)], 1) + math.log(4))
    return torch.cat(fine).cpu(), torch.cat(coarse).cpu()


def quadrature_summary(
    log_px: torch.Tensor, log_px_coarse: torch.Tensor, grid: QuadratureGrid, tolerance_nats: float = 0.01
) -> dict:
    """Give back the exact negative log-likelihood in nats per image and how far the grid resolves it.

    - nll: -mean log p(x); spacing_change_nats: |nll - the same on the grid of twice the spacing|,
      mean_abs_spacing_change_nats and max_abs_spacing_change_nats the same per image;
    - resolved: the mean per-image change within tolerance_nats (the finer grid, whose error falls
      exponentially with the spacing, is then far closer still); false says the grid is too coarse for
      the integrand's peaks, and the nll is not to be trusted.
    """
    change = (log_px - log_px_coarse).abs()
    return {
        "nll": -log_px.mean().item(),
        "images": len(log_px),
        "spacing_change_nats": abs(log_px.mean().item() - log_px_coarse.mean().item()),
        "mean_abs_spacing_change_nats": change.mean().item(),
        "max_abs_spacing_change_nats": change.max().item(),
        "resolved": change.mean().item() <= tolerance_nats,
        "grid_points": grid.points_per_axis,
        "span_sd": grid.span,
    }
