"""speed_up: the plain model's layers swapped in place for faster ones, after the model is built.

Each swap keeps the layer's parameters and buffers (the same tensors, so an optimiser built before
still holds them) and the model's state-dict keys: a checkpoint trained with speed=auto loads into
the plain model (speed=off) and back. Where a fast layer cannot run its C kernels (a GPU, bf16
autocast, torch.compile, no C compiler), it runs torch operations with the same results.
"""

import torch
from torch import nn

from vae_lab.speed import memory
from vae_lab.speed.layers import (
    FastConvTranspose2d,
    FastDropout,
    OneChannelConvTranspose2d,
    ReluBatchNormDropout,
)
from vae_lab.speed.options import SpeedOptions


def speed_up(model: nn.Module, options: SpeedOptions) -> nn.Module:
    """Give back `model` with the faster layers `options` ask for swapped in, in place."""
    for sequence in [module for module in model.modules() if isinstance(module, nn.Sequential)]:
        for index in range(len(sequence)):
            swap_layer(sequence, index, options)
    if options.channels_last:
        model.to(memory_format=torch.channels_last)  # conv weights in NHWC, like the batches
    if options.keep_freed_memory:
        memory.keep_freed_memory()
    return model


def swap_layer(sequence: nn.Sequential, index: int, options: SpeedOptions) -> None:
    """Replace sequence[index] (and, for a fused block, its neighbours) by its faster counterpart.

    The new layers are built under a forked random state: their own initialisation, thrown away for
    the old layer's tensors, must not move torch's generator (the run's numbers would change)."""
    with torch.random.fork_rng(devices=[]):
        _swap_layer(sequence, index, options)


def _swap_layer(sequence: nn.Sequential, index: int, options: SpeedOptions) -> None:
    layer = sequence[index]
    following = list(sequence)[index + 1 : index + 3]
    if options.fused_blocks and options.fast_dropout and _is_fusable_block(layer, following):
        norm, dropout = following
        # the Identity layers hold the places of the ReLU and the dropout: the state-dict keys stay
        sequence[index] = nn.Identity()
        sequence[index + 1] = _adopt(
            ReluBatchNormDropout(norm.num_features, dropout.p, norm.eps, norm.momentum), norm
        )
        sequence[index + 2] = nn.Identity()
    elif options.fast_dropout and type(layer) is nn.Dropout and layer.p > 0:
        # after BatchNorm, whose backward does not need its output, the mask is applied in place
        after_norm = index > 0 and isinstance(sequence[index - 1], nn.BatchNorm2d)
        sequence[index] = FastDropout(layer.p, inplace=after_norm)
    elif type(layer) is nn.ConvTranspose2d and options.one_channel_kernel and _is_one_channel_layer(layer):
        sequence[index] = _adopt(
            OneChannelConvTranspose2d(layer.in_channels, bias=layer.bias is not None), layer
        )
    elif type(layer) is nn.ConvTranspose2d and options.fast_transpose:
        sequence[index] = _adopt(_same_transposed_conv(layer), layer)


def _is_fusable_block(layer: nn.Module, following: list[nn.Module]) -> bool:
    """ReLU -> BatchNorm2d -> Dropout(p > 0), with BatchNorm's usual affine, tracked statistics."""
    if type(layer) is not nn.ReLU or len(following) < 2:
        return False
    norm, dropout = following
    return (
        type(norm) is nn.BatchNorm2d
        and norm.affine
        and norm.track_running_stats
        and type(dropout) is nn.Dropout
        and dropout.p > 0
    )


def _is_one_channel_layer(layer: nn.ConvTranspose2d) -> bool:
    """The decoder's last layer: 3x3, stride 1, padding 1, to one channel (OneChannelConvTranspose2d)."""
    return (
        layer.out_channels == 1
        and layer.kernel_size == (3, 3)
        and layer.stride == (1, 1)
        and layer.padding == (1, 1)
        and layer.output_padding == (0, 0)
        and layer.dilation == (1, 1)
        and layer.groups == 1
    )


def _same_transposed_conv(layer: nn.ConvTranspose2d) -> FastConvTranspose2d:
    return FastConvTranspose2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.output_padding,
        layer.groups,
        layer.bias is not None,
        layer.dilation,
    )


def _adopt(new: nn.Module, old: nn.Module) -> nn.Module:
    """Give back `new` holding `old`'s own parameters and buffers (the same tensors) and its mode."""
    for name, parameter in old.named_parameters(recurse=False):
        setattr(new, name, parameter)
    for name, buffer in old.named_buffers(recurse=False):
        new.register_buffer(name, buffer)
    return new.train(old.training)
