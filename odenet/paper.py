"""Chen et al.'s (2018) conv ODE-Net for MNIST, as in their ``odenet_mnist.py``: ``NeuralODEModel(arch="paper")``.

Downsampling (28x28 -> a ``width``-channel 6x6 feature map), an ODE block whose state is that map and whose
function is GroupNorm-ReLU-conv(t)-GroupNorm-ReLU-conv(t)-GroupNorm with the time as an extra input channel, and a
head (GroupNorm, ReLU, global average pool, linear). At ``width`` 64 it has the paper's 0.21 M parameters.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

STATE_SIDE = 6  # 28 -> 26 (3x3, no padding) -> 13 -> 6 (4x4, stride 2, padding 1)


def norm(width: int) -> nn.GroupNorm:
    """The paper's normalization: GroupNorm with min(32, width) groups."""
    return nn.GroupNorm(min(32, width), width)


class ConcatConv2d(nn.Module):
    """A 3x3 convolution of the map with the time ``t`` appended as a constant input channel."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(width + 1, width, 3, 1, 1)

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        tt = torch.ones_like(x[:, :1]) * t
        return self.conv(torch.cat([tt, x], 1))


class ConvODEFunc(nn.Module):
    """f_theta(t, z) for a feature map ``z`` of shape ``(B, width, H, W)``, same shape out (time-dependent)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm1, self.conv1 = norm(width), ConcatConv2d(width)
        self.norm2, self.conv2 = norm(width), ConcatConv2d(width)
        self.norm3 = norm(width)
        self.relu = nn.ReLU()

    def forward(self, t, z: torch.Tensor) -> torch.Tensor:
        h = self.conv1(t, self.relu(self.norm1(z)))
        return self.norm3(self.conv2(t, self.relu(self.norm2(h))))


def parts(width: int, num_classes: int) -> Tuple[nn.Sequential, ConvODEFunc, nn.Sequential]:
    """The paper's downsampling encoder ``(B, 1, 28, 28) -> (B, width, 6, 6)``, its ODE function and its head
    ``(B, width, 6, 6) -> (B, num_classes)``."""
    encoder = nn.Sequential(
        nn.Conv2d(1, width, 3, 1), norm(width), nn.ReLU(),
        nn.Conv2d(width, width, 4, 2, 1), norm(width), nn.ReLU(),
        nn.Conv2d(width, width, 4, 2, 1),
    )
    head = nn.Sequential(norm(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
    return encoder, ConvODEFunc(width), head
