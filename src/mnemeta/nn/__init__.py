"""Backbones and layers that ``torch.func`` can call and vmap over tasks."""

from mnemeta.nn.backbones import MLP, Conv4, ConvBlock, conv4, mlp
from mnemeta.nn.batchnorm import BatchNorm

__all__ = ["MLP", "BatchNorm", "Conv4", "ConvBlock", "conv4", "mlp"]
