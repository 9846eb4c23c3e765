"""Training throughput on this CPU: medscale's JAX decoder vs the same model in PyTorch.

    .venv/bin/python benchmarks/bench_train_throughput.py            # 100K, 1M, 5M decoders
    .venv/bin/python benchmarks/bench_train_throughput.py --sizes 5e6 --torch-compile

One training step = forward, backward, global-norm clipping and an AdamW update, on a batch of
`--batch` windows of `--seq-len` tokens (the JAX model also masks packed subjects, two per window;
PyTorch gets its fastest path, `is_causal` SDPA, as it has no segments). float32 always; on a
processor with bfloat16 in hardware (AVX512-BF16 or AMX) also mixed precision: bf16 matmuls with
float32 weights, optimizer and accumulation (JAX: the model's compute dtype; PyTorch: CPU autocast).
Every worker runs the same number of steps on the same batch, so the losses at the end compare
bf16 with float32 in each framework.

The processor (model and instruction-set extensions) is printed and the table is written to
`benchmarks/results/train_throughput-<processor kind>.md`: a CPU figure holds only on its processor.
Each framework runs in its own worker process (idle thread pools of one runtime would otherwise
steal cores from the other), and the workers are driven in alternating rounds so both see the
same background load. tokens/s is reported at the median and at the best round (the best is the
least disturbed by other processes on a shared machine). MFU uses scaling/plan/flops.py's full count
against the float32 matmul peak, measured in this run: at the start and after each size, the
highest of those (a noisy moment lowers a measurement, and a low peak would flatter MFU).
`--cached-peak` starts from the cached figure of `device_peak_flops` instead of a new one.

JAX runs on `--devices` XLA host devices (default: one per core) with the batch split over them:
one XLA CPU device does not keep every core busy.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from medscale.models.config import ModelConfig, param_counts, shape_for_params  # noqa: E402
from medscale.scaling.plan.flops import mfu  # noqa: E402

LR, WD, CLIP = 1e-3, 0.1, 1.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1e5,1e6,5e6", help="target non-embedding parameter counts")
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=6, help="timed rounds per framework and size")
    p.add_argument("--steps", type=int, default=3, help="steps per round")
    p.add_argument("--settle", type=float, default=0.5, help="seconds between one worker's round and the next's")
    p.add_argument("--devices", type=int, default=os.cpu_count() or 1, help="XLA host devices")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--dtypes", default=None,
                   help="float32,bfloat16 (default: both where the processor has bf16 in hardware)")
    p.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/")
    p.add_argument("--torch-compile", action="store_true", help="also time torch.compile'd PyTorch")
    p.add_argument("--cached-peak", action="store_true",
                   help="use the cached matmul peak instead of measuring it in this run")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc malloc as it is (medscale runs, and by default both workers here, "
                        "keep freed memory: scaling.runtime.keep_freed_memory)")
    p.add_argument("--worker", choices=["jax", "torch", "torch.compile"], help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--size", type=float, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def set_xla_devices(n: int) -> None:
    """Must run before the first import of jax."""
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={n}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def make_batch(cfg: ModelConfig, batch: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, cfg.vocab_size, (batch, seq_len + 1)).astype(np.int32)
    segment_ids = (np.arange(seq_len) >= seq_len // 3).astype(np.int32)[None].repeat(batch, 0)
    return dict(inputs=toks[:, :-1], targets=toks[:, 1:], weights=np.ones((batch, seq_len), np.float32),
                segment_ids=segment_ids)


class JaxRunner:
    name = "jax"

    def __init__(self, cfg: ModelConfig, batch: dict[str, np.ndarray], dtype: str = "float32"):
        import jax.numpy as jnp
        import optax

        from medscale.models.sharding import make_mesh, shard_batch
        from medscale.models.step import init_train_state, make_train_step

        tx = optax.chain(optax.clip_by_global_norm(CLIP), optax.adamw(LR, weight_decay=WD))
        self.mesh = make_mesh()
        graphdef, self.state = init_train_state(cfg, tx, self.mesh, seed=0, compute_dtype=jnp.dtype(dtype))
        self.step_fn = make_train_step(graphdef, tx, self.mesh)
        self.batch = shard_batch(batch, self.mesh)  # placed once, as a prefetching loader would

    def step(self) -> None:
        self.state, self.metrics = self.step_fn(self.state, self.batch)

    def sync(self) -> float:
        return float(self.metrics["loss"])


def torch_runner(cfg: ModelConfig, batch: dict[str, np.ndarray], compile_: bool, dtype: str = "float32"):
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)
    D, H, K, Fd, V = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size

    def rope(x, sin, cos):  # x [B, H, L, K]
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn_norm, self.mlp_norm = nn.RMSNorm(D, eps=1e-6), nn.RMSNorm(D, eps=1e-6)
            self.q, self.k, self.v = (nn.Linear(D, H * K, bias=False) for _ in range(3))
            self.out = nn.Linear(H * K, D, bias=False)
            self.gate, self.up = nn.Linear(D, Fd, bias=False), nn.Linear(D, Fd, bias=False)
            self.down = nn.Linear(Fd, D, bias=False)

        def forward(self, x, sin, cos):
            B, L, _ = x.shape
            h = self.attn_norm(x)
            q, k, v = (p(h).view(B, L, H, K).transpose(1, 2) for p in (self.q, self.k, self.v))
            a = F.scaled_dot_product_attention(rope(q, sin, cos), rope(k, sin, cos), v, is_causal=True)
            x = x + self.out(a.transpose(1, 2).reshape(B, L, H * K))
            h = self.mlp_norm(x)
            return x + self.down(F.silu(self.gate(h)) * self.up(h))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(V, D)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.n_layers))
            self.norm = nn.RMSNorm(D, eps=1e-6)
            self.head = nn.Linear(D, V, bias=False)

        def forward(self, inputs, sin, cos):
            x = self.embed(inputs)
            for b in self.blocks:
                x = b(x, sin, cos)
            return self.head(self.norm(x))

    model = Model()
    # medscale's initialisation (models/transformer.py): truncated normal at +-2 std, fan-in std,
    # residual-branch outputs scaled by 1/sqrt(2 n_layers), so both frameworks train alike
    residual = (2 * cfg.n_layers) ** -0.5
    stds = {"embed": 1.0, "q": D**-0.5, "k": D**-0.5, "v": D**-0.5, "out": (H * K) ** -0.5 * residual,
            "gate": D**-0.5, "up": D**-0.5, "down": Fd**-0.5 * residual, "head": D**-0.5}
    with torch.no_grad():
        for name, p in model.named_parameters():
            key = name.split(".")[-2]
            if key in stds:
                nn.init.trunc_normal_(p, std=stds[key], a=-2 * stds[key], b=2 * stds[key])
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == param_counts(cfg).total, (n_params, param_counts(cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD, foreach=True)
    L = batch["inputs"].shape[1]
    inv_freq = 10_000.0 ** (-torch.arange(0, K, 2, dtype=torch.float32) / K)
    angle = torch.arange(L, dtype=torch.float32)[:, None] * inv_freq[None]
    sin, cos = angle.sin(), angle.cos()
    inputs = torch.from_numpy(batch["inputs"]).long()
    targets = torch.from_numpy(batch["targets"]).long()
    weights = torch.from_numpy(batch["weights"])

    def loss_fn(inputs, targets, weights):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            logits = model(inputs, sin, cos)
        ce = F.cross_entropy(logits.float().view(-1, V), targets.view(-1), reduction="none")
        return (ce * weights.view(-1)).sum() / weights.sum()

    loss_and_grad = torch.compile(loss_fn) if compile_ else loss_fn

    class Runner:
        name = "torch.compile" if compile_ else "torch"

        def step(self):
            opt.zero_grad(set_to_none=True)
            self.loss = loss_and_grad(inputs, targets, weights)
            self.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP, foreach=True)
            opt.step()

        def sync(self):
            return self.loss.item()

    return Runner()


def worker(args: argparse.Namespace) -> None:
    """Build one runner, warm it up, then time `n` steps per line "n" read from stdin."""
    cfg = shape_for_params(args.size, vocab_size=args.vocab, max_len=args.seq_len)
    batch = make_batch(cfg, args.batch, args.seq_len)
    if args.worker == "jax":
        runner = JaxRunner(cfg, batch, args.dtype)
    else:
        import torch
        torch.set_num_threads(os.cpu_count() or 1)
        runner = torch_runner(cfg, batch, compile_=args.worker == "torch.compile", dtype=args.dtype)
    for _ in range(2):  # compile, warm up
        runner.step()
    runner.sync()
    print("ready", flush=True)
    for line in sys.stdin:
        t = time.perf_counter()
        for _ in range(int(line)):
            runner.step()
        loss = runner.sync()
        print(time.perf_counter() - t, loss, flush=True)


def _workers(args: argparse.Namespace, bf16: bool) -> list[tuple[str, str]]:
    """(framework, dtype) pairs to time; the first is JAX float32, the reference of every ratio."""
    dtypes = (args.dtypes or ("float32,bfloat16" if bf16 else "float32")).split(",")
    frameworks = ["jax"] + ([] if args.no_torch else ["torch"] + (["torch.compile"] if args.torch_compile else []))
    return [(f, d) for d in dtypes for f in frameworks]


def _label(framework: str, dtype: str) -> str:
    return framework if dtype == "float32" else f"{framework} bf16"


def main(args: argparse.Namespace) -> None:
    set_xla_devices(args.devices)
    import jax

    from medscale.scaling.plan.flops import device_peak_flops, measure_matmul_peak
    from medscale.scaling.run.processor import processor

    cpu = processor()
    peak_dev, source = device_peak_flops(refresh=not args.cached_peak)
    peaks = [peak_dev * jax.device_count()]
    header = [f"processor: {cpu.describe()}",
              f"jax {jax.__version__} on {jax.device_count()} XLA CPU devices, {os.cpu_count()} cores; "
              f"load average {os.getloadavg()[0]:.2f} (1 min) at start"]
    print("\n".join(header), flush=True)
    print(f"float32 matmul peak {peaks[0] / 1e9:.0f} GFLOP/s ({source})", flush=True)
    workers = _workers(args, cpu.has_bf16)
    passthrough = [f"--vocab={args.vocab}", f"--seq-len={args.seq_len}", f"--batch={args.batch}",
                   f"--devices={args.devices}"] + (["--default-malloc"] if args.default_malloc else [])
    rows = []
    for target in (float(s) for s in args.sizes.split(",")):
        cfg = shape_for_params(target, vocab_size=args.vocab, max_len=args.seq_len)
        procs = {}
        for fw, dtype in workers:  # start and warm up one at a time: compiling competes for the cores
            procs[(fw, dtype)] = proc = subprocess.Popen(
                [sys.executable, __file__, f"--worker={fw}", f"--dtype={dtype}", f"--size={target}", *passthrough],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{_label(fw, dtype)} worker failed to start")
        times = {w: [] for w in workers}
        losses = {}
        for _ in range(args.rounds):
            for w, proc in procs.items():
                # the worker that just finished may still spin its threads (OpenMP and XLA's pools wait
                # actively for a while): let them go idle, or they steal cores from the next worker
                time.sleep(args.settle)
                proc.stdin.write(f"{args.steps}\n")
                proc.stdin.flush()
                seconds, loss = proc.stdout.readline().split()
                times[w].append(float(seconds) / args.steps)
                losses[w] = float(loss)
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
        tokens = args.batch * args.seq_len
        for fw, dtype in workers:
            t = times[(fw, dtype)]
            med, best = tokens / np.median(t), tokens / min(t)
            rows.append(dict(target=target, cfg=cfg, fw=fw, dtype=dtype, name=_label(fw, dtype), med=med,
                             best=best, loss=losses[(fw, dtype)], loss_fp32=losses[(fw, "float32")]
                             if (fw, "float32") in losses else float("nan")))
            print(f"  {target:.0e} {_label(fw, dtype):18s} {med:9.0f} tok/s median, {best:9.0f} best", flush=True)
        peaks.append(measure_matmul_peak(seconds=2.0))
        print(f"  float32 matmul peak measured again: {peaks[-1] / 1e9:.0f} GFLOP/s", flush=True)

    peak = max(peaks)
    for r in rows:
        r["mfu_med"], r["mfu_best"] = (mfu(r[k], r["cfg"], args.seq_len, peak) for k in ("med", "best"))

    steps = 2 + args.rounds * args.steps
    lines = header + [
        f"command: {' '.join([Path(sys.executable).name, 'benchmarks/bench_train_throughput.py', *sys.argv[1:]])}",
        f"batch {args.batch} x seq_len {args.seq_len}, vocab {args.vocab}, AdamW + clipping; "
        f"load average {os.getloadavg()[0]:.2f} (1 min) at end", "",
        "| N (non-emb) | shape LxD | framework | tok/s median | tok/s best | MFU median | MFU best "
        "| JAX/this median | JAX/this best | loss after {} steps | vs float32 |".format(steps),
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by = {(r["target"], r["fw"], r["dtype"]): r for r in rows}
    for r in rows:
        j, cfg = by[(r["target"], "jax", r["dtype"])], r["cfg"]  # JAX at the same precision
        rel = (r["loss"] - r["loss_fp32"]) / r["loss_fp32"]
        lines.append(
            f"| {param_counts(cfg).non_embedding:,} | {cfg.n_layers}x{cfg.d_model} | {r['name']} | {r['med']:,.0f} "
            f"| {r['best']:,.0f} | {r['mfu_med']:.1%} | {r['mfu_best']:.1%} | {j['med'] / r['med']:.2f} "
            f"| {j['best'] / r['best']:.2f} | {r['loss']:.4f} | {'' if r['dtype'] == 'float32' else f'{rel:+.2%}'} |")
    lines += ["", f"MFU: full FLOP count (attention with causal halving, output head) / {peak / 1e9:.0f} GFLOP/s, "
                  f"the highest of this run's float32 matmul peak measurements "
                  f"({', '.join(f'{p / 1e9:.0f}' for p in peaks)}); bf16 rows use the same float32 peak. "
                  f"JAX/this compares JAX with the row's framework at the row's precision."]
    print("\n" + "\n".join(lines))
    if not args.no_write:
        from medscale.atomic import write_text

        out = ROOT / "benchmarks" / "results" / f"train_throughput-{cpu.kind}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text(out, f"# Training throughput, {cpu.model}\n\nmeasured {time.strftime('%Y-%m-%d %H:%M %Z')}\n\n"
                        + "\n".join(lines) + "\n")
        print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    ARGS = parse_args()
    if ARGS.worker:
        from medscale.scaling.run.runtime import malloc_env, started_with_malloc_env

        # what medscale's runs do (scaling/run/runtime.py), for both frameworks; set at start-up,
        # since this module's imports have already started numpy's and scipy's thread pools
        if not ARGS.default_malloc and not started_with_malloc_env():
            os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **malloc_env()})
        if ARGS.worker == "jax":
            set_xla_devices(ARGS.devices)
        worker(ARGS)
    else:
        main(ARGS)
