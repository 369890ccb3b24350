"""Plain-PyTorch peers of the benchmark arms: what a user would write without keras_normreg.

Shared by bench/bench_backends.py (peer arms interleaved with the Keras arms of a group) and
bench/bench_gpu.py (the PyTorch ResNet-20 reference). torch is imported lazily: importing this
module needs nothing but the standard library.

* :func:`torch_resnet`: the CIFAR ResNet of ``zoo.build_resnet`` (option A shortcuts) in
  PyTorch, with the zoo's parameter count (:func:`torch_param_counts` counts like Keras).
* :func:`torch_mlp`: ``zoo.mlp(norm="batch")`` in PyTorch (Linear without bias, BatchNorm1d,
  ReLU per hidden layer; a Linear head).
* :func:`adamp_class`, :func:`sgdp_class`: AdamP and SGDP (Heo et al., ICLR 2021,
  arXiv:2006.08217) as plain per-parameter ``torch.optim.Optimizer`` classes, written from the
  paper's algorithm (channel view, then layer view; decoupled decay times lr).
* :class:`Peers`: the peer arms of a bench_backends.py group, their options, their throughput
  table and the errors of arms that could not be built.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import signal
import sys
import time

#: ResNet-20 at full size: trainable parameters, derived by hand in tests/test_bench_gpu.py.
RESNET20_TRAINABLE = 269_722

TORCH_SUFFIX = "(plain PyTorch)"
WN_TORCH = f"torch weight_norm {TORCH_SUFFIX}"
LINEAR_TORCH = f"torch Linear {TORCH_SUFFIX}"
ADAMP_TORCH = f"AdamP reference {TORCH_SUFFIX}"
SGDP_TORCH = f"SGDP reference {TORCH_SUFFIX}"
#: the plain twins of the references: what the algorithm itself costs when written by hand
SGD_TORCH = f"torch SGD {TORCH_SUFFIX}"
ADAMW_TORCH = f"torch AdamW {TORCH_SUFFIX}"
RESNET_EAGER = "PyTorch ResNet-20 eager"


def has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


# ---------------------------------------------------------------------- models
def torch_resnet(depth: int = 20, width: int = 16, num_classes: int = 10):
    """The CIFAR ResNet of ``zoo.build_resnet`` (He et al. 2016 sec. 4.2, option A) in PyTorch.

    ``conv3x3(width) -> BN -> ReLU``, three stages of ``(depth - 2) / 6`` basic blocks with
    ``width, 2 width, 4 width`` channels (the first block of stages 2 and 3 has stride 2), global
    average pooling, a Linear head. Convs have no bias (BN follows); the shortcut where the shape
    changes subsamples with stride 2 and pads the new channels with zeros, ``(c_new - c_old) // 2``
    before and the rest after, as the zoo's ``ZeroPadChannels``: no parameters.
    """
    import torch
    from torch import nn

    f = torch.nn.functional
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError("Argument `depth` must be of the form 6n + 2 with n >= 1. "
                         f"Received: depth={depth!r}")

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.stride, self.pad = stride, cout - cin

        def forward(self, x):
            y = f.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            s = x
            if self.stride != 1:
                s = s[:, :, ::self.stride, ::self.stride]
            if self.pad:
                before = self.pad // 2
                s = f.pad(s, (0, 0, 0, 0, before, self.pad - before))
            return f.relu(y + s)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            n = (depth - 2) // 6
            self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(width)
            blocks, cin = [], width
            for stage in range(3):
                cout = width * 2**stage
                for b in range(n):
                    blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
                    cin = cout
            self.blocks = nn.Sequential(*blocks)
            self.head = nn.Linear(cin, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

        def forward(self, x):
            x = f.relu(self.bn(self.stem(x)))
            x = self.blocks(x)
            return self.head(x.mean(dim=(2, 3)))

    return ResNet()


def torch_param_counts(model) -> tuple[int, int]:
    """(total, trainable) like Keras counts them: parameters plus BN's running mean/variance
    (``num_batches_tracked`` is PyTorch bookkeeping that Keras has no counterpart for)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    running = sum(b.numel() for name, b in model.named_buffers()
                  if name.endswith(("running_mean", "running_var")))
    return sum(p.numel() for p in model.parameters()) + running, trainable


