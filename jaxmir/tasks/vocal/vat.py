"""Virtual adversarial training (Miyato et al.): the KL between the model's outputs on x and
on x + r, where r is the direction of x's neighbourhood in which the outputs change most,
found by power iterations on the KL's gradient, scaled to norm ε. Pure jax: it runs inside the
jitted train step. The outputs are independent sigmoids (the 6 SDT channels of every frame),
so the KL is that of Bernoulli variables, summed over frames and channels, meaned over examples.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Logits = Callable[[jax.Array], jax.Array]


def bernoulli_kl(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
    """Mean over examples of Σ KL(Bernoulli(σ(p)) ‖ Bernoulli(σ(q))) over their outputs."""
    p = jax.nn.sigmoid(p_logits)
    kl = p * (jax.nn.log_sigmoid(p_logits) - jax.nn.log_sigmoid(q_logits)) + (1 - p) * (
        jax.nn.log_sigmoid(-p_logits) - jax.nn.log_sigmoid(-q_logits)
    )
    return jnp.mean(jnp.sum(kl.reshape(len(kl), -1), axis=-1))


def unit(d: jax.Array) -> jax.Array:
    """Each example of `d` scaled to L2 norm 1 (first by its largest magnitude, as omnizart
    does, which keeps tiny gradients representable)."""
    axes = tuple(range(1, d.ndim))
    d = d / (jnp.max(jnp.abs(d), axis=axes, keepdims=True) + 1e-12)
    return d / (jnp.sqrt(jnp.sum(d * d, axis=axes, keepdims=True)) + 1e-12)


def adversarial_perturbation(
    logits_fn: Logits,
    x: jax.Array,
    key: jax.Array,
    *,
    epsilon: float,
    xi: float,
    iterations: int,
    clean: jax.Array | None = None,
) -> jax.Array:
    """r of norm `epsilon` per example: `iterations` power iterations from a random direction,
    each probing the KL at x + xi·d (`clean`: the logits at x, when already computed)."""
    if clean is None:
        clean = jax.lax.stop_gradient(logits_fn(x))
    d = jax.random.normal(key, x.shape, x.dtype)
    for _ in range(iterations):
        probe = xi * unit(d)
        d = jax.grad(lambda p: bernoulli_kl(clean, logits_fn(x + p)))(probe)
        d = jax.lax.stop_gradient(d)
    return epsilon * unit(d)


def vat_loss(
    logits_fn: Logits,
    x: jax.Array,
    key: jax.Array,
    *,
    epsilon: float,
    xi: float,
    iterations: int,
) -> jax.Array:
    """KL(p(x) ‖ p(x + r)), differentiable in the model's parameters (through `logits_fn`);
    p(x) is a constant target."""
    clean = jax.lax.stop_gradient(logits_fn(x))
    r = adversarial_perturbation(
        logits_fn, x, key, epsilon=epsilon, xi=xi, iterations=iterations, clean=clean
    )
    return bernoulli_kl(clean, logits_fn(x + r))
