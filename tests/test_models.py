import pytest
import torch

from vae_lab.models import VAE, Autoencoder, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from vae_lab.speed import SpeedOptions, speed_up
from vae_lab.speed.layers import FastDropout


def conv_pair(latent_dim, **encoder_options):
    return ConvEncoder(**encoder_options), ConvDecoder(latent_dim)


def mlp_pair(latent_dim):
    return MLPEncoder(), MLPDecoder(latent_dim)


@pytest.mark.parametrize("latent_dim", [1, 2, 5, 32])
@pytest.mark.parametrize("make_pair", [conv_pair, mlp_pair])
def test_autoencoder_shapes(latent_dim, make_pair):
    model = Autoencoder(latent_dim, *make_pair(latent_dim))
    images = torch.rand(3, 1, 28, 28)
    output = model(images)
    assert output.recon_logits.shape == (3, 1, 28, 28)
    assert output.code.shape == (3, latent_dim)
    assert output.mean is None and output.log_var is None
    assert model.encode(images).shape == (3, latent_dim)
    decoded = model.decode(torch.zeros(4, latent_dim))
    assert decoded.shape == (4, 1, 28, 28) and decoded.min() >= 0 and decoded.max() <= 1
    assert model.sample(6).shape == (6, 1, 28, 28)


@pytest.mark.parametrize("latent_dim", [1, 2, 5, 32])
@pytest.mark.parametrize("make_pair", [conv_pair, mlp_pair])
def test_vae_shapes(latent_dim, make_pair):
    model = VAE(latent_dim, *make_pair(latent_dim))
    images = torch.rand(3, 1, 28, 28)
    output = model(images)
    assert output.recon_logits.shape == (3, 1, 28, 28)
    for tensor in (output.code, output.mean, output.log_var):
        assert tensor.shape == (3, latent_dim)
    mean, log_var = model.encode(images)
    assert mean.shape == log_var.shape == (3, latent_dim)


def test_conv_encoder_matches_the_article():
    encoder = ConvEncoder(batch_norm=True, dropout=0.3)
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 64, 64]
    assert [c.stride[0] for c in convs] == [1, 2, 2, 1]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert encoder.feature_dim == 7 * 7 * 64
    # the article's Keras order, in torch.nn's own layers only
    kinds = [type(m) for m in encoder.body]
    block = [torch.nn.Conv2d, torch.nn.ReLU, torch.nn.BatchNorm2d, torch.nn.Dropout]
    assert kinds == block * 4 + [torch.nn.Flatten]
    assert all(m.p == 0.3 for m in encoder.body if isinstance(m, torch.nn.Dropout))
    assert [type(m) for m in ConvEncoder().body][:3] == [torch.nn.Conv2d, torch.nn.ReLU, torch.nn.Conv2d]
    decoder = ConvDecoder(2)
    transposed = [m for m in decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [c.out_channels for c in transposed] == [64, 64, 32, 1]
    assert [c.stride[0] for c in transposed] == [1, 2, 2, 1]
    assert all(type(c) is torch.nn.ConvTranspose2d for c in transposed)
    modules = {type(m).__module__ for model in (encoder, decoder) for m in model.modules()}
    assert modules == {"vae_lab.models.conv"} | {m for m in modules if m.startswith("torch.nn.modules.")}


def test_in_place_relus_and_dropout_change_no_output_and_no_gradient():
    """The conv pair's ReLUs, and its dropout after BatchNorm, work in place: the numbers of out of place."""
    x = torch.rand(6, 1, 28, 28)
    results = []
    for in_place in (True, False):
        torch.manual_seed(0)  # the same weights and the same dropout masks and noise
        encoder = ConvEncoder(batch_norm=True, dropout=0.3)
        model = VAE(2, encoder, ConvDecoder(2)).train()
        speed_up(model, SpeedOptions(fast_dropout=True))  # the layers apart: ReLU, BatchNorm, FastDropout
        layers = [m for m in model.modules() if isinstance(m, (torch.nn.ReLU, FastDropout))]
        assert all(layer.inplace for layer in layers) and len(layers) == 12
        for layer in layers:
            layer.inplace = in_place
        output = model(x)
        loss = output.recon_logits.square().mean() + output.mean.square().sum() + output.log_var.sum()
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        results.append([output.recon_logits.detach(), output.code.detach(), *grads])
    for in_place, plain in zip(*results, strict=True):
        assert torch.equal(in_place, plain)
    after_relu = speed_up(ConvEncoder(batch_norm=False, dropout=0.3), SpeedOptions(fast_dropout=True))
    assert type(after_relu.body[2]) is FastDropout and not after_relu.body[2].inplace  # out of place


def test_reparameterisation_gives_gradients_to_mean_and_log_variance():
    model = VAE(2, *conv_pair(2))
    output = model(torch.rand(4, 1, 28, 28))
    output.code.sum().backward()
    assert model.to_mean.weight.grad.abs().sum() > 0
    assert model.to_log_var.weight.grad.abs().sum() > 0


def test_reparameterised_code_has_the_posterior_spread():
    model = VAE(2, *mlp_pair(2))
    with torch.no_grad():
        model.to_mean.bias.fill_(3.0)
        model.to_mean.weight.zero_()
        model.to_log_var.weight.zero_()
        model.to_log_var.bias.fill_(2 * torch.log(torch.tensor(0.5)).item())  # sigma = 0.5
        codes = model(torch.rand(20000, 1, 28, 28)).code
    assert codes.mean().item() == pytest.approx(3.0, abs=0.02)
    assert codes.std().item() == pytest.approx(0.5, abs=0.02)


def test_sample_is_reproducible_with_a_generator():
    model = VAE(2, *mlp_pair(2))
    first = model.sample(5, torch.Generator().manual_seed(3))
    second = model.sample(5, torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
