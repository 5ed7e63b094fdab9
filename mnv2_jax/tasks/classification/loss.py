"""Classification loss and metrics: softmax cross entropy (with label smoothing), top-1 and top-5."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross entropy with label smoothing, in float32."""
    num_classes = logits.shape[-1]
    targets = (
        optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
        if label_smoothing
        else (jax.nn.one_hot(labels, num_classes))
    )
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def train_loss(
    logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The mean loss of a batch and its top-1 accuracy."""
    loss = jnp.mean(cross_entropy(logits, labels, label_smoothing))
    return loss, {"top1": jnp.mean(jnp.argmax(logits, -1) == labels)}


def eval_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Sums over the real (mask == 1) examples of a batch: loss, top-1, top-5 and the count."""
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    return {
        "loss": jnp.sum(cross_entropy(logits, labels) * mask),
        "top1": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
        "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
        "count": jnp.sum(mask),
    }
