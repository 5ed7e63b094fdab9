"""Inference: a module's eval-mode forward pass, in chunks of the batch on one CPU device."""

from __future__ import annotations

import jax

# On one CPU device, inference runs a big batch in chunks, one after another in
# an XLA loop (`jax.lax.map`), each chunk through the whole network: the loop
# body's buffers are reused from chunk to chunk and stay in cache, where the
# whole batch at once streams every activation through memory. Inference only:
# batch norm uses its running statistics, so every image is independent. A chunk
# holds at least INFER_CHUNK_SIZE activation units (images x pixels x width
# multiplier; 8 images at 1.0/224). Smaller chunks are slower than the whole
# batch on CPU, so below the threshold the batch runs whole.
INFER_CHUNK_SIZE = 8 * 224 * 224


def infer_chunk(
    batch_size: int,
    image_shape: tuple[int, int] = (224, 224),
    width: float = 1.0,
    backend: str | None = None,
    device_count: int | None = None,
) -> int:
    """Images per chunk for `predict`: on a single CPU device the smallest divisor
    of the batch whose chunk reaches INFER_CHUNK_SIZE; elsewhere (GPU, TPU,
    several devices) the whole batch, since there a big batch keeps the chip busy."""
    backend = backend or jax.default_backend()
    device_count = jax.device_count() if device_count is None else device_count
    if backend != "cpu" or device_count != 1:
        return batch_size
    per_image = image_shape[0] * image_shape[1] * width
    reaching = [
        d for d in range(1, batch_size + 1) if batch_size % d == 0 and d * per_image >= INFER_CHUNK_SIZE
    ]
    return min(reaching, default=batch_size)


def predict(model, variables: dict, images: jax.Array, chunk: int | None = None) -> jax.Array:
    """Inference logits (`model.apply(variables, images, train=False)`), computed in
    chunks of `chunk` images (None: `infer_chunk`), which must divide the batch."""
    batch = images.shape[0]
    if chunk is None:
        arch = getattr(model, "arch", None)
        chunk = infer_chunk(batch, images.shape[1:3], arch.width if arch is not None else 1.0)
    if chunk >= batch:
        return model.apply(variables, images, train=False)
    if chunk < 1 or batch % chunk:
        raise ValueError(f"chunk: must be a positive divisor of the batch size {batch}, got {chunk}")
    chunks = images.reshape(batch // chunk, chunk, *images.shape[1:])
    logits = jax.lax.map(lambda x: model.apply(variables, x, train=False), chunks)
    return logits.reshape(batch, *logits.shape[2:])
