"""ReluBatchNormDropout (the encoder block's ReLU, BatchNorm and dropout in C kernels) against the three
layers apart, and the kernels' build: cached per machine, and a fallback where they cannot be built."""

import logging

import pytest
import torch

from tests.conftest import channels_last, needs_compiler, sped_up
from vae_lab.models import VAE, ConvDecoder, ConvEncoder
from vae_lab.speed import kernels as native
from vae_lab.speed.layers import FastDropout, ReluBatchNormDropout


def separate_layers(channels: int, p: float = 0.3, momentum=0.1) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.ReLU(), torch.nn.BatchNorm2d(channels, momentum=momentum), FastDropout(p, inplace=True)
    )


def run(block, x, upstream, seed=5):
    """Output, input gradient, weight and bias gradients and the buffers after one training step."""
    torch.manual_seed(seed)  # the same dropout masks
    inputs = x.clone().requires_grad_()
    out = block(inputs)
    out.backward(upstream)
    batch_norm = block if isinstance(block, ReluBatchNormDropout) else block[1]
    buffers = [batch_norm.running_mean, batch_norm.running_var, batch_norm.num_batches_tracked]
    return out, [inputs.grad, batch_norm.weight.grad, batch_norm.bias.grad], buffers


def fused_and_separate(channels, momentum=0.1):
    fused = ReluBatchNormDropout(channels, 0.3, momentum=momentum).train()
    with torch.no_grad():
        fused.weight.uniform_(0.5, 1.5)
        fused.bias.uniform_(-0.5, 0.5)
    separate = separate_layers(channels, momentum=momentum).train()
    separate[1].load_state_dict(fused.state_dict())
    return fused, separate


@needs_compiler
@pytest.mark.parametrize("shape", [(16, 32, 14, 14), (3, 5, 7, 9), (1, 64, 1, 2), (130, 8, 2, 1)])
def test_the_fused_block_gives_the_numbers_of_relu_batch_norm_and_fast_dropout(shape):
    """Uneven row counts (fewer rows than threads, not a multiple of the kernels' blocks) included."""
    torch.manual_seed(0)
    x, upstream = channels_last(*shape), channels_last(*shape)
    fused, separate = fused_and_separate(shape[1])
    out_fused, grads_fused, buffers_fused = run(fused, x, upstream)
    generator_after_fused = torch.get_rng_state()
    out_separate, grads_separate, buffers_separate = run(separate, x, upstream)
    assert torch.equal(torch.get_rng_state(), generator_after_fused)  # as many random numbers drawn
    assert type(out_fused.grad_fn).__name__ == "_ReluBatchNormDropoutBackward"  # the kernels, no fallback
    assert out_fused.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out_fused == 0, out_separate == 0)  # the same dropout masks (and ReLU zeros)
    torch.testing.assert_close(out_fused, out_separate, rtol=1e-4, atol=1e-4)
    for fused_grad, separate_grad in zip(grads_fused, grads_separate, strict=True):
        torch.testing.assert_close(fused_grad, separate_grad, rtol=1e-4, atol=1e-4)
    for fused_buffer, separate_buffer in zip(buffers_fused, buffers_separate, strict=True):
        torch.testing.assert_close(fused_buffer, separate_buffer, rtol=1e-5, atol=1e-6)


@needs_compiler
def test_the_fused_block_keeps_the_cumulative_average_of_momentum_none():
    torch.manual_seed(0)
    fused, separate = fused_and_separate(4, momentum=None)
    for seed in range(3):
        x, upstream = channels_last(6, 4, 3, 3) + seed, channels_last(6, 4, 3, 3)
        run(fused, x, upstream, seed)
        run(separate, x, upstream, seed)
    assert fused.num_batches_tracked.item() == 3
    torch.testing.assert_close(fused.running_mean, separate[1].running_mean)
    torch.testing.assert_close(fused.running_var, separate[1].running_var)


