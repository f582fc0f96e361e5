"""Small federated set-ups shared by the fl tests."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedpriv import models
from fedpriv.data import PopulationStore
from fedpriv.fl.client import make_client_update
from fedpriv.fl.round import RoundInputs


def toy_population(num_clients=30, seed=0, max_size=7, dim=6, classes=3):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_size + 1, num_clients)
    client_of = np.repeat(np.arange(num_clients), sizes)
    x = rng.normal(size=(len(client_of), dim)).astype(np.float32)
    y = rng.integers(0, classes, len(client_of)).astype(np.int32)
    return PopulationStore.from_assignment(x, y, client_of, classes, "toy")


def toy_model(store, hidden=(8,)):
    model = models.build("mlp", store.num_classes, hidden=hidden)
    params = model.init(jax.random.key(0), jnp.zeros((1,) + store.example_shape))
    return model, params


def toy_client_update(model, n_cap, lr=0.1, epochs=2, batch_size=3):
    return make_client_update(model.apply, optax.sgd(lr), epochs, batch_size, n_cap)


def cohort(store, ids, n_cap, pad_to=None):
    ids = np.asarray(ids)
    mask = np.ones(len(ids), bool)
    if pad_to is not None:
        ids = np.concatenate([ids, np.zeros(pad_to - len(ids), int)])
        mask = np.concatenate([mask, np.zeros(pad_to - len(mask), bool)])
    return RoundInputs(*store.gather(ids, mask, n_cap))
