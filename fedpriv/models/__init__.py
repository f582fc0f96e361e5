"""Flax models used in federated learning papers, chosen by name.

Each model maps ``x[B, ...]`` to logits ``[B, num_classes]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from fedpriv.errors import ConfigError


class LogReg(nn.Module):
    """Multinomial logistic regression on flattened inputs."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


class MLP(nn.Module):
    """The "2NN" of McMahan et al. 2017: two hidden ReLU layers of 200 units by default."""

    num_classes: int
    hidden: Sequence[int] = (200, 200)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


class CNN(nn.Module):
    """The CNN of McMahan et al. 2017: two 5x5 conv layers (32, 64 channels) with 2x2 max
    pooling, a dense layer of 512 ReLU units and a softmax output."""

    num_classes: int
    channels: Sequence[int] = (32, 64)
    dense: int = 512

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        if x.ndim == 3:
            x = x[..., None]
        for ch in self.channels:
            x = nn.relu(nn.Conv(ch, (5, 5), padding="SAME")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.dense)(x))
        return nn.Dense(self.num_classes)(x)


class CifarCNN(nn.Module):
    """The small CIFAR-10 CNN of McMahan et al. 2017 (after TensorFlow's CIFAR tutorial):
    two 5x5 conv layers of 64 channels with 3x3/2 max pooling, dense 384 and 192, softmax.
    No batch normalisation (it mixes examples, which breaks per-example DP and FL)."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for _ in range(2):
            x = nn.relu(nn.Conv(64, (5, 5), padding="SAME")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(384)(x))
        x = nn.relu(nn.Dense(192)(x))
        return nn.Dense(self.num_classes)(x)


class _BasicBlock(nn.Module):
    channels: int
    strides: int
    groups: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        y = nn.Conv(
            self.channels, (3, 3), (self.strides, self.strides), padding="SAME", use_bias=False
        )(x)
        y = nn.relu(nn.GroupNorm(num_groups=self.groups)(y))
        y = nn.Conv(self.channels, (3, 3), padding="SAME", use_bias=False)(y)
        y = nn.GroupNorm(num_groups=self.groups)(y)
        if x.shape[-1] != self.channels or self.strides != 1:
            x = nn.Conv(self.channels, (1, 1), (self.strides, self.strides), use_bias=False)(x)
            x = nn.GroupNorm(num_groups=self.groups)(x)
        return nn.relu(x + y)


class ResNet18GN(nn.Module):
    """ResNet-18 (He et al. 2016) for 32x32 images with GroupNorm instead of BatchNorm
    (Hsieh et al. 2020; Kairouz et al. 2021's survey): a 3x3 stem, four stages of two basic
    blocks (64, 128, 256, 512 channels), global average pooling. GroupNorm normalises each
    example on its own, so it keeps per-example gradients and client updates independent."""

    num_classes: int
    width: int = 64
    groups: int = 2

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=False)(x)
        x = nn.relu(nn.GroupNorm(num_groups=self.groups)(x))
        for stage, mult in enumerate((1, 2, 4, 8)):
            for block in range(2):
                strides = 2 if stage > 0 and block == 0 else 1
                x = _BasicBlock(self.width * mult, strides, self.groups)(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


class CharLSTM(nn.Module):
    """The next-character model of LEAF's Shakespeare benchmark (Caldas et al. 2018, after
    McMahan et al. 2017): an 8-dimensional character embedding, two LSTM layers of 256 units,
    and a dense layer over the vocabulary applied to the last position.

    Input ``x[B, T]`` int32 character ids; output ``logits[B, vocab]``.
    """

    num_classes: int
    embed: int = 8
    hidden: int = 256
    layers: int = 2

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        h = nn.Embed(self.num_classes, self.embed)(x.astype(jnp.int32))
        for _ in range(self.layers):
            h = nn.RNN(nn.OptimizedLSTMCell(self.hidden))(h)
        return nn.Dense(self.num_classes)(h[:, -1])


_MODELS = {
    "logreg": LogReg,
    "mlp": MLP,
    "cnn": CNN,
    "cnn_cifar": CifarCNN,
    "resnet18_gn": ResNet18GN,
    "char_lstm": CharLSTM,
}


def available() -> list[str]:
    return sorted(_MODELS)


def build(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Builds the model called ``name`` (see :func:`available`).

    Raises:
        ConfigError: unknown name.
    """
    if name not in _MODELS:
        raise ConfigError("model.name", f"unknown model {name!r}; choose from {available()}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return _MODELS[name](num_classes=num_classes, **kwargs)


__all__ = [
    "CNN",
    "CharLSTM",
    "CifarCNN",
    "LogReg",
    "MLP",
    "ResNet18GN",
    "available",
    "build",
]
