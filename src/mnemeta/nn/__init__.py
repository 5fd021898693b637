"""Backbones and layers that ``torch.func`` can call and vmap over tasks."""

from mnemeta.nn.adapter import Identity, ResidualAdapter
from mnemeta.nn.backbones import MLP, Conv4, ConvBlock, conv4, mlp
from mnemeta.nn.batchnorm import BatchNorm
from mnemeta.nn.resnet12 import DropBlock, ResidualBlock, ResNet12, resnet12
from mnemeta.nn.sentence_transformer import SentenceTransformerBackbone

__all__ = [
    "MLP",
    "BatchNorm",
    "Conv4",
    "ConvBlock",
    "DropBlock",
    "Identity",
    "ResNet12",
    "ResidualAdapter",
    "ResidualBlock",
    "SentenceTransformerBackbone",
    "conv4",
    "mlp",
    "resnet12",
]
