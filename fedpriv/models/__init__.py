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


_MODELS = {"logreg": LogReg, "mlp": MLP, "cnn": CNN}


def available() -> list[str]:
    return sorted(_MODELS)


def build(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Builds the model called ``name`` (``logreg``, ``mlp``, ``cnn``).

    Raises:
        ConfigError: unknown name.
    """
    if name not in _MODELS:
        raise ConfigError("model.name", f"unknown model {name!r}; choose from {available()}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return _MODELS[name](num_classes=num_classes, **kwargs)


__all__ = ["CNN", "LogReg", "MLP", "available", "build"]
