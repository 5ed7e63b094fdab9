"""PyTorch reference: the same MobileNetV2 as `mnv2_jax.models.mobilenet_v2`, for side-by-side throughput.

The network is built from our architecture spec (`mnv2_jax.spec.build_architecture`),
so its layers, channels, strides, dilations and shortcuts are exactly those of
the Flax model; only the framework differs. Choices that mirror ours:

* every layer is conv (no bias) -> batch norm (eps 1e-3, decay 0.997, i.e.
  torch ``momentum=0.003``) -> ReLU6 (the projection is linear unless the
  spec says ``bottleneck_activation='relu6'``);
* TF 'SAME' padding: a stride-2 3x3 conv on an even input pads 0 top/left and
  1 bottom/right (``F.pad`` before the conv, since torch convs only pad
  symmetrically). ``--padding symmetric`` pads 1 on every side instead: the
  same output shape and conv cost without the pad copy, but not TF's numbers;
* global average pool -> dropout 0.2 -> linear classifier;
* initialisation as ours (truncated-normal He fan-in for convs, N(0, 0.01) for
  the classifier) -- irrelevant to speed, but keeps the two models alike;
* the 'slim' recipe's optimizer: RMSProp with decay 0.9, momentum 0.9 and
  epsilon 1.0 *inside* the square root, accumulator starting at 1 (TF1 /
  optax ``rmsprop(initial_scale=1, eps_in_sqrt=True)``), written below as
  `SlimRMSprop` with ``torch._foreach_*`` ops. ``--optimizer torch`` uses
  ``torch.optim.RMSprop(alpha=0.9, momentum=0.9, eps=1.0)`` instead (eps outside
  the sqrt, accumulator starting at 0): different numbers, the same work;
* L2 weight decay 4e-5 added to the gradient of the regular conv kernels and
  the classifier kernel only (not depthwise kernels, biases or batch norm);
* cross entropy with label smoothing 0.1.

A train step = forward (train mode, so batch norm updates its running
statistics), loss, backward, optimizer step (and, with ``--ema``, the
exponential moving average of weights and batch-norm statistics that our
train step keeps). Inference = eval-mode forward under ``torch.inference_mode()``.
Inputs are synthetic: one fixed random batch in [-1, 1], reused every step, so
the numbers measure the model, not an input pipeline.

CPU: NCHW, eager, torch's default thread count and oneDNN (mkldnn) defaults.
CUDA (when available): channels_last and bf16 autocast by default; ``--compile``
wraps the model in ``torch.compile`` on either device.

    python benchmarks/torch_mnv2.py --width 1.0 --resolution 224 --batch-size 32 [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:
    from mnv2_jax.spec import Architecture, BlockSpec, build_architecture, same_padding
except ImportError:  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mnv2_jax.spec import Architecture, BlockSpec, build_architecture, same_padding
from mnv2_jax.tools.bench import library_versions  # noqa: E402  (standard library and numpy only)

BN_DECAY = 0.997  # TF-Slim MobileNet; torch's momentum is 1 - decay
BN_EPSILON = 1e-3
DROPOUT = 0.2
LABEL_SMOOTHING = 0.1
WEIGHT_DECAY = 4e-5
BASE_LR = 0.045  # per 96 images, as the slim recipe
PADDINGS = ("tf", "symmetric")


# --------------------------------------------------------------------------- model


class SameConv2d(nn.Conv2d):
    """A bias-free conv with TF 'SAME' padding (``padding='tf'``) or symmetric padding.

    TF pads ``total // 2`` before and the rest after, so a stride-2 3x3 conv on
    an even input pads (0, 1); symmetric cases go to the conv's own padding and
    only the asymmetric ones pay for an ``F.pad``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        pad_mode: str = "tf",
    ) -> None:
        if pad_mode not in PADDINGS:
            raise ValueError(f"padding: must be one of {PADDINGS}, got {pad_mode!r}")
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=0,
            dilation=dilation,
            groups=groups,
            bias=False,
        )
        self.tf_padding = pad_mode == "tf"

    def padding_for(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) for an input of this size (plain ints: no state for torch.compile)."""
        k, s, d = self.kernel_size[0], self.stride[0], self.dilation[0]
        if not self.tf_padding:
            p = (k - 1) * d // 2
            return p, p, p, p
        return (*same_padding(height, k, s, d), *same_padding(width, k, s, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom, left, right = self.padding_for(x.shape[-2], x.shape[-1])
        if top == bottom and left == right:
            padding: tuple[int, int] = (top, left)
        else:
            x = F.pad(x, (left, right, top, bottom))
            padding = (0, 0)
        return F.conv2d(x, self.weight, None, self.stride, padding, self.dilation, self.groups)


class ConvBN(nn.Module):
    """Conv -> batch norm -> optional ReLU6, the unit of every layer (ours: `model.ConvBN`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        dilation: int = 1,
        depthwise: bool = False,
        relu6: bool = True,
        padding: str = "tf",
    ) -> None:
        super().__init__()
        groups = in_channels if depthwise else 1
        if depthwise and in_channels != out_channels:
            raise ValueError(f"depthwise conv: in_channels {in_channels} != out_channels {out_channels}")
        self.conv = SameConv2d(in_channels, out_channels, kernel_size, stride, dilation, groups, padding)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPSILON, momentum=1.0 - BN_DECAY)
        self.act = nn.ReLU6(inplace=True) if relu6 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    """Table 1 of the paper, wired as `mnv2_jax.models.mobilenet_v2.InvertedResidual` (shortcut per spec)."""

    def __init__(self, block: BlockSpec, padding: str = "tf") -> None:
        super().__init__()
        self.shortcut = block.shortcut
        c = block.expanded_channels
        self.expand = ConvBN(block.in_channels, c, padding=padding) if block.has_expansion else None
        self.depthwise = ConvBN(c, c, 3, block.stride, block.dilation, depthwise=True, padding=padding)
        relu6 = block.bottleneck_activation == "relu6"
        self.project = ConvBN(c, block.out_channels, relu6=relu6, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = x
        if self.expand is not None:
            x = self.expand(x)
        expanded = x
        x = self.depthwise(x)
        if self.shortcut == "expansion":
            x = x + expanded
        x = self.project(x)
        if self.shortcut == "bottleneck":
            x = x + inputs
        return x


@torch.no_grad()
def _trunc_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """N(0, std) truncated at +-2 std by inverting the CDF (no rejection loop, as JAX does)."""
    lower = math.erf(-2.0 / math.sqrt(2.0))
    tensor.uniform_(lower, -lower).erfinv_().mul_(std * math.sqrt(2.0))
    return tensor.clamp_(-2 * std, 2 * std)


class TorchMobileNetV2(nn.Module):
    """Any architecture `build_architecture` derives, in PyTorch (NCHW inputs in [-1, 1]).

    Submodule names follow our Flax parameter tree: ``stem``, ``block_{i}.{expand,
    depthwise,project}``, ``head``, ``classifier``; each unit has ``.conv`` and ``.bn``.
    """

    def __init__(self, arch: Architecture, dropout: float = DROPOUT, padding: str = "tf") -> None:
        super().__init__()
        self.arch = arch
        stem, head = arch.stem, arch.head
        self.stem = ConvBN(stem.in_channels, stem.out_channels, stem.kernel, stem.stride, padding=padding)
        self.blocks = nn.Sequential()
        for block in arch.blocks:
            self.blocks.add_module(block.name, InvertedResidual(block, padding))
        self.head = ConvBN(head.in_channels, head.out_channels, head.kernel, head.stride, padding=padding)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(head.out_channels, arch.num_classes) if arch.num_classes else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as `mnv2_jax.models.mobilenet_v2`: variance_scaling(2, fan_in, truncated_normal) convs."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()  # (in / groups) * k * k, as Flax's (k, k, in, out)
                # JAX's truncated normal: std corrected for truncation at +-2 std.
                _trunc_normal_(module.weight, math.sqrt(2.0 / fan_in) / 0.87962566103423978)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, 0.0, 0.01)
            nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        x = x.float().mean(dim=(2, 3))
        if self.classifier is not None:
            x = self.classifier(self.dropout(x))
        return x.float()