def torch_mlp(in_features: int, units, num_classes: int = 10):
    """``zoo.mlp(norm="batch")`` in PyTorch: ``[Linear (no bias) -> BatchNorm1d -> ReLU]`` per
    entry of ``units``, then a Linear head with bias. BatchNorm1d gets Keras' defaults
    (epsilon 1e-3, moving-average momentum 0.99, i.e. PyTorch ``momentum=0.01``)."""
    from torch import nn

    layers, cin = [], in_features
    for u in units:
        layers += [nn.Linear(cin, u, bias=False), nn.BatchNorm1d(u, eps=1e-3, momentum=0.01),
                   nn.ReLU()]
        cin = u
    layers.append(nn.Linear(cin, num_classes))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------- AdamP and SGDP
def adamp_class():
    """The AdamP optimizer class (a ``torch.optim.Optimizer``)."""
    return _optimizer_classes()[0]


def sgdp_class():
    """The SGDP optimizer class (a ``torch.optim.Optimizer``)."""
    return _optimizer_classes()[1]


@functools.cache
def _optimizer_classes():
    """(AdamP, SGDP), built on first use so that this module imports without torch."""
    import torch

    def project(w, g, d, delta, wd_ratio, eps):
        """(d', r): ``d`` without its radial part if ``w`` looks scale-invariant.

        PyTorch weights have their output channel on the FIRST axis, so the channel view is
        ``w.reshape(out, -1)`` (one row per output channel); the layer view the whole tensor.
        """
        out = w.shape[0]
        W, G, D = (a.reshape(out, -1) for a in (w, g, d))
        w_norm = W.norm(dim=1)
        cos = (W * G).sum(dim=1).abs() / (w_norm * G.norm(dim=1) + eps)
        if cos.max() < delta / math.sqrt(W.shape[1]):
            unit = W / (w_norm + eps).unsqueeze(1)
            return (D - unit * (unit * D).sum(dim=1, keepdim=True)).reshape(d.shape), wd_ratio
        cos = (w * g).sum().abs() / (w.norm() * g.norm() + eps)
        if cos < delta / math.sqrt(w.numel()):
            unit = w / (w.norm() + eps)
            return d - unit * (unit * d).sum(), wd_ratio
        return d, 1.0

    class _Projected(torch.optim.Optimizer):
        """The step shared by both: per parameter, the direction ``d`` of the subclass, its
        projection and ratio ``r`` (rank >= 2), the decoupled decay ``w ← w·(1 − lr·λ·r)``
        and ``w ← w − lr·d``."""

        def direction(self, p, g, state, group):
            raise NotImplementedError

        @torch.no_grad()
        def step(self, closure=None):
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for group in self.param_groups:
                lr, decay = group["lr"], group["weight_decay"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    g = p.grad
                    d = self.direction(p, g, self.state[p], group)
                    ratio = 1.0
                    if p.dim() > 1:
                        d, ratio = project(p, g, d, group["delta"], group["wd_ratio"],
                                           group["eps"])
                    if decay:
                        p.mul_(1 - lr * decay * ratio)
                    p.add_(d, alpha=-lr)
            return loss

    class AdamP(_Projected):
        """Adam whose update loses its radial part on weights that look scale-invariant.

        Per parameter and step ``t = 1, 2, ...``: ``m, v`` Adam's moments; ``d = m̂ / (√v̂ + ε)``
        (ε after the bias correction); for weights of rank >= 2, if every output channel's
        gradient is nearly orthogonal to its weight (``|cos| < δ/√fan``), ``d`` loses its
        component along each channel's weight and ``r = wd_ratio``; else if the whole gradient is
        nearly orthogonal to the whole weight (``|cos| < δ/√size``), ``d`` loses its component
        along the whole weight and ``r = wd_ratio``; else ``r = 1``. Then the decoupled decay
        ``w ← w·(1 − lr·λ·r)`` and the step ``w ← w − lr·d``.
        """

        def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                     delta=0.1, wd_ratio=0.1):
            super().__init__(params, dict(lr=lr, betas=betas, eps=eps,
                                          weight_decay=weight_decay, delta=delta,
                                          wd_ratio=wd_ratio))

        def direction(self, p, g, state, group):
            beta1, beta2 = group["betas"]
            if not state:
                state["step"] = 0
                state["m"] = torch.zeros_like(p)
                state["v"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"]
            m, v = state["m"], state["v"]
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            return m / (1 - beta1**t) / (v.sqrt() / math.sqrt(1 - beta2**t) + group["eps"])

    class SGDP(_Projected):
        """SGD with momentum whose update loses its radial part on weights that look
        scale-invariant (the same projection as :class:`AdamP`).

        Per parameter: ``b ← μ·b + (1 − dampening)·g`` (``b₀ = 0``); ``d = g + μ·b`` (Nesterov)
        or ``d = b``; the projection of ``d`` and the ratio ``r`` as in AdamP; then the
        decoupled decay ``w ← w·(1 − lr·λ·r)`` and ``w ← w − lr·d``.
        """

        def __init__(self, params, lr=0.1, momentum=0.9, dampening=0.0, nesterov=False,
                     weight_decay=0.0, delta=0.1, wd_ratio=0.1, eps=1e-8):
            super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                          nesterov=nesterov, weight_decay=weight_decay,
                                          delta=delta, wd_ratio=wd_ratio, eps=eps))

        def direction(self, p, g, state, group):
            mu = group["momentum"]
            if not state:
                state["buf"] = torch.zeros_like(p)
            buf = state["buf"]
            buf.mul_(mu).add_(g, alpha=1 - group["dampening"])
            return g + mu * buf if group["nesterov"] else buf.clone()

    return AdamP, SGDP


