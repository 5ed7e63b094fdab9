"""Run TFLite models and measure their single-image latency.

The interpreter is LiteRT's (`ai_edge_litert`) when installed, else the one
TensorFlow still ships (`tf.lite.Interpreter`, deprecated in favour of
LiteRT but present in the TF 2.21 that this project depends on). Both apply
the XNNPACK delegate to float and int8 models by default, which is the CPU
path a phone uses, so the latency measured here is the number the paper's
CPU tables are about (single thread, batch 1).
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


def interpreter(model_path: str | None = None, model_content: bytes | None = None, threads: int = 1) -> Any:
    """A TFLite interpreter with its tensors allocated."""
    from mnv2_jax import quiet

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation notice pointing at ai_edge_litert
            Interpreter = quiet.import_tensorflow().lite.Interpreter
    # The XNNPACK delegate announces itself on stderr when it is applied.
    with warnings.catch_warnings(), quiet.quiet_stderr():
        warnings.simplefilter("ignore")
        interp = Interpreter(model_path=model_path, model_content=model_content, num_threads=threads)
        interp.allocate_tensors()
    return interp


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float input -> the model's input dtype (int8/uint8 models carry a scale and zero point)."""
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.floating):
        return x.astype(dtype)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.issubdtype(detail["dtype"], np.floating):
        return y.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return (y.astype(np.float32) - zero_point) * scale


def run(model: str | bytes | Any, images: np.ndarray, threads: int = 1) -> np.ndarray:
    """Float outputs of a TFLite model (path, flatbuffer bytes or interpreter) on float images.

    Images go through one at a time when the model has a fixed batch of 1
    (how export writes them). Quantized inputs and outputs are converted with
    the model's own scale and zero point, so int8 and float models are
    compared on the same float images.
    """
    if isinstance(model, str):
        interp = interpreter(model_path=model, threads=threads)
    elif isinstance(model, (bytes, bytearray)):
        interp = interpreter(model_content=bytes(model), threads=threads)
    else:
        interp = model
    (inp,) = interp.get_input_details()
    (out,) = interp.get_output_details()
    batch = int(inp["shape"][0])
    images = np.asarray(images, np.float32)
    outputs = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        interp.set_tensor(inp["index"], _quantize(chunk, inp))
        interp.invoke()
        outputs.append(_dequantize(interp.get_tensor(out["index"]), out))
    return np.concatenate(outputs)


@contextmanager
def pinned(cpus: int) -> Iterator[list[int] | None]:
    """Pin this process to `cpus` cores for the duration (where the OS allows it).

    Pinning keeps the scheduler from migrating the interpreter's threads,
    which otherwise adds cache misses and noise to single-thread latencies.
    Yields the cores used, or None where affinity cannot be set (macOS).
    """
    if not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    chosen = sorted(before)[: max(1, cpus)]
    try:
        os.sched_setaffinity(0, chosen)
    except OSError:
        yield None
        return
    try:
        yield chosen
    finally:
        os.sched_setaffinity(0, before)


def benchmark(tflite_path: str, threads: int = 1, repeats: int = 50, warmup: int = 10) -> dict:
    """Latency of one invoke (batch as exported, normally 1): median and 90th percentile in ms.

    `threads` interpreter threads, pinned to as many cores. Inputs are random
    values of the model's input dtype; a dense conv net's latency does not
    depend on the values. The first `warmup` invokes (XNNPACK packs weights
    and allocates on the first) are not timed.
    """
    if not os.path.exists(tflite_path):
        raise ValueError(f"--tflite: no such file {tflite_path!r}")
    if threads < 1 or repeats < 1 or warmup < 0:
        raise ValueError(
            f"threads and repeats must be >= 1, warmup >= 0 (got {threads}, {repeats}, {warmup})"
        )
    with pinned(threads) as cpus:
        interp = interpreter(model_path=tflite_path, threads=threads)
        (inp,) = interp.get_input_details()
        rng = np.random.default_rng(0)
        x = _quantize(rng.uniform(-1, 1, inp["shape"]).astype(np.float32), inp)
        interp.set_tensor(inp["index"], x)
        for _ in range(warmup):
            interp.invoke()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            interp.invoke()
            times.append((time.perf_counter() - start) * 1e3)
    return {
        "latency_ms_median": statistics.median(times),
        "latency_ms_p90": float(np.percentile(times, 90)),
        "latency_ms_min": min(times),
        "threads": threads,
        "pinned_cpus": cpus,
        "repeats": repeats,
        "input_shape": [int(d) for d in inp["shape"]],
        "input_dtype": np.dtype(inp["dtype"]).name,
        "model_bytes": os.path.getsize(tflite_path),
        "path": tflite_path,
    }