@needs_compiler
def test_the_fused_batch_statistics_hold_far_from_zero():
    """A batch whose spread is small beside its mean: the sums are centred, so the variance keeps its
    digits (E[v^2] - E[v]^2 in float would lose them all)."""
    torch.manual_seed(0)
    x = (1000 + 0.01 * torch.randn(64, 8, 6, 6)).contiguous(memory_format=torch.channels_last)
    fused = ReluBatchNormDropout(8, 0.3, momentum=1.0).train()
    torch.manual_seed(1)
    fused(x)
    exact = x.double()
    torch.testing.assert_close(fused.running_mean.double(), exact.mean((0, 2, 3)), rtol=1e-6, atol=0)
    torch.testing.assert_close(fused.running_var.double(), exact.var((0, 2, 3)), rtol=1e-3, atol=0)


@pytest.mark.parametrize(
    "case",
    ["evaluation", "NCHW", "float64", "compile"],
    ids=["evaluation", "NCHW batch", "float64 batch", "under torch.compile"],
)
def test_where_the_kernels_do_not_apply_the_fused_block_runs_the_three_layers(case, monkeypatch):
    torch.manual_seed(0)
    x = channels_last(8, 4, 5, 5)
    fused, separate = fused_and_separate(4)
    if case == "evaluation":
        fused.eval(), separate.eval()
    elif case == "NCHW":
        x = x.contiguous()
    elif case == "float64":
        x, fused, separate = x.double(), fused.double(), separate.double()
    else:  # as dynamo traces it: inductor compiles the torch operations, not calls into C
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    upstream = torch.randn_like(x)
    out_fused, grads_fused, buffers_fused = run(fused, x, upstream)
    out_separate, grads_separate, buffers_separate = run(separate, x, upstream)
    assert torch.equal(out_fused, out_separate)
    for fused_value, separate_value in zip(
        grads_fused + buffers_fused, grads_separate + buffers_separate, strict=True
    ):
        assert torch.equal(fused_value, separate_value)


def test_the_fused_encoder_has_the_state_dict_of_the_separate_layers():
    fused = sped_up(ConvEncoder(batch_norm=True, dropout=0.3))
    separate = sped_up(ConvEncoder(batch_norm=True, dropout=0.3), fused_blocks=False)
    assert [type(m).__name__ for m in fused.body][:4] == [
        "Conv2d",
        "Identity",
        "ReluBatchNormDropout",
        "Identity",
    ]
    assert [type(m).__name__ for m in separate.body][:4] == ["Conv2d", "ReLU", "BatchNorm2d", "FastDropout"]
    fused.load_state_dict(separate.state_dict())  # strict: the same keys
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(fused.eval()(x), separate.eval()(x))
    # only where a block has BatchNorm and fast dropout
    assert not any(
        isinstance(m, ReluBatchNormDropout) for m in sped_up(ConvEncoder(batch_norm=True)).modules()
    )
    no_fast = sped_up(ConvEncoder(batch_norm=True, dropout=0.3), fast_dropout=False)
    assert not any(isinstance(m, ReluBatchNormDropout) for m in no_fast.modules())


