"""Layers that vae_lab makes faster than their torch.nn counterparts, with the same semantics."""

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 2**16  # the mask is drawn from 16-bit random integers


class FastDropout(nn.Module):
    """Dropout whose mask comes from 16-bit random integers, four from each 64-bit draw.

    nn.Dropout draws one Bernoulli number per element (`bernoulli_`), the slowest part of the
    article's VAE step on CPU; four elements per 64-bit draw need about a quarter of the random
    numbers. Each element is kept with probability 1 - p rounded to a multiple of 2**-16 (so
    within 2**-17 of 1 - p) and scaled by the inverse of that probability: the expectation is
    unchanged, as with nn.Dropout. In eval mode it is the identity.

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()
        words = torch.empty(-(-x.numel() // 4), dtype=torch.int64, device=x.device)
        words.random_(-(2**63), None)  # every bit uniform
        integers = words.view(torch.int16)[: x.numel()]  # uniform on [-2**15, 2**15)
        # 1.0 where kept (P = keep_levels / 2**16), written straight into x's dtype: no bool mask to convert
        mask = torch.empty_like(integers, dtype=x.dtype)
        torch.lt(integers, self.keep_levels - _LEVELS // 2, out=mask)
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
