"""Model shapes: `ModelConfig`, validation, exact parameter counts and the shape rules.

Pure Python (no JAX) so that sweep planning can size thousands of models cheaply.

The architecture these counts describe (models/transformer.py) is a pre-norm transformer without
biases: token embedding [V, D]; per layer RMSNorm [D], q, k, v [D, H, Dh] each, attention output
[H, Dh, D], RMSNorm [D], SwiGLU gate and up [D, F] each, down [F, D]; final RMSNorm [D]; untied
output head [D, V]. Rotary position embeddings have no parameters.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple


class ShapeError(ValueError):
    """A model shape that cannot be built (or a sequence it cannot process)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    max_len: int
    causal: bool = True  # True: decoder (next event); False: encoder (masked event, bidirectional)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate(self, seq_len: int | None = None) -> ModelConfig:
        """Raise `ShapeError` for shapes that cannot be built; return self so calls chain."""
        problems = []
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{name} must be an int, got {value!r}")
            elif value < 1:
                problems.append(f"{name} must be >= 1, got {value}")
        if not isinstance(self.causal, bool):
            problems.append(f"causal must be a bool, got {self.causal!r}")
        if not problems:
            if self.d_model % self.n_heads:
                problems.append(
                    f"n_heads={self.n_heads} does not divide d_model={self.d_model} "
                    f"(d_model must be n_heads * head_dim)")
            elif self.head_dim % 2:
                problems.append(
                    f"head_dim = d_model/n_heads = {self.head_dim} is odd; rotary embeddings "
                    "rotate pairs of channels, so head_dim must be even")
            if seq_len is not None and not 1 <= seq_len <= self.max_len:
                problems.append(
                    f"seq_len={seq_len} is outside [1, max_len={self.max_len}]; "
                    "raise max_len or shorten the windows")
        if problems:
            raise ShapeError("invalid ModelConfig: " + "; ".join(problems) + f" ({self})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"head_dim"})
        if unknown:
            raise ShapeError(f"unknown ModelConfig keys {unknown}; expected {sorted(names)}")
        cfg = cls(**{k: v for k, v in d.items() if k in names})
        if "head_dim" in d and d["head_dim"] != cfg.head_dim:
            raise ShapeError(f"head_dim={d['head_dim']} disagrees with d_model/n_heads={cfg.head_dim}")
        return cfg


class ParamCounts(NamedTuple):
    total: int
    non_embedding: int  # total minus token embedding and output head (Kaplan's N; norms included)


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Exact parameter counts of `models.transformer.Transformer(cfg)`."""
    d, v = cfg.d_model, cfg.vocab_size
    attn = 3 * d * cfg.n_heads * cfg.head_dim + cfg.n_heads * cfg.head_dim * d
    mlp = 3 * d * cfg.d_ff
    per_layer = attn + mlp + 2 * d
    non_embedding = cfg.n_layers * per_layer + d
    return ParamCounts(total=non_embedding + 2 * v * d, non_embedding=non_embedding)


# ---------------------------------------------------------------------------------------------
# Shape rules
# ---------------------------------------------------------------------------------------------

ASPECT = 64  # target d_model / n_layers (Kaplan et al. 2020: loss is flat for ~20..200)
ASPECT_RANGE = (16, 256)  # shapes outside this aspect range are never proposed (unless an aspect is asked for)
ASPECT_WEIGHT = 0.25  # price of one e-fold of aspect deviation, in e-folds of parameter miss
WIDTH_UNIT = 32
MAX_LAYERS = 128


def head_dim_for(d_model: int) -> int:
    """64-wide heads from d_model 512 up when d_model allows, 32-wide below."""
    return 64 if d_model >= 512 and d_model % 64 == 0 else 32


def _widths(lo: int, hi: int):
    """Candidate d_model values in [lo, hi]: multiples of the head size (32 below 512, then 64)."""
    d = max(WIDTH_UNIT, -(-lo // WIDTH_UNIT) * WIDTH_UNIT)
    while d <= hi:
        if d >= 512 and d % 64:
            d += WIDTH_UNIT
            continue
        yield d
        d += head_dim_for(d)


def d_ff_for(d_model: int) -> int:
    """SwiGLU hidden width: 8/3 d_model (same MLP FLOPs as a 4x GELU MLP), rounded up to 32."""
    return -(-8 * d_model // (3 * WIDTH_UNIT)) * WIDTH_UNIT


def _shape(n_layers: int, d_model: int, vocab_size: int, max_len: int, causal: bool) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers,
                       n_heads=d_model // head_dim_for(d_model), d_ff=d_ff_for(d_model),
                       max_len=max_len, causal=causal)


def shape_for_params(target_non_embedding: float, *, vocab_size: int, max_len: int,
                     causal: bool = True, aspect: float | None = None) -> ModelConfig:
    """The model shape whose non-embedding parameter count lands near `target_non_embedding`.

    Rules, applied to a fixed grid of candidate shapes:
      * n_layers is 1..128; d_model is a multiple of the head size, head_dim = 32 below
        d_model 512 and 64 from 512 up; n_heads = d_model/head_dim; the aspect ratio
        d_model/n_layers is kept within [16, 256];
      * d_ff = 8/3 d_model rounded up to a multiple of 32 (SwiGLU);
      * the chosen shape minimises |ln(N/target)| + 0.25 |ln(aspect/64)|.
    With a dense grid (N >~ 1M) this yields aspect ~64 within a few % of the target; small models
    (where depth steps are coarse) trade aspect for hitting the target (a 20K target gets one
    32-wide layer, ~13K). Because the grid does not depend on the target, N is non-decreasing in
    the target.

    `aspect` replaces the target aspect ratio 64 (e.g. the aspect of the best shape a sweep measured,
    scaling/plan/recommend.py); the range of proposed aspects then widens to [aspect / 2, 2 aspect] if needed.
    """
    if not target_non_embedding > 0:
        raise ShapeError(f"target_non_embedding must be > 0, got {target_non_embedding}")
    if aspect is not None and not aspect > 0:
        raise ShapeError(f"aspect must be > 0, got {aspect}")
    aim = float(aspect or ASPECT)
    lo, hi = min(ASPECT_RANGE[0], aim / 2), max(ASPECT_RANGE[1], 2 * aim)
    log_t = math.log(target_non_embedding)
    best, best_score = None, math.inf
    for n_layers in range(1, MAX_LAYERS + 1):
        for d_model in _widths(math.ceil(lo * n_layers), int(hi * n_layers)):
            cand = _shape(n_layers, d_model, vocab_size, max_len, causal)
            miss = math.log(param_counts(cand).non_embedding) - log_t
            score = abs(miss) + ASPECT_WEIGHT * abs(math.log(d_model / (n_layers * aim)))
            if score < best_score:
                best, best_score = cand, score
            if miss > 2.0:  # wider only misses more (N grows with d_model)
                break
    assert best is not None
    return best.validate()


def shape_for_total_params(target_total: float, *, vocab_size: int, max_len: int, causal: bool = True,
                           aspect: float | None = None) -> ModelConfig:
    """`shape_for_params`'s rule, aimed at a total (embedding-inclusive) parameter target."""
    if not target_total > 0:
        raise ShapeError(f"target_total must be > 0, got {target_total}")
    best, lo, hi = None, 1.0, float(target_total)
    for _ in range(48):
        mid = math.sqrt(lo * hi)
        cfg = shape_for_params(mid, vocab_size=vocab_size, max_len=max_len, causal=causal, aspect=aspect)
        total = param_counts(cfg).total
        if best is None or abs(math.log(total / target_total)) < abs(math.log(param_counts(best).total / target_total)):
            best = cfg
        lo, hi = (mid, hi) if total < target_total else (lo, mid)
        if hi / lo < 1.001:
            break
    return best


# ---------------------------------------------------------------------------------------------
# Which parameters N counts: the one place this convention is decided
# ---------------------------------------------------------------------------------------------

PARAM_CONVENTIONS = ("non_embedding", "total")


def counted_params(cfg: ModelConfig, convention: str | None) -> int:
    """N under a run's convention: `non_embedding` (Kaplan et al. 2020, the default) or `total`
    (Chinchilla: embeddings and output head included)."""
    convention = convention or "non_embedding"
    if convention not in PARAM_CONVENTIONS:
        raise ShapeError(f"parameter-count convention {convention!r}: choose one of {PARAM_CONVENTIONS}")
    counts = param_counts(cfg)
    return counts.total if convention == "total" else counts.non_embedding


def shape_for(target: float, convention: str | None, *, vocab_size: int, max_len: int,
              causal: bool = True, aspect: float | None = None) -> ModelConfig:
    """The shape whose N, counted under `convention`, lands near `target` (aspect d_model/n_layers near
    `aspect`, default 64)."""
    rule = shape_for_total_params if (convention or "non_embedding") == "total" else shape_for_params
    return rule(target, vocab_size=vocab_size, max_len=max_len, causal=causal, aspect=aspect)