def build_model(
    width: float = 1.0,
    *,
    expansion: float = 6,
    bottleneck_activation: str = "linear",
    residual: str = "bottleneck",
    num_classes: int = 1000,
    padding: str = "tf",
    dropout: float = DROPOUT,
) -> TorchMobileNetV2:
    """The torch twin of `mnv2_jax.models.mobilenet_v2.create_model(width, ...)`."""
    arch = build_architecture(
        width=width,
        expansion=expansion,
        bottleneck_activation=bottleneck_activation,
        residual=residual,
        num_classes=num_classes,
    )
    return TorchMobileNetV2(arch, dropout=dropout, padding=padding)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``params`` (conv and classifier weights and biases) and ``params_bn`` (BN scale and offset).

    The definitions of `mnv2_jax.accounting`; BN running statistics are buffers, not counted.
    """
    params = params_bn = 0
    for module in model.modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params_bn += own
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            params += own
        elif own:
            raise TypeError(f"unexpected parameters in {type(module).__name__}")
    return {"params": params, "params_bn": params_bn}


# --------------------------------------------------------------------------- optimizer


class SlimRMSprop(torch.optim.Optimizer):
    """TF1 RMSProp with momentum, as the TF-Slim recipe (optax ``rmsprop(initial_scale=1.0)``).

    Per parameter, with ``g = grad + weight_decay * p`` (L2 added to the gradient)::

        ms  = decay * ms + (1 - decay) * g**2        # ms starts at initial_scale
        mom = momentum * mom + lr * g / sqrt(ms + eps)
        p  -= mom

    Epsilon sits inside the square root. Updates use ``torch._foreach_*`` ops
    (one kernel per op per group on CUDA).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        decay: float = 0.9,
        momentum: float = 0.9,
        eps: float = 1.0,
        initial_scale: float = 1.0,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = dict(
            lr=lr,
            decay=decay,
            momentum=momentum,
            eps=eps,
            initial_scale=initial_scale,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                state = self.state[p]
                if not state:
                    state["ms"] = torch.full_like(
                        p, group["initial_scale"], memory_format=torch.preserve_format
                    )
                    state["mom"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            grads = [p.grad for p in params]
            ms = [self.state[p]["ms"] for p in params]
            mom = [self.state[p]["mom"] for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            torch._foreach_mul_(ms, group["decay"])
            torch._foreach_addcmul_(ms, grads, grads, value=1.0 - group["decay"])
            denom = torch._foreach_add(ms, group["eps"])
            torch._foreach_sqrt_(denom)
            torch._foreach_mul_(mom, group["momentum"])
            torch._foreach_addcdiv_(mom, grads, denom, value=group["lr"])
            torch._foreach_sub_(params, mom)
        return loss


def parameter_groups(model: TorchMobileNetV2, weight_decay: float = WEIGHT_DECAY) -> list[dict[str, Any]]:
    """Weight decay on regular conv kernels and the classifier kernel; none elsewhere."""
    decay, no_decay = [], []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            (decay if module.groups == 1 else no_decay).append(module.weight)
        elif isinstance(module, nn.Linear):
            decay.append(module.weight)
            if module.bias is not None:
                no_decay.append(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            no_decay.extend(p for p in (module.weight, module.bias) if p is not None)
    n_grouped = len(decay) + len(no_decay)
    n_total = len(list(model.parameters()))
    if n_grouped != n_total:
        raise RuntimeError(f"parameter groups cover {n_grouped} of {n_total} parameters")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: TorchMobileNetV2, batch_size: int, kind: str = "slim") -> torch.optim.Optimizer:
    """The slim recipe's optimizer (learning rate 0.045 x B / 96, constant: schedules cost nothing)."""
    lr = BASE_LR * batch_size / 96
    groups = parameter_groups(model)
    if kind == "slim":
        return SlimRMSprop(groups, lr=lr, decay=0.9, momentum=0.9, eps=1.0, initial_scale=1.0)
    if kind == "torch":
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.9, eps=1.0, momentum=0.9)
    raise ValueError(f"optimizer: must be 'slim' or 'torch', got {kind!r}")


class WeightEMA:
    """EMA of weights and batch-norm statistics with TF's warm-up, min(decay, (1+t)/(10+t))."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.step = 0
        self.live = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.shadow = [t.detach().clone() for t in self.live]

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(self.shadow, self.live, 1.0 - d)
        self.step += 1


# --------------------------------------------------------------------------- benchmark


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_runs(fn: Callable[[], None], steps: int, repeats: int, device: torch.device) -> list[float]:
    """Seconds for each of `repeats` runs of `steps` calls."""
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def run_benchmark(
    width: float = 1.0,
    resolution: int = 224,
    batch_size: int = 32,
    *,
    steps: int = 10,
    warmup: int = 3,
    repeats: int = 3,
    device: str = "auto",
    threads: int | None = None,
    channels_last: bool | None = None,
    bf16: bool | None = None,
    compile_model: bool = False,
    padding: str = "tf",
    optimizer: str = "slim",
    ema_decay: float = 0.0,
    num_classes: int = 1000,
    expansion: float = 6,
    residual: str = "bottleneck",
    bottleneck_activation: str = "linear",
    skip_train: bool = False,
    skip_infer: bool = False,
    infer_chunk: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """Train and inference throughput (images/s, median over `repeats` after `warmup` steps)."""
    if infer_chunk is not None and infer_chunk < 1:
        raise ValueError(f"infer_chunk: must be a positive number of images, got {infer_chunk}")
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    on_cuda = dev.type == "cuda"
    channels_last = on_cuda if channels_last is None else channels_last
    bf16 = on_cuda if bf16 is None else bf16
    if on_cuda:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(seed)

    model = build_model(
        width,
        expansion=expansion,
        bottleneck_activation=bottleneck_activation,
        residual=residual,
        num_classes=num_classes,
        padding=padding,
    )
    counts = count_parameters(model)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=memory_format)
    opt = make_optimizer(model, batch_size, optimizer)
    ema = WeightEMA(model, ema_decay) if ema_decay else None
    net: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model) if compile_model else model

    images = (torch.rand(batch_size, 3, resolution, resolution, device=dev) * 2 - 1).contiguous(
        memory_format=memory_format
    )
    labels = torch.randint(0, max(num_classes, 1), (batch_size,), device=dev)

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def train_step() -> None:
        with autocast():
            logits = net(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=LABEL_SMOOTHING)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update()

    def infer_step() -> None:
        with torch.inference_mode(), autocast():
            if infer_chunk and infer_chunk < batch_size:  # the batch in chunks, one after another
                torch.cat([net(chunk) for chunk in images.split(infer_chunk)])
            else:
                net(images)

    result: dict[str, Any] = {
        "framework": "torch",
        "torch_version": torch.__version__,
        # The JAX side's versions too, so that a torch number filed beside a JAX one says what it met.
        "versions": library_versions(("torch", "jax", "jaxlib")),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "device": torch.cuda.get_device_name(dev)
        if on_cuda
        else f"cpu ({platform.processor() or platform.machine()})",
        "width": width,
        "resolution": resolution,
        "batch_size": batch_size,
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
        "channels_last": channels_last,
        "bf16": bf16,
        "compile": compile_model,
        "padding": padding,
        "optimizer": optimizer,
        "ema_decay": ema_decay,
        "infer_chunk": infer_chunk or batch_size,
        **counts,
    }

    if not skip_train:
        model.train()
        start = time.perf_counter()
        for _ in range(max(warmup, 1)):
            train_step()
        _sync(dev)
        result["train_warmup_seconds"] = time.perf_counter() - start
        log(f"train warm-up: {warmup} steps in {result['train_warmup_seconds']:.1f} s")
        times = _timed_runs(train_step, steps, repeats, dev)
        result["train_seconds"] = times
        result["train_images_per_sec"] = statistics.median(steps * batch_size / t for t in times)
        log(
            f"train: {result['train_images_per_sec']:.1f} images/s ({', '.join(f'{t:.2f}' for t in times)} s)"
        )

    if not skip_infer:
        model.eval()
        start = time.perf_counter()
        for _ in range(max(warmup, 1)):
            infer_step()
        _sync(dev)
        result["infer_warmup_seconds"] = time.perf_counter() - start
        times = _timed_runs(infer_step, steps, repeats, dev)
        result["infer_seconds"] = times
        result["infer_images_per_sec"] = statistics.median(steps * batch_size / t for t in times)
        log(
            f"infer: {result['infer_images_per_sec']:.1f} images/s ({', '.join(f'{t:.2f}' for t in times)} s)"
        )
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="steps per timed repeat (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported (default 3)")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    cl = p.add_mutually_exclusive_group()
    cl.add_argument(
        "--channels-last",
        dest="channels_last",
        action="store_true",
        default=None,
        help="NHWC memory format (default on CUDA only)",
    )
    cl.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    bf = p.add_mutually_exclusive_group()
    bf.add_argument(
        "--bf16", dest="bf16", action="store_true", default=None, help="bf16 autocast (default on CUDA only)"
    )
    bf.add_argument("--no-bf16", dest="bf16", action="store_false")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument(
        "--infer-chunk",
        type=int,
        default=None,
        help="run inference over the batch in chunks of this many images (default: the whole batch)",
    )
    p.add_argument(
        "--padding",
        choices=PADDINGS,
        default="tf",
        help="tf: exact TF 'SAME' (F.pad where asymmetric); symmetric: conv padding only",
    )
    p.add_argument(
        "--optimizer",
        choices=("slim", "torch"),
        default="slim",
        help="slim: TF1 RMSProp, eps in sqrt, ms0=1; torch: torch.optim.RMSprop",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="also keep an EMA of weights and BN stats (ours: 0.9999); default off",
    )
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--expansion", type=float, default=6)
    p.add_argument("--residual", default="bottleneck", choices=("bottleneck", "expansion", "none"))
    p.add_argument("--bottleneck-activation", default="linear", choices=("linear", "relu6"))
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-infer", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (progress on stderr)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    result = run_benchmark(
        args.width,
        args.resolution,
        args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.repeats,
        device=args.device,
        threads=args.threads,
        channels_last=args.channels_last,
        bf16=args.bf16,
        compile_model=args.compile,
        padding=args.padding,
        optimizer=args.optimizer,
        ema_decay=args.ema,
        num_classes=args.num_classes,
        expansion=args.expansion,
        residual=args.residual,
        bottleneck_activation=args.bottleneck_activation,
        skip_train=args.skip_train,
        skip_infer=args.skip_infer,
        infer_chunk=args.infer_chunk,
        log=log,
    )
    if args.json:
        print(json.dumps(result), flush=True)
        return
    print(
        f"torch {result['torch_version']} on {result['device']}, {result['threads']} threads, "
        f"mkldnn={result['mkldnn']}, channels_last={result['channels_last']}, bf16={result['bf16']}, "
        f"compile={result['compile']}"
    )
    print(
        f"MobileNetV2 {args.width}/{args.resolution}, batch {args.batch_size}: "
        f"{result['params']:,} params + {result['params_bn']:,} BN params"
    )
    for key in ("train_images_per_sec", "infer_images_per_sec"):
        if key in result:
            print(f"{key}: {result[key]:.1f}")


if __name__ == "__main__":
    main()
