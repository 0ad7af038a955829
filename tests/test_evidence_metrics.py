"""The evidence metrics (sample precision, density, coverage; latent holes; chunked MI) on known answers."""

import math

import pytest
import torch

from vae_lab.evaluation import latent_holes, metrics, sample_quality


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- density and coverage (Naeem et al. 2020)


def test_two_samples_of_one_distribution_give_the_expected_coverage_and_density_one():
    g = generator(0)
    real, fake = torch.randn(2000, 8, generator=g), torch.randn(2000, 8, generator=g)
    result = sample_quality.density_coverage(real, fake, k=5)
    expected = 1 - math.prod((2000 - i) / (4000 - i) for i in range(1, 6))  # 0.9689
    assert result["coverage"] == pytest.approx(expected, abs=0.015)
    assert result["density"] == pytest.approx(1.0, abs=0.05)
    assert result["covered"].shape == (2000,) and result["covered"].dtype == torch.bool
    assert result["covered"].double().mean().item() == result["coverage"]


def test_one_image_repeated_covers_almost_nothing():
    g = generator(1)
    real = torch.randn(1000, 8, generator=g)
    fake = torch.randn(1, 8, generator=g).repeat(1000, 1)
    result = sample_quality.density_coverage(real, fake, k=5)
    assert result["coverage"] < 0.02


def test_chunking_does_not_change_the_answer_and_images_are_flattened():
    g = generator(2)
    real, fake = torch.rand(300, 1, 4, 4, generator=g), torch.rand(250, 1, 4, 4, generator=g)
    whole = sample_quality.density_coverage(real, fake, k=3)
    chunked = sample_quality.density_coverage(real, fake, k=3, chunk=37)
    assert whole["density"] == chunked["density"] and whole["coverage"] == chunked["coverage"]
    assert torch.equal(whole["covered"], chunked["covered"])


@pytest.mark.parametrize("k", [3, 5])
def test_density_and_coverage_agree_with_the_authors_prdc(k, capsys):
    prdc = pytest.importorskip("prdc")
    g = generator(3)
    real = torch.randn(400, 12, generator=g, dtype=torch.float64)
    fake = 0.8 * torch.randn(500, 12, generator=g, dtype=torch.float64) + 0.3
    theirs = prdc.compute_prdc(real.numpy(), fake.numpy(), nearest_k=k)
    ours = sample_quality.density_coverage(real, fake, k=k, chunk=128)
    assert ours["density"] == pytest.approx(float(theirs["density"]), abs=1e-12)
    assert ours["coverage"] == pytest.approx(float(theirs["coverage"]), abs=1e-12)
    assert 0.1 < ours["coverage"] < 0.99  # a case where the numbers say something


def test_per_class_coverage_finds_the_class_the_fakes_miss():
    g = generator(4)
    centres = torch.tensor([0.0, 10.0, 20.0])
    labels = torch.arange(3).repeat_interleave(300)
    real = torch.randn(900, 4, generator=g)
    real[:, 0] += centres[labels]
    fake = torch.randn(300, 4, generator=g)  # only near class 0
    covered = sample_quality.density_coverage(real, fake)["covered"]
    result = sample_quality.per_class_coverage(covered, labels, 3)
    assert result["per_class"][0] > 0.8
    assert result["per_class"][1] == 0.0 and result["per_class"][2] == 0.0
    assert result["highest"] == result["per_class"][0]
    assert result["lowest"] == 0.0 and result["lowest_class"] == 1
    with_absent = sample_quality.per_class_coverage(covered, labels, [0, 1, 2, 3])
    assert math.isnan(with_absent["per_class"][3]) and with_absent["lowest_class"] == 1


# ---- precision (Kynkaanniemi et al. 2019), with the largest real balls pruned


def test_precision_counts_samples_inside_a_real_ball_by_brute_force():
    g = generator(5)
    real, fake = torch.randn(300, 4, generator=g), 1.5 * torch.randn(200, 4, generator=g)
    distances = torch.cdist(real.double(), real.double())
    radii = distances.kthvalue(4, 1).values  # k = 3: the self-distance is the first
    for quantile in (1.0, 0.5):
        kept = radii <= torch.quantile(radii, quantile)
        inside = (torch.cdist(fake.double(), real[kept].double()) < radii[kept]).any(1)
        found = sample_quality.density_coverage(real, fake, k=3, chunk=64, kept_radii_quantile=quantile)
        assert found["precision"] == pytest.approx(inside.double().mean().item(), abs=1e-12)


