"""The speed transform (vae_lab/speed/transform.py): faster layers swapped into the plain model after it is
built, with the same parameters, buffers and state-dict keys, so that checkpoints go either way."""

import pytest
import torch
from torch import nn

from tests.conftest import AUTO, sped_up
from vae_lab.models import VAE, Autoencoder, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from vae_lab.speed import SpeedOptions, speed_up
from vae_lab.speed.layers import (
    FastConvTranspose2d,
    FastDropout,
    OneChannelConvTranspose2d,
    ReluBatchNormDropout,
)


def article_vae(seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(2, ConvEncoder(batch_norm=True, dropout=0.3), ConvDecoder(2))


def test_the_transform_swaps_the_article_s_layers_for_the_fast_ones():
    model = sped_up(article_vae())
    kinds = [type(m) for m in model.encoder.body][:4]
    assert kinds == [nn.Conv2d, nn.Identity, ReluBatchNormDropout, nn.Identity]
    assert model.encoder.body[2].dropout.p == 0.3
    transposed = [type(m) for m in model.decoder.body if isinstance(m, nn.ConvTranspose2d)]
    assert transposed == [FastConvTranspose2d] * 3 + [OneChannelConvTranspose2d]
    separate = sped_up(article_vae(), fused_blocks=False)
    assert [type(m) for m in separate.encoder.body][:4] == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d, FastDropout]
    assert separate.encoder.body[3].inplace  # after BatchNorm: in place
    no_kernel = sped_up(article_vae(), one_channel_kernel=False)
    assert type(no_kernel.decoder.body[-1]) is FastConvTranspose2d
    off = speed_up(article_vae(), SpeedOptions())
    assert all(type(m).__module__.startswith(("torch.nn", "vae_lab.models")) for m in off.modules())


def test_the_transform_keeps_the_parameters_themselves_and_the_state_dict_keys():
    model = article_vae()
    before = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    keys = list(model.state_dict())
    optimizer = torch.optim.Adam(model.parameters())  # built before the transform: still the model's
    speed_up(model, AUTO)
    assert list(model.state_dict()) == keys
    assert all(before[name] is parameter for name, parameter in model.named_parameters())
    assert all(buffers[name] is buffer for name, buffer in model.named_buffers())
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("make", ["vae", "ae", "mlp_vae"])
def test_a_state_dict_trained_with_speed_auto_loads_into_speed_off_and_back_with_the_same_outputs(make):
    def build(seed):
        torch.manual_seed(seed)
        if make == "mlp_vae":
            return VAE(2, MLPEncoder(), MLPDecoder(2))
        if make == "ae":
            return Autoencoder(2, ConvEncoder(), ConvDecoder(2))
        return VAE(2, ConvEncoder(batch_norm=True, dropout=0.3), ConvDecoder(2))

    fast = sped_up(build(0))
    x = torch.rand(64, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(fast.parameters(), lr=1e-2)
    for _ in range(3):  # trained, so that BatchNorm's running statistics move off their start
        output = fast.train()(x)
        loss = nn.functional.binary_cross_entropy_with_logits(output.recon_logits, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    plain = build(1)  # other weights, until the state dict arrives
    plain.load_state_dict(fast.state_dict())  # strict: the same keys
    codes = torch.randn(8, 2)
    fast.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain.decoder(codes), fast.decoder(codes))
        torch.testing.assert_close(plain.encode(x.contiguous()), fast.encode(x))
        back = sped_up(build(2)).eval()
        back.load_state_dict(plain.state_dict())
        torch.testing.assert_close(back.decoder(codes), fast.decoder(codes))
        for name, value in fast.state_dict().items():
            assert torch.equal(value, back.state_dict()[name]), name


def test_the_transform_is_idempotent_and_leaves_layers_it_cannot_speed_alone():
    model = sped_up(sped_up(article_vae()))
    assert sum(isinstance(m, ReluBatchNormDropout) for m in model.modules()) == 4
    colour = sped_up(
        ConvDecoder(2, out_channels=3, image_size=64, channels=(64, 32, 32, 32), strides=(2,) * 4)
    )
    assert not any(isinstance(m, OneChannelConvTranspose2d) for m in colour.modules())
    mlp = sped_up(VAE(2, MLPEncoder(), MLPDecoder(2)))
    assert [type(m) for m in mlp.modules()] == [
        type(m) for m in VAE(2, MLPEncoder(), MLPDecoder(2)).modules()
    ]


def test_the_transform_leaves_torch_s_random_state_where_it_was():
    """The fast layers' own initialisation is thrown away: it must not move the generator, or a run's
    dropout masks and noise would differ from those of the same seed without the transform."""
    model = article_vae()
    state = torch.get_rng_state()
    sped_up(model)
    assert torch.equal(torch.get_rng_state(), state)
