"""Model shapes and the properties that matter for DP and FL (no batch statistics)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv import models


@pytest.mark.parametrize(
    "name,shape,dtype,kwargs",
    [
        ("logreg", (4, 8, 8, 1), jnp.float32, {}),
        ("mlp", (4, 784), jnp.float32, {}),
        ("cnn", (4, 28, 28, 1), jnp.float32, {}),
        ("cnn_cifar", (4, 32, 32, 3), jnp.float32, {}),
        ("resnet18_gn", (2, 32, 32, 3), jnp.float32, {"width": 8}),
        ("char_lstm", (3, 80), jnp.int32, {"hidden": 16}),
    ],
)
def test_models_map_a_batch_to_logits_and_keep_no_batch_statistics(name, shape, dtype, kwargs):
    classes = 80 if name == "char_lstm" else 10
    model = models.build(name, classes, **kwargs)
    x = (
        jnp.zeros(shape, dtype)
        if dtype == jnp.int32
        else jax.random.normal(jax.random.key(0), shape)
    )
    variables = model.init(jax.random.key(1), x)
    assert set(variables) == {"params"}  # no batch_stats: examples stay independent
    logits = model.apply(variables, x)
    assert logits.shape == (shape[0], classes)
    # Each example's output depends on that example only (no cross-example normalisation).
    x2 = x.at[1:].set(jnp.ones_like(x[1:]) if dtype == jnp.int32 else x[1:] * 3.0 + 1.0)
    np.testing.assert_allclose(model.apply(variables, x2)[0], logits[0], rtol=1e-5, atol=1e-5)


def test_resnet18_has_the_resnet18_layout():
    model = models.build("resnet18_gn", 10)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    convs = [
        k
        for k in jax.tree_util.tree_flatten_with_path(params)[0]
        if "Conv" in jax.tree_util.keystr(k[0]) and k[0][-1].key == "kernel"
    ]
    assert len(convs) == 1 + 8 * 2 + 3  # stem, 8 blocks x 2 convs, 3 projection shortcuts
    n = sum(x.size for x in jax.tree.leaves(params))
    assert 11.0e6 < n < 11.3e6  # about 11.2 M parameters, as ResNet-18 for CIFAR