@needs_compiler
def test_a_vae_with_fused_blocks_trains_as_one_with_the_separate_layers():
    x = torch.rand(32, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    losses = {}
    for fused in (True, False):
        torch.manual_seed(0)
        encoder = ConvEncoder(batch_norm=True, dropout=0.3)
        model = sped_up(VAE(2, encoder, ConvDecoder(2)).train(), fused_blocks=fused)
        model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses[fused] = []
        for _ in range(5):
            output = model(x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(output.recon_logits, x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[fused].append(loss.item())
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    assert losses[True][-1] < losses[True][0]


@needs_compiler
def test_the_kernels_are_built_once_into_the_cache_and_loaded_from_it(fresh_kernels, monkeypatch):
    assert native.cpu_kernels() is not None
    (library,) = fresh_kernels.glob("kernels-*.so")
    assert not [p for p in fresh_kernels.iterdir() if p != library]  # no scratch left behind
    built = library.stat().st_mtime_ns
    native.cpu_kernels.cache_clear()
    monkeypatch.setenv("CC", "no-such-compiler")  # not needed any more: the library is there
    monkeypatch.setattr(native, "_library_path", lambda compiler: library)
    assert native.cpu_kernels() is not None
    assert library.stat().st_mtime_ns == built


@pytest.mark.parametrize("compiler", ["no-such-compiler", "false"])
def test_without_a_working_compiler_training_falls_back_with_one_warning(
    compiler, fresh_kernels, monkeypatch, caplog
):
    monkeypatch.setenv("CC", compiler)
    x = channels_last(8, 4, 5, 5)
    fused, separate = fused_and_separate(4)
    upstream = torch.randn_like(x)
    with caplog.at_level(logging.WARNING, logger="vae_lab"):
        out_fused, grads_fused, _ = run(fused, x, upstream)
        run(fused, x, upstream)
    out_separate, grads_separate, _ = run(separate, x, upstream)
    assert torch.equal(out_fused, out_separate) and torch.equal(grads_fused[0], grads_separate[0])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "run as torch operations instead" in warnings[0] and compiler in warnings[0]
    assert not list(fresh_kernels.glob("*.so"))


@needs_compiler
def test_one_value_per_channel_is_refused_in_training_as_batch_norm_refuses_it():
    fused, separate = fused_and_separate(3)
    x = channels_last(1, 3, 1, 1)
    for block in (fused, separate):
        with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
            block(x)


@needs_compiler
def test_the_fused_block_output_is_within_float_rounding_of_a_float64_computation():
    from vae_lab.speed.layers import dropout_words

    torch.manual_seed(0)
    x = channels_last(64, 32, 28, 28)
    fused = ReluBatchNormDropout(32, 0.3).train()
    with torch.no_grad():
        fused.weight.uniform_(0.5, 1.5)
        fused.bias.uniform_(-0.5, 0.5)
    torch.manual_seed(1)
    out = fused(x)
    torch.manual_seed(1)
    integers = dropout_words(x.numel(), x.device).view(torch.int16)
    kept = (integers[: x.numel()] < fused.dropout.threshold).as_strided(x.shape, x.stride())
    v = torch.relu(x.double())
    mean, var = v.mean((0, 2, 3), keepdim=True), v.var((0, 2, 3), unbiased=False, keepdim=True)
    weight, bias = fused.weight.double().view(1, -1, 1, 1), fused.bias.double().view(1, -1, 1, 1)
    exact = ((v - mean) / (var + fused.eps).sqrt() * weight + bias) * kept * fused.dropout.scale
    assert (
        out.double() - exact
    ).abs().max().item() < 1e-4  # outputs up to about 20; torch's BatchNorm: 6e-4 here


@needs_compiler
def test_the_dropout_words_of_the_c_kernel_and_of_torch_operations_are_the_same_bits():
    from vae_lab.speed.layers import counter_words, dropout_words

    kernels = native.cpu_kernels()
    for seed in (0, 12345, 2**63 - 1):
        words = torch.empty(1001, dtype=torch.int64)
        kernels.counter_words(words, 1001, seed, 2)
        assert torch.equal(words, counter_words(seed, 1001, torch.device("cpu")))
    # SplitMix64's first output from seed 0, as its reference code gives it
    assert counter_words(0, 1, torch.device("cpu")).item() == 0xE220A8397B1DCDAF - 2**64
    torch.manual_seed(0)
    first = dropout_words(40, torch.device("cpu"))
    torch.manual_seed(0)
    assert torch.equal(dropout_words(40, torch.device("cpu")), first)  # fixed by torch's seed
    assert not torch.equal(dropout_words(40, torch.device("cpu")), first)  # and new at each call
    bits = torch.stack([(first >> shift) & 1 for shift in range(64)]).double()
    assert 0.35 < bits.mean().item() < 0.65


@needs_compiler
def test_a_nan_in_the_batch_reaches_the_output_as_through_the_layers_apart():
    """The per-step NaN check sees a diverged encoder: the kernels' ReLU passes NaN on, as torch.relu."""
    torch.manual_seed(0)
    x, upstream = channels_last(4, 3, 5, 5), channels_last(4, 3, 5, 5)
    x[1, 2, 3, 4] = float("nan")
    fused, separate = fused_and_separate(3)
    out_fused, grads_fused, _ = run(fused, x, upstream)
    out_separate, grads_separate, _ = run(separate, x, upstream)
    assert type(out_fused.grad_fn).__name__ == "_ReluBatchNormDropoutBackward"
    assert torch.equal(out_fused.isnan(), out_separate.isnan()) and out_fused[:, 2].isnan().any()
    assert not out_fused[:, :2].isnan().any()
