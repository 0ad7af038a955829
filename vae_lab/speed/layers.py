"""Layers that vae_lab makes faster than their torch.nn counterparts, with the same semantics."""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vae_lab.speed.kernels import cpu_kernels

_LEVELS = 2**16  # the mask is drawn from 16-bit random integers


def kernels_for_batch(batch: torch.Tensor):
    """The C kernels where a layer may run them on this batch, else None: a 4-d channels_last float32
    batch on a CPU, outside torch.compile (inductor compiles the layers' torch operations instead)."""
    if batch.device.type != "cpu" or batch.dtype != torch.float32 or batch.dim() != 4:
        return None
    if not batch.is_contiguous(memory_format=torch.channels_last) or torch.compiler.is_compiling():
        return None
    return cpu_kernels()


def dropout_words(numel: int, device: torch.device) -> torch.Tensor:
    """Uniform 64-bit words, four 16-bit integers each: the integers of a dropout mask over numel
    elements (`words.view(torch.int16)[:numel]`, in the tensor's memory order).

    They are SplitMix64's outputs from a seed drawn from torch's CPU generator (so torch.manual_seed
    and a checkpoint's random state fix them): each word is a function of its index, so on a CPU the
    C kernel fills them on all threads at once, where torch's own generator draws one word after
    another on one thread (the biggest cost of the step after the convolutions, docs/speed.md).
    Without the kernels, on a GPU and under torch.compile, torch operations compute the same words.
    """
    count = -(-numel // 4)
    seed = int(torch.empty((), dtype=torch.int64).random_())  # on [0, 2**63)
    compiling = torch.compiler.is_compiling()  # inductor compiles the torch operations instead
    kernels = cpu_kernels() if device.type == "cpu" and not compiling else None
    if kernels is None:
        return counter_words(seed, count, device)
    words = torch.empty(count, dtype=torch.int64)
    kernels.counter_words(words, count, seed, torch.get_num_threads())
    return words


# SplitMix64's increment and multipliers, as the signed 64-bit integers torch computes with
_GAMMA, _MIX_1, _MIX_2 = (v - 2**64 for v in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def counter_words(seed: int, count: int, device: torch.device) -> torch.Tensor:
    """SplitMix64's first `count` outputs from `seed` with torch operations: the words of the C kernel
    counter_words (vae_lab/speed/kernels.c), bit for bit (tested); int64 products wrap as uint64 ones."""

    def shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:  # logical: torch's >> keeps the sign
        return (z >> bits) & ((1 << (64 - bits)) - 1)

    z = torch.arange(1, count + 1, dtype=torch.int64, device=device).mul_(_GAMMA).add_(seed)
    z = (z ^ shift_right(z, 30)).mul_(_MIX_1)
    z = (z ^ shift_right(z, 27)).mul_(_MIX_2)
    return z ^ shift_right(z, 31)


class FastDropout(nn.Module):
    """Dropout whose mask comes from 16-bit random integers, four from each 64-bit word.

    nn.Dropout draws one Bernoulli number per element (`bernoulli_`) from torch's generator, one after
    another, the slowest part of the article's VAE step on CPU after the convolutions; here four
    elements share a 64-bit word, and the words come from a counter-based generator that fills them
    on all threads at once (dropout_words). Each element is kept with probability 1 - p rounded to a
    multiple of 2**-16 (so within 2**-17 of 1 - p) and scaled by the inverse of that probability: the
    expectation is unchanged, as with nn.Dropout. In eval mode it is the identity.

    inplace: multiply x itself by the mask (as nn.Dropout(inplace=True)), which saves writing a fresh
    tensor; only where the layer before does not keep its output for its backward (BatchNorm does
    not; ReLU does, and autograd then refuses the backward).
    """

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        self.inplace = inplace
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.keep_levels = round((1 - p) * _LEVELS)  # keep an element when its integer is among these
        if self.keep_levels == 0:
            raise ValueError(f"dropout probability must be below {1 - 1 / (2 * _LEVELS)}, got {p}")
        self.scale = _LEVELS / self.keep_levels  # 1 / P(kept)
        self.threshold = self.keep_levels - _LEVELS // 2  # kept: a signed 16-bit integer below this

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()
        integers = dropout_words(x.numel(), x.device).view(torch.int16)[: x.numel()]  # on [-2**15, 2**15)
        # 1.0 where kept (P = keep_levels / 2**16), written straight into x's dtype: no bool mask to convert
        mask = torch.empty_like(integers, dtype=x.dtype)
        torch.lt(integers, self.threshold, out=mask)
        mask = mask.mul_(self.scale).as_strided(x.shape, x.stride())  # in x's memory layout
        return x.mul_(mask) if self.inplace else x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class FastConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d with its bias added after the convolution: the same parameters and outputs.

    On CPU, PyTorch's transposed-convolution backward costs about twice as much when it is asked
    for the bias gradient together with the input and weight gradients (measured with torch 2.14 on
    this project's 2-core machine, channels_last: 27 ms against 16 ms for the decoder's 64->32 layer
    at batch 128). Adding the bias apart leaves the convolution's backward the input and weight
    gradients, and autograd sums the bias gradient over the batch and pixels itself. The forward
    output is bit-identical; the bias gradient matches to float rounding (another summation order).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv_transpose2d(
            x, self.weight, None, self.stride, self.padding, self.output_padding, self.groups, self.dilation
        )
        if self.bias is None:
            return y
        return y.add_(self.bias.view(1, -1, 1, 1))  # in place: the convolution's backward does not need y


class OneChannelConvTranspose2d(FastConvTranspose2d):
    """The decoder's last layer, a 3x3 transposed convolution from many channels to one (stride 1,
    padding 1): on a CPU, as C kernels (vae_lab/speed/kernels.c, one_channel_conv).

    oneDNN, behind torch's convolutions on CPU, is slow where one side has a single channel: this
    layer does 1.5% of the article's VAE step's arithmetic and took several percent of its time. A
    transposed convolution with stride 1 and padding 1 is a convolution with the taps mirrored:
    out[p] = bias + sum over taps d and channels k of x[p + d, k] * taps[d, k], with
    taps[d] = weight[:, 0, 1 - d]; the kernels compute that, its input gradient and the taps' gradient
    (summed in double), each one pass over the batch (docs/speed.md, "The one-channel kernel").
    The kernels run for a channels_last float32 batch on a CPU, with channels in multiples of 16 and
    this layer's shape; elsewhere (a GPU, NCHW, bf16 autocast, torch.compile, no C compiler) it is
    FastConvTranspose2d. The parameters are nn.ConvTranspose2d's; outputs and gradients agree with
    it up to float rounding (another summation order, tested).
    """

    def __init__(self, in_channels: int, bias: bool = True):
        super().__init__(in_channels, 1, 3, stride=1, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernels = self._kernels_for(x)
        if kernels is None:
            return super().forward(x)
        return _OneChannelConv.apply(x, self.weight, self.bias, kernels)

    def _kernels_for(self, x: torch.Tensor):
        """The C kernels where they apply to this batch, else None."""
        if self.weight.dtype != torch.float32 or x.dim() != 4 or x.shape[1] % 16:
            return None
        if torch.is_autocast_enabled("cpu"):  # torch would convolve in bf16
            return None
        return kernels_for_batch(x)


class _OneChannelConv(torch.autograd.Function):
    """The kernels' forward and backward; x is (B, C, H, W) channels_last, the output (B, 1, H, W)."""

    @staticmethod
    def forward(ctx, x, weight, bias, kernels):
        batch, channels, height, width = x.shape
        taps = weight.detach()[:, 0].flip(1, 2).permute(1, 2, 0).contiguous()  # (3, 3, C): mirrored
        out = torch.empty(batch, 1, height, width, dtype=x.dtype)
        offset = 0.0 if bias is None else float(bias)
        kernels.one_channel_conv(
            x, taps, offset, out, batch, height, width, channels, torch.get_num_threads()
        )
        ctx.save_for_backward(x, taps)
        ctx.kernels, ctx.has_bias = kernels, bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, taps = ctx.saved_tensors
        batch, channels, height, width = x.shape
        grad_out, threads = grad_out.contiguous(), torch.get_num_threads()
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.empty_like(x)
            ctx.kernels.one_channel_conv_input_grad(
                grad_out, taps, grad_x, batch, height, width, channels, threads
            )
        grad_taps = torch.empty(3, 3, channels, dtype=torch.float64)
        ctx.kernels.one_channel_conv_taps_grad(
            grad_out, x, grad_taps, batch, height, width, channels, threads
        )
        grad_weight = grad_taps.permute(2, 0, 1).flip(1, 2).unsqueeze(1).to(x.dtype)  # back to (C, 1, 3, 3)
        grad_bias = grad_out.sum().reshape(1) if ctx.has_bias else None
        return grad_x, grad_weight, grad_bias, None


class ReluBatchNormDropout(nn.BatchNorm2d):
    """ReLU, then BatchNorm2d, then FastDropout(p): one encoder block's three layers as one.

    In training on a CPU, with a channels_last float32 batch, the three run as C kernels
    (vae_lab/speed/kernels.c) that read the convolution's output once for BatchNorm's
    statistics and once more to write the block's output, and whose backward reads it twice and
    writes one gradient: the three layers apart read and write such tensors about a dozen times a
    step. Elsewhere (evaluation, a GPU, NCHW, bf16 autocast, torch.compile, no C compiler) it runs the three
    layers' own torch operations. Either way the parameters and buffers are nn.BatchNorm2d's, the
    running statistics are updated as nn.BatchNorm2d updates them, and the dropout masks are
    FastDropout's, from a seed drawn from torch's generator at the same point: the outputs and gradients of
    ReLU -> BatchNorm2d -> FastDropout up to float rounding (the batch statistics are summed in
    double across blocks of rows: within 1e-4 of a float64 computation, tested).
    """

    def __init__(self, num_features: int, p: float, eps: float = 1e-5, momentum: Optional[float] = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.dropout = FastDropout(p, inplace=True)  # after BatchNorm: in place

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        kernels = self._kernels_for(y)
        if kernels is None:
            return self.dropout(super().forward(torch.relu(y)))
        if y.numel() == y.shape[1]:  # as nn.BatchNorm2d
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {y.shape}"
            )
        words = dropout_words(y.numel(), y.device)
        out, mean, var = _ReluBatchNormDropout.apply(
            y, self.weight, self.bias, words, self.eps, self.dropout.threshold, self.dropout.scale, kernels
        )
        with torch.no_grad():  # as nn.BatchNorm2d: the running variance is the unbiased one
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked.item()
            count = y.numel() // y.shape[1]
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
            self.running_var.lerp_((var * count / max(count - 1, 1)).to(self.running_var.dtype), momentum)
        return out

    def _kernels_for(self, y: torch.Tensor):
        """The C kernels where they apply to this batch, else None."""
        if not (self.training and self.track_running_stats and self.affine and self.dropout.p > 0):
            return None
        if y.numel() == 0:
            return None
        return kernels_for_batch(y)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ReLU before, dropout p={self.dropout.p} after"


class _ReluBatchNormDropout(torch.autograd.Function):
    """The kernels' forward and backward; y is (B, C, H, W) channels_last, so n = B*H*W rows of C."""

    @staticmethod
    def forward(ctx, y, weight, bias, words, eps, threshold, scale, kernels):
        channels = y.shape[1]
        rows, threads = y.numel() // channels, torch.get_num_threads()
        shift = torch.relu(y[0, :, 0, 0]).contiguous()  # one row of the batch: centres the sums
        sums = torch.empty(channels, dtype=torch.float64)
        sums_sq = torch.empty(channels, dtype=torch.float64)
        kernels.relu_shifted_sums(y, rows, channels, shift, sums, sums_sq, threads)
        shifted_mean = sums / rows
        var64 = (sums_sq / rows - shifted_mean.square()).clamp_(min=0)
        mean = (shifted_mean + shift.double()).float()
        invstd = (var64 + eps).rsqrt().float()
        var = var64.float()
        a = (weight.detach() * invstd).contiguous()
        b = (bias.detach() - mean * a).contiguous()
        out = torch.empty_like(y)
        kernels.normalise_and_drop(y, words, out, rows, channels, a, b, threshold, scale, threads)
        ctx.save_for_backward(y, words, a, mean, invstd)
        ctx.threshold, ctx.scale, ctx.kernels = threshold, scale, kernels
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        y, words, a, mean, invstd = ctx.saved_tensors
        channels = y.shape[1]
        rows, threads = y.numel() // channels, torch.get_num_threads()
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        sum_g = torch.empty(channels, dtype=torch.float64)
        sum_g_centred = torch.empty(channels, dtype=torch.float64)
        ctx.kernels.backward_sums(
            y, words, grad_out, rows, channels, mean, ctx.threshold, ctx.scale, sum_g, sum_g_centred, threads
        )
        mean_g = (sum_g / rows).float()
        k = (sum_g_centred * invstd.double().square() / rows).float()
        grad_y = torch.empty_like(y)
        ctx.kernels.backward_input(
            y, words, grad_out, grad_y, rows, channels, mean, mean_g, k, a, ctx.threshold, ctx.scale, threads
        )
        grad_weight = (sum_g_centred * invstd.double()).to(a.dtype)
        return grad_y, grad_weight, sum_g.to(a.dtype), None, None, None, None, None
