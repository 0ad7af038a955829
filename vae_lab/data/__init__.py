"""Data sets as uint8 tensors kept whole on the training device, and batch iteration over them.

Each loader is picked by conf/data/*.yaml through `_target_` and gives back an ImageData.
"""

from vae_lab.data.celeba import load_celeba
from vae_lab.data.image_folder import load_image_folder
from vae_lab.data.images import ImageData, in_order, resolve_root, shuffled_batches, to_float
from vae_lab.data.mnist import MNIST_FILES, load_fashion_mnist, load_mnist

__all__ = [
    "MNIST_FILES",
    "ImageData",
    "in_order",
    "load_celeba",
    "load_fashion_mnist",
    "load_image_folder",
    "load_mnist",
    "resolve_root",
    "shuffled_batches",
    "to_float",
]
