"""OneChannelConvTranspose2d (the decoder's last layer, to one channel, in C kernels) against
nn.ConvTranspose2d: the same outputs and gradients up to float rounding, and torch's own
convolution wherever the kernels do not apply."""

import logging
import platform

import pytest
import torch
from torch import nn

from tests.conftest import channels_last, needs_compiler, sped_up
from vae_lab.models import ConvDecoder
from vae_lab.speed import kernels as native
from vae_lab.speed.layers import OneChannelConvTranspose2d


def layer_and_reference(channels: int, bias: bool = True):
    torch.manual_seed(0)
    layer = OneChannelConvTranspose2d(channels, bias=bias)
    reference = nn.ConvTranspose2d(channels, 1, 3, stride=1, padding=1, bias=bias)
    reference.load_state_dict(layer.state_dict())  # strict: the same parameters, by the same names
    return layer, reference


def outputs_and_gradients(layer, x, upstream):
    inputs = x.clone().requires_grad_()
    out = layer(inputs)
    out.backward(upstream)
    gradients = [inputs.grad, layer.weight.grad] + ([layer.bias.grad] if layer.bias is not None else [])
    return out, gradients


def assert_the_kernels_match(layer, reference, x, upstream):
    """The layer ran its kernels and gave the reference's output and gradients within 1e-4."""
    out, gradients = outputs_and_gradients(layer, x, upstream)
    expected_out, expected_gradients = outputs_and_gradients(reference, x, upstream)
    assert type(out.grad_fn).__name__ == "_OneChannelConvBackward"  # the kernels, no fallback
    assert out.shape == expected_out.shape
    torch.testing.assert_close(out, expected_out, rtol=1e-4, atol=1e-4)
    for got, expected in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@needs_compiler
@pytest.mark.parametrize(
    ("shape", "bias"),
    [((8, 32, 28, 28), True), ((3, 16, 5, 7), True), ((2, 64, 1, 1), True), ((1, 48, 2, 3), False)],
)
def test_the_kernels_give_the_numbers_of_nn_conv_transpose(shape, bias):
    """Edges in every direction, images of one pixel, fewer rows than threads, and no bias."""
    layer, reference = layer_and_reference(shape[1], bias)
    x = channels_last(*shape)
    upstream = torch.randn(shape[0], 1, *shape[2:])  # the reference's output shape, as backward checks
    assert_the_kernels_match(layer, reference, x, upstream)


@needs_compiler
@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 instruction sets")
@pytest.mark.parametrize("held_to", ["-mno-avx512f", "-mno-avx"], ids=["AVX2 (8 lanes)", "SSE (4 lanes)"])
def test_the_kernels_built_for_narrower_vectors_give_the_same_numbers(
    held_to, fresh_kernels, tmp_path, monkeypatch
):
    """The kernels as a CPU without AVX-512, or without AVX, builds them: 8 or 4 channels a vector."""
    compiler = tmp_path / "cc-held"
    compiler.write_text(f'#!/bin/sh\nexec cc "$@" {held_to}\n')
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    assert native.cpu_kernels() is not None
    layer, reference = layer_and_reference(32)
    assert_the_kernels_match(layer, reference, channels_last(3, 32, 5, 7), torch.randn(3, 1, 5, 7))


@needs_compiler
def test_the_weight_gradient_is_within_float_rounding_of_a_float64_computation():
    """The taps' gradient sums 100,000 products a tap: the kernels add them up in double."""
    layer, reference = layer_and_reference(32)
    x, upstream = channels_last(128, 32, 28, 28), torch.randn(128, 1, 28, 28)
    _, gradients = outputs_and_gradients(layer, x, upstream)
    exact = reference.double()
    _, exact_gradients = outputs_and_gradients(exact, x.double(), upstream.double())
    error = (gradients[1].double() - exact_gradients[1]).abs().max().item()
    assert error < 1e-5 * exact_gradients[1].abs().max().item()


@needs_compiler
def test_the_kernels_run_on_every_thread_count_alike():
    layer, _ = layer_and_reference(16)
    x, upstream = channels_last(6, 16, 9, 9), torch.randn(6, 1, 9, 9)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = outputs_and_gradients(layer, x, upstream)
    finally:
        torch.set_num_threads(threads)
    layer.zero_grad()
    many = outputs_and_gradients(layer, x, upstream)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1][0], many[1][0])  # pixel by pixel: no order
    torch.testing.assert_close(one[1][1], many[1][1], rtol=1e-6, atol=1e-6)  # summed per thread


@pytest.mark.parametrize(
    "case", ["NCHW batch", "channels not a multiple of 16", "bf16 autocast", "float64", "torch.compile"]
)
def test_where_the_kernels_do_not_apply_the_layer_is_torch_s_own_convolution(case, monkeypatch):
    channels = 24 if case == "channels not a multiple of 16" else 32
    layer, reference = layer_and_reference(channels)
    x, upstream = channels_last(4, channels, 6, 6), torch.randn(4, 1, 6, 6)
    if case == "NCHW batch":
        x = x.contiguous()
    if case == "float64":
        x, upstream, layer, reference = x.double(), upstream.double(), layer.double(), reference.double()
    if case == "torch.compile":  # as dynamo traces it: inductor compiles torch's convolution
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "bf16 autocast"):
        out, gradients = outputs_and_gradients(layer, x, upstream)
        expected_out, expected_gradients = outputs_and_gradients(reference, x, upstream)
    assert type(out.grad_fn).__name__ != "_OneChannelConvBackward"
    assert out.dtype == expected_out.dtype
    torch.testing.assert_close(out, expected_out)  # FastConvTranspose2d: the bias added apart
    for got, expected in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(got, expected)


def test_without_a_working_compiler_the_layer_falls_back_with_one_warning(fresh_kernels, monkeypatch, caplog):
    monkeypatch.setenv("CC", "no-such-compiler")
    layer, reference = layer_and_reference(16)
    x, upstream = channels_last(4, 16, 6, 6), torch.randn(4, 1, 6, 6)
    with caplog.at_level(logging.WARNING, logger="vae_lab"):
        out, gradients = outputs_and_gradients(layer, x, upstream)
        outputs_and_gradients(layer, x, upstream)
    expected_out, expected_gradients = outputs_and_gradients(reference, x, upstream)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(gradients[0], expected_gradients[0])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "run as torch operations instead" in warnings[0]


def test_the_decoder_s_last_layer_is_the_one_channel_kernel_only_where_it_gives_one_channel():
    fast, plain = sped_up(ConvDecoder(2)), sped_up(ConvDecoder(2), one_channel_kernel=False)
    assert type(fast.body[-1]) is OneChannelConvTranspose2d
    assert type(plain.body[-1]).__name__ == "FastConvTranspose2d"
    fast.load_state_dict(plain.state_dict())  # strict: checkpoints load either way
    codes = torch.randn(5, 2)
    torch.testing.assert_close(fast.eval()(codes), plain.eval()(codes))
    colour = sped_up(
        ConvDecoder(2, out_channels=3, image_size=64, channels=(64, 32, 32, 32), strides=(2, 2, 2, 2))
    )
    assert not any(isinstance(m, OneChannelConvTranspose2d) for m in colour.modules())