# ---------------------------------------------------------------------- train steps
def train_step(model, optimizer, loss_fn, x, y, run=None):
    """A step callable of a PyTorch model: zero the gradients, forward (through ``run``, e.g.
    the ``torch.compile``'d model, when given), loss, backward, optimizer step. It returns the
    loss as a Python float: like Keras' ``train_on_batch`` it waits for the step to finish."""
    run = model if run is None else run

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(run(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


class _CompileTimeout(Exception):
    pass


def _with_alarm(seconds, fn):
    """``fn()``, interrupted with _CompileTimeout after ``seconds`` (None or no SIGALRM: not)."""
    if not seconds or not hasattr(signal, "SIGALRM"):
        return fn()

    def alarm(signum, frame):
        raise _CompileTimeout(f"not compiled after {seconds} s (--torch-compile-timeout)")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(int(seconds))
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------- bench_backends.py
def add_arguments(parser) -> None:
    """The peer options of bench_backends.py."""
    parser.add_argument("--no-peers", action="store_true",
                        help="leave out the plain-PyTorch peer arms")
    parser.add_argument("--no-torch-compile", action="store_true",
                        help="leave out the torch.compile arm of the resnet20 group")
    parser.add_argument("--torch-compile", default=None,
                        help="torch.compile backend of that arm: inductor (default), or "
                             "aot_eager (--quick's default on a CPU: inductor's C++ code "
                             "generation takes minutes on 2 cores)")
    parser.add_argument("--torch-compile-timeout", type=float, default=900,
                        help="seconds the torch.compile arm may take to compile before it is "
                             "reported under errors (0: no limit)")


class Peers:
    """The plain-PyTorch arms of bench_backends.py's groups.

    ``arms(group, x, y)`` returns ``(arms, pairs)``: name -> step callable, and the extra
    ``(arm, baseline)`` pairs to report besides "every arm vs the group's baseline". An arm that
    cannot be built is left out and reported in ``errors``. The arms run on PyTorch's CPU, or
    its GPU when it has one, in float32 with the same batch as the Keras arms;
    ``torch.set_num_threads(--threads)`` is set before the first one (``--threads 0``: torch's
    default).
    """

    def __init__(self, args):
        self.args = args
        self.enabled = not args.no_peers and has_torch()
        self.errors: dict[str, str] = {}
        self.throughput: list[tuple[str, str, float, float]] = []
        self.compile_backend = None
        self.threads = None
        self.device = "cpu"
        if not self.enabled:
            return
        import torch

        if args.threads > 0:
            torch.set_num_threads(args.threads)
        self.threads = torch.get_num_threads()
        if torch.cuda.is_available():
            self.device = "cuda"
        if not args.no_torch_compile:
            self.compile_backend = args.torch_compile or (
                "aot_eager" if args.quick and self.device == "cpu" else "inductor")

    def fail(self, key, exc):
        text = str(exc).strip()
        msg = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
        self.errors[key] = msg
        print(f"[error] {key}: {msg}", file=sys.stderr, flush=True)

    def _build(self, group, makers):
        arms = {}
        for name, make in makers.items():
            t0 = time.perf_counter()
            try:
                step = make()
                step()  # the first call builds (torch.compile: compiles) outside the timing
            except Exception as exc:  # noqa: BLE001 - reported; the other arms still run
                self.fail(f"{group}/{name}", exc)
                continue
            arms[name] = step
            print(f"[{group}] built {name!r} in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr, flush=True)
        return arms

    def _tensors(self, x, y, channels_first=False):
        import torch

        if channels_first:
            x = x.transpose(0, 3, 1, 2)
        tx = torch.tensor(x, dtype=torch.float32, device=self.device)
        ty = torch.tensor(y, device=self.device)
        if y.dtype.kind == "i":
            ty = ty.long()  # cross_entropy's class indices
        return tx, ty

    def arms(self, group, x, y):
        if not self.enabled:
            return {}, []
        import torch

        f = torch.nn.functional
        torch.manual_seed(0)
        if group == "resnet20":
            tx, ty = self._tensors(x, y, channels_first=True)
            depth, width = (8, 4) if self.args.quick else (20, 16)

            def resnet(compiled):
                def make():
                    model = torch_resnet(depth, width).to(self.device).train()
                    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
                    run = (torch.compile(model, backend=self.compile_backend) if compiled
                           else model)
                    step = train_step(model, opt, f.cross_entropy, tx, ty, run)
                    if not compiled:
                        return step
                    limit = self.args.torch_compile_timeout
                    _with_alarm(limit, step)  # compile now, under the time limit
                    return step
                return make

            makers = {RESNET_EAGER: resnet(False)}
            if self.compile_backend:
                makers[f"PyTorch ResNet-20 torch.compile({self.compile_backend})"] = resnet(True)
            return self._build(group, makers), []
        if group == "wn_dense":
            tx, ty = self._tensors(x, y)
            d = tx.shape[1]

            def dense(weight_norm):
                def make():
                    layer = torch.nn.Linear(d, d).to(self.device)
                    if weight_norm:
                        layer = torch.nn.utils.parametrizations.weight_norm(layer)
                    opt = torch.optim.SGD(layer.parameters(), lr=0.01, momentum=0.9)
                    return train_step(layer, opt, f.mse_loss, tx, ty)
                return make

            arms = self._build(group, {LINEAR_TORCH: dense(False), WN_TORCH: dense(True)})
            return arms, [("WeightNorm Dense", WN_TORCH), (WN_TORCH, LINEAR_TORCH)]
        if group in ("adam", "sgd"):
            tx, ty = self._tensors(x, y)
            width = tx.shape[1]
            depth = 2 if self.args.quick else 4

            def mlp_with(optimizer, **kwargs):
                def make():
                    model = torch_mlp(width, (width,) * depth).to(self.device).train()
                    opt = optimizer(model.parameters(), **kwargs)
                    return train_step(model, opt, f.cross_entropy, tx, ty)
                return make

            if group == "adam":
                ours, name, plain = "AdamP", ADAMP_TORCH, ADAMW_TORCH
                makers = {name: mlp_with(adamp_class(), lr=1e-3, weight_decay=4e-3),
                          plain: mlp_with(torch.optim.AdamW, lr=1e-3, weight_decay=4e-3)}
            else:
                # torch's SGD adds the decay to the gradient (coupled): the same passes over
                # the weights as Keras' decoupled form, which is what a timing compares
                ours, name, plain = "SGDP", SGDP_TORCH, SGD_TORCH
                makers = {name: mlp_with(sgdp_class(), lr=0.1, momentum=0.9, weight_decay=5e-4),
                          plain: mlp_with(torch.optim.SGD, lr=0.1, momentum=0.9,
                                          weight_decay=5e-4)}
            return self._build(group, makers), [(ours, name), (name, plain)]
        return {}, []

    def pairs(self, names, baseline, extra):
        """Every arm vs ``baseline``, then the ``extra`` pairs whose arms are all there."""
        return ([(n, baseline) for n in names if n != baseline]
                + [p for p in extra if p[0] in names and p[1] in names])

    def record(self, group, times, batch):
        """Keep the median step time of every arm for the throughput table."""
        for name, seconds in times.items():
            self.throughput.append((group, name, 1e3 * seconds, batch / seconds))

    def report(self) -> str:
        """The peers' settings, the throughput table and the errors (empty without peers)."""
        if not self.enabled:
            why = "--no-peers" if self.args.no_peers else "torch is not installed"
            return f"plain-PyTorch peer arms: left out ({why})"
        import torch

        compiled = (f"torch.compile(backend={self.compile_backend!r})"
                    if self.compile_backend else "no torch.compile arm")
        lines = [f"plain-PyTorch peer arms: torch {torch.__version__} on {self.device}, float32, "
                 f"torch.set_num_threads({self.threads}), eager and {compiled}"]
        if self.throughput:
            lines += ["", "| benchmark | arm | ms/step | img/s |", "|---|---|---:|---:|"]
            lines += [f"| {g} | {n} | {ms:.1f} | {per_s:.0f} |"
                      for g, n, ms, per_s in self.throughput]
        if self.errors:
            lines += ["", "errors (arms left out):"]
            lines += [f"- {key}: {msg}" for key, msg in self.errors.items()]
        return "\n".join(lines)