def test_an_outlying_real_image_does_not_make_a_far_sample_count_as_real():
    g = generator(6)
    cluster = 0.1 * torch.randn(200, 2, generator=g)
    outliers = torch.tensor([[20.0, 0.0], [20.0, 9.0], [29.0, 0.0], [20.0, -9.0], [11.0, 0.0], [29.0, 9.0]])
    real = torch.cat([cluster, outliers])  # six points far from the cluster and from each other
    far_fake = torch.tensor([[21.0, 1.0]]).repeat(10, 1)  # inside the outliers' wide balls only
    near_fake = 0.1 * torch.randn(10, 2, generator=g)
    every_ball = sample_quality.density_coverage(real, far_fake, k=3, kept_radii_quantile=1.0)
    assert every_ball["precision"] == 1.0  # the plain improved precision is fooled
    assert sample_quality.density_coverage(real, far_fake, k=3)["precision"] == 0.0
    assert sample_quality.density_coverage(real, near_fake, k=3)["precision"] >= 0.3


# ---- aggregate posterior holes (Hoffman and Johnson 2016; Rosca et al. 2018)


def posteriors(kind: str, count: int, dims: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Posteriors whose mixture is N(0, I): equal to the prior, or narrow (variance 0.1) with spread means."""
    if kind == "prior":
        return torch.zeros(count, dims), torch.zeros(count, dims)
    variance = 0.1
    return math.sqrt(1 - variance) * torch.randn(count, dims, generator=g), torch.full(
        (count, dims), math.log(variance)
    )


@pytest.mark.parametrize("dims", [2, 16])
@pytest.mark.parametrize("kind", ["prior", "narrow"])
def test_no_holes_and_no_kl_when_the_aggregate_posterior_is_the_prior(kind, dims):
    mean, log_var = posteriors(kind, 4000, dims, generator(7))
    result = latent_holes.aggregate_posterior_holes(mean, log_var, generator=generator(8))
    assert result["prior_draws"] == 10_000 and result["posterior_draws"] == 10_000
    assert result["density_components"] == 2000
    assert abs(result["hole_mass"] - 0.05) < 0.015
    assert abs(result["hole_mass"] - 0.05) < 4 * result["hole_mass_se"]
    # the truth, 0, lies between the held-out lower bound and the in-sample upper bound
    assert (
        result["kl_q_p"] - 3 * result["kl_q_p_se"]
        <= 0.0
        <= result["kl_q_p_upper"] + 3 * result["kl_q_p_upper_se"]
    )
    if kind == "prior":  # every component is N(0, I): both estimates are exactly 0
        assert abs(result["kl_q_p"]) < 1e-9 and abs(result["kl_q_p_upper"]) < 1e-9
    if kind == "prior" or dims == 2:
        assert abs(result["kl_q_p"]) < 0.02 and result["kl_reliable"]
    else:  # 2,000 components of variance 0.1 in 16-d are far from N(0, I) at any given point
        assert not result["kl_reliable"]


def test_the_plain_in_sample_estimate_sees_holes_that_are_not_there():
    """Why the estimate holds components out: scoring draws with their own components reads holes ~1.
    The metric reports that plain reading as hole_mass_upper, the top of its bracket."""
    g = generator(9)
    mean, log_var = posteriors("narrow", 2000, 16, g)
    q_draws = latent_holes.draws_from_mixture(mean, log_var, 2000, g)
    p_draws = torch.randn(2000, 16, generator=g, dtype=torch.float64)
    level = torch.quantile(latent_holes.mixture_log_density(q_draws, mean, log_var), 0.05)
    plain_hole_mass = (latent_holes.mixture_log_density(p_draws, mean, log_var) < level).double().mean()
    assert plain_hole_mass > 0.9
    narrow = latent_holes.aggregate_posterior_holes(mean, log_var, 4000, 4000, generator=generator(10))
    assert narrow["hole_mass_upper"] > 0.9 and abs(narrow["hole_mass"] - 0.05) < 0.02
    prior = latent_holes.aggregate_posterior_holes(*posteriors("prior", 2000, 16, g), 4000, 4000, generator=g)
    assert abs(prior["hole_mass_upper"] - 0.05) < 0.02  # where the posteriors overlap, the bracket closes


def test_a_shifted_aggregate_posterior_has_holes_and_its_known_kl():
    dims, variance = 16, 0.1
    mean = torch.zeros(1000, dims)  # every component alike: q is exactly N(3 e_0, 0.1 I) for any count
    mean[:, 0] = 3.0
    log_var = torch.full((1000, dims), math.log(variance))
    result = latent_holes.aggregate_posterior_holes(mean, log_var, generator=generator(10))
    # KL(N(3 e_0, 0.1 I) || N(0, I)) = (16 * 0.1 + 9 - 16 - 16 log 0.1) / 2
    expected = 0.5 * (dims * variance + 9 - dims - dims * math.log(variance))
    assert result["kl_q_p"] == pytest.approx(expected, abs=4 * result["kl_q_p_se"])
    assert result["kl_reliable"]
    assert result["hole_mass"] > 0.99


def test_narrow_posteriors_shifted_in_two_dimensions_give_the_known_kl():
    mean, log_var = posteriors("narrow", 4000, 2, generator(11))
    mean[:, 0] += 3.0  # the mixture is N(3 e_0, I): KL = 9 / 2
    result = latent_holes.aggregate_posterior_holes(mean, log_var, generator=generator(12))
    assert result["kl_reliable"]
    lower, upper = result["kl_q_p"], result["kl_q_p_upper"]
    assert lower - 3 * result["kl_q_p_se"] <= 4.5 <= upper + 3 * result["kl_q_p_upper_se"]
    # 0.1: a few Monte Carlo errors (0.03) plus the 2,000 drawn means' own scatter about 3 e_0
    assert lower == pytest.approx(4.5, abs=0.1)
    # q's level sets are circles about 3 e_0; the 5% level is |z - 3 e_0|^2 = chi2_2(0.95) = 5.99, and
    # P(|z - 3 e_0|^2 > 5.99) for z ~ N(0, I) is a noncentral chi2 (2 dof, lambda 9) tail:
    # scipy.stats.ncx2.sf(5.9915, 2, 9) = 0.7707
    assert result["hole_mass"] == pytest.approx(0.7707, abs=0.03)


def test_the_hole_estimates_are_deterministic_given_the_generator():
    mean, log_var = posteriors("narrow", 400, 3, generator(13))
    first = latent_holes.aggregate_posterior_holes(mean, log_var, 2000, 2000, generator=generator(14))
    second = latent_holes.aggregate_posterior_holes(mean, log_var, 2000, 2000, generator=generator(14))
    assert first == second


def test_two_posteriors_or_codes_give_a_zero_spread_bandwidth_not_nan(recwarn):
    # the smallest split: one held-out posterior (or code), whose spread is 0, not std's NaN with a warning
    mean, log_var = posteriors("narrow", 2, 3, generator(17))
    holes = latent_holes.aggregate_posterior_holes(mean, log_var, 200, 200, generator=generator(18))
    assert holes["bandwidth"] == [0.0, 0.0, 0.0]
    kde = latent_holes.gaussian_kde_holes(torch.randn(2, 3, generator=generator(19)), generator=generator(20))
    assert kde["bandwidth"] == pytest.approx([1e-6] * 3)  # a dimension that does not vary, as documented
    for result in (holes, kde):
        assert all(math.isfinite(result[key]) for key in ("hole_mass", "kl_q_p"))
    assert math.isfinite(holes["kl_q_p_se"]) and math.isnan(kde["kl_q_p_se"])  # the KDE's half A: one code
    assert not [w for w in recwarn if "degrees of freedom" in str(w.message)]


@pytest.mark.parametrize("dims", [2, 16])
def test_kde_codes_drawn_from_the_reference_have_no_holes(dims):
    codes = torch.randn(4000, dims, generator=generator(15))
    result = latent_holes.gaussian_kde_holes(codes, generator=generator(16))
    assert result["posterior_draws"] == 2000 and result["density_components"] == 2000
    assert abs(result["hole_mass"] - 0.05) < 0.02
    assert result["kl_q_p"] <= 3 * result["kl_q_p_se"]  # a lower bound on the true 0
    if dims == 2:
        assert result["kl_q_p"] > -0.05
    scott = 2000 ** (-1 / (dims + 4))
    assert result["bandwidth"] == pytest.approx([scott] * dims, rel=0.1)  # a list: summary.json holds it


def test_kde_holes_against_a_fitted_or_a_given_gaussian():
    g = generator(17)
    centre = torch.tensor([2.0, -1.0, 0.5])
    mixing = torch.tensor([[0.5, 0.0, 0.0], [0.2, 0.3, 0.0], [0.1, -0.1, 0.2]])
    codes = centre + torch.randn(4000, 3, generator=g) @ mixing.T
    fitted = latent_holes.gaussian_kde_holes(codes, 5000, fit_reference=True, generator=generator(18))
    assert abs(fitted["hole_mass"] - 0.05) < 0.02
    given = latent_holes.gaussian_kde_holes(
        codes, 5000, reference_mean=centre, reference_covariance=mixing @ mixing.T, generator=generator(18)
    )
    assert abs(given["hole_mass"] - 0.05) < 0.02
    against_prior = latent_holes.gaussian_kde_holes(codes, 5000, generator=generator(18))
    assert against_prior["hole_mass"] > 0.95 and against_prior["kl_q_p"] > 3


def test_two_clusters_leave_a_hole_in_their_fitted_gaussian():
    g = generator(19)
    codes = torch.randn(4000, 2, generator=g)
    codes[:, 0] += torch.where(torch.rand(4000, generator=g) < 0.5, -3.0, 3.0)
    result = latent_holes.gaussian_kde_holes(codes, fit_reference=True, generator=generator(20))
    assert result["hole_mass"] > 0.12
    assert result["kl_q_p"] > 0.2


def test_codes_that_never_vary_in_a_dimension_are_all_hole_and_no_nan():
    codes = torch.randn(1000, 3, generator=generator(23))
    codes[:, 2] = 0.5  # a dead code dimension: q is singular there
    result = latent_holes.gaussian_kde_holes(codes, 2000, generator=generator(24))
    assert result["bandwidth"][2] == 1e-6
    assert result["hole_mass"] == 1.0 and result["kl_q_p"] > 5
    assert all(math.isfinite(v) for v in result.values() if isinstance(v, float))


# ---- mutual information over all posteriors


def test_chunked_mutual_information_equals_the_full_matrix_one():
    g = generator(21)
    mean = 2 * torch.randn(200, 3, generator=g, dtype=torch.float64)
    log_var = torch.randn(200, 3, generator=g, dtype=torch.float64) - 1
    z = mean + (0.5 * log_var).exp() * torch.randn(200, 3, generator=g, dtype=torch.float64)
    full = metrics.mutual_information(mean, log_var, z)
    result = metrics.mutual_information_all(mean, log_var, chunk=16, z=z)
    assert result["mutual_information"] == pytest.approx(full, abs=1e-10)
    assert result["mutual_information_max"] == pytest.approx(math.log(200))
    drawn = metrics.mutual_information_all(mean, log_var, generator=generator(22), chunk=16)
    same_z = mean + (0.5 * log_var).exp() * torch.randn(
        mean.shape, generator=generator(22), dtype=torch.float64
    )
    assert drawn["mutual_information"] == pytest.approx(
        metrics.mutual_information(mean, log_var, same_z), abs=1e-10
    )
    assert 0 < drawn["mutual_information"] <= math.log(200)


def test_scores_of_no_more_real_images_than_k_keep_the_frechet_distance_alone():
    draws = torch.Generator().manual_seed(0)
    real, fake = torch.randn(6, 8, generator=draws), torch.randn(40, 8, generator=draws)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    few = sample_quality.score_samples(real[:5], labels[:5], 2, fake, k=5)
    balls = ("precision", "coverage", "density", "coverage_lowest_class", "coverage_highest_class")
    assert all(few[name] is None for name in balls) and few["coverage_per_class"] is None
    assert few["frechet_distance"] == pytest.approx(sample_quality.frechet_distance(fake, real[:5]))
    enough = sample_quality.score_samples(real, labels, 2, fake, k=5)
    assert all(0 <= enough[name] for name in balls) and len(enough["coverage_per_class"]) == 2
