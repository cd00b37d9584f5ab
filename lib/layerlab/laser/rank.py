"""LASER rank reduction (Sharma, Ash, Misra 2023).

Convention: for a matrix W of shape [out, in] with max_rank = min(out, in), a reduction
with rank fraction rho in (0, 1] keeps k = max(1, floor(rho * max_rank)) singular
components (the paper's "rho fraction of the maximum rank"; k never drops to 0).
rho = 1 returns W itself, bit for bit.

``part="top"`` keeps the top-k components (LASER). ``part="bottom"`` keeps the components
LASER removes, W - W_k (the paper's Fig. 5 analysis of higher-order components).
``part="smallest"`` keeps only the k SMALLEST components, the sum of the last k singular
triplets (the bottom-k ablation the LASER authors suggest in their issue #26); rho = 1
keeps every component, W itself.

``mp_rank`` gives a rank without any search: the count of singular values above a
Marchenko-Pastur edge estimated from the spectrum itself (laserRMT's rule, or the
textbook edge of i.i.d. noise with its level estimated iteratively), and ``mp_reduction``
the Reduction that keeps exactly that many (rho = k / max_rank).

One exact SVD per matrix (``SVDCache``, bounded by a byte budget, originals on the CPU),
reused for every rho; reductions are context managers that restore the kept original
weights bit for bit when they end.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from layerlab.core.model import arch

PARTS = ("top", "bottom", "smallest")
IQR_TO_SIGMA = 1.349  # the interquartile range of a standard normal: sigma = IQR / 1.349


@dataclass(frozen=True)
class Reduction:
    """One LASER intervention: matrix type tau at block ``layer`` keeps fraction ``rho``."""

    matrix_type: str
    layer: int
    rho: float
    part: str = "top"

    def as_dict(self) -> dict:
        return {"matrix_type": self.matrix_type, "layer": self.layer, "rho": self.rho, "part": self.part}


def rank_for(rho: float, max_rank: int) -> int:
    """Number of kept components: max(1, floor(rho * max_rank)); rho in (0, 1]."""
    if not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1]; got {rho}")
    return max(1, math.floor(rho * max_rank + 1e-9))


# the default byte budget ("auto") of an SVDCache, by the device its factors live on: on a GPU
# the working set beside the weights stays small (a 7B MLP entry is ~340 MB, and a sweep uses
# one (matrix type, layer) at a time); on the CPU, RAM holds the deep layers every dataset sweeps
DEFAULT_CACHE_BYTES = {"cuda": 1 * 2**30, "cpu": 2 * 2**30}


class SVDCache:
    """Exact SVDs (in float32, or the weight's dtype if wider), one per (matrix type, layer)
    of one model, within a byte budget.

    Per (matrix type, layer) an entry holds the original weight, kept on the CPU (what
    ``reduced`` writes back, bit for bit), and, once a reduction other than rho = 1 asks
    for it, the factors U, S, Vh on the model's device. Entries are evicted least recently
    used first when the entries' bytes (originals and factors) exceed ``max_bytes``
    ("auto": ``DEFAULT_CACHE_BYTES`` of the model's device type, 1 GiB on a GPU, 2 GiB on
    the CPU; None: never evict); a matrix that is reduced right now (inside
    ``reduced``) keeps its original. An evicted entry is read again from the model, which is
    unmodified at that matrix then, so a restore stays bit-identical; its SVD is recomputed
    if asked for again. A sweep asks for one matrix's SVD for every rho in a row (``laser.grid``:
    deepest layer first, then matrix type, then rho), so a budget of a few matrices computes
    each SVD once per pass over the items. Not once in all: when the items are cut into
    chunks (``prefix_stream``), each chunk asks again for every matrix of its window of
    layers, and a budget smaller than that window (Qwen2.5-1.5B on a GPU: about 1.25 GiB for
    4 layers against 1 GiB) evicts entries before the next chunk asks. ``prefix_stream``
    reverses the order on alternate chunks, so a chunk first reuses what the last one ended
    on and recomputes only the rest (``layerlab.book.work`` counts Qwen's full LASER grid at
    about 1,400 SVDs, 7x the distinct ones, where the same order every chunk gave 2,350).
    One cache serves every dataset of a chapter run on one model (pass it as
    ``laser.Sweeper(svd=...)``): an SVD is not recomputed while its entry stays.

    Entries are computed from the model's weights the first time they are asked for; the
    model must be unmodified then (use it before entering reductions, or call ``prime``).
    ``computed`` counts the SVDs computed so far, ``evicted`` the entries evicted.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32,
                 max_bytes: int | str | None = "auto"):
        if max_bytes == "auto":
            device_type = next(model.parameters()).device.type
            max_bytes = DEFAULT_CACHE_BYTES.get(device_type, DEFAULT_CACHE_BYTES["cuda"])
        if max_bytes is not None and (isinstance(max_bytes, str) or max_bytes < 0):
            raise ValueError(f"max_bytes: {max_bytes!r} must be 'auto', a number of bytes >= 0 or None (no limit)")
        self.model = model
        self.dtype = dtype
        self.max_bytes = max_bytes
        self._svd: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._original: dict[tuple[str, int], torch.Tensor] = {}
        self._order: dict[tuple[str, int], None] = {}  # least recently used first
        self._pinned: dict[tuple[str, int], int] = {}  # matrices reduced right now (count of holders)
        self.computed = 0
        self.evicted = 0

    @staticmethod
    def _bytes(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    def nbytes(self) -> int:
        """Bytes held: originals (CPU) and SVD factors (the model's device)."""
        return self._bytes(self._original.values()) + sum(self._bytes(f) for f in self._svd.values())

    def keys(self) -> list[tuple[str, int]]:
        """The (matrix type, layer) entries held, least recently used first."""
        return list(self._order)

    def _touch(self, key: tuple[str, int]) -> None:
        self._order.pop(key, None)
        self._order[key] = None

    def _evict(self, keep: tuple[str, int]) -> None:
        if self.max_bytes is None:
            return
        for key in list(self._order):
            if self.nbytes() <= self.max_bytes:
                return
            if key == keep:
                continue
            dropped = self._svd.pop(key, None) is not None
            if key not in self._pinned:  # a reduced matrix keeps its original until restored
                dropped = self._original.pop(key, None) is not None or dropped
                self._order.pop(key, None)
            self.evicted += dropped

    def original(self, matrix_type: str, layer: int) -> torch.Tensor:
        """The unmodified matrix [out, in] in its dtype, on the CPU."""
        key = (matrix_type, layer)
        if key not in self._original:
            self._original[key] = arch.weight(self.model, matrix_type, layer).read().cpu()
            self._touch(key)
            self._evict(keep=key)
        else:
            self._touch(key)
        return self._original[key]

    def svd(self, matrix_type: str, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U [out, r], S [r], Vh [r, in]) of the original matrix, r = max rank, on the model's device."""
        key = (matrix_type, layer)
        if key not in self._svd:
            w = self.original(matrix_type, layer)
            device = arch.weight(self.model, matrix_type, layer).param.device
            w = w.to(device=device, dtype=torch.promote_types(w.dtype, self.dtype))  # >= float32, exact for float64
            self._svd[key] = thin_svd(w)
            self.computed += 1
            self._touch(key)
            self._evict(keep=key)
        else:
            self._touch(key)
        return self._svd[key]

    def prime(self, keys: Iterable[tuple[str, int]]) -> None:
        for matrix_type, layer in keys:
            self.svd(matrix_type, layer)

    def clear(self) -> None:
        """Drop every entry not reduced right now."""
        for key in list(self._order):
            self._svd.pop(key, None)
            if key not in self._pinned:
                self._original.pop(key, None)
                self._order.pop(key, None)

    def pin(self, key: tuple[str, int]) -> None:
        self._pinned[key] = self._pinned.get(key, 0) + 1

    def unpin(self, key: tuple[str, int]) -> None:
        left = self._pinned.get(key, 0) - 1
        if left > 0:
            self._pinned[key] = left
        else:
            self._pinned.pop(key, None)

    def approximation(self, r: Reduction) -> torch.Tensor:
        """The replacement weight [out, in] for reduction ``r``, in the weight's dtype."""
        if r.part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}; got {r.part!r}")
        w = self.original(r.matrix_type, r.layer)
        return _approximate(w, r.rho, r.part, lambda: self.svd(r.matrix_type, r.layer))


def low_rank(w: torch.Tensor, rho: float, part: str = "top") -> torch.Tensor:
    """Rank reduction of a single matrix [out, in] (no cache); see module docstring."""
    return _approximate(w, rho, part, lambda: thin_svd(w.to(torch.promote_types(w.dtype, torch.float32))))


def thin_svd(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.linalg.svd(w, full_matrices=False)``: (U [m, r], S [r], Vh [r, n]), r = min(m, n),
    computed on the tall orientation. LAPACK's divide-and-conquer SVD of a wide matrix ran 4x
    slower on this CPU than on its transpose (Qwen's down_proj, 1536 x 8960 fp32: 6.2 s
    against 1.4 s on 2 cores), and W = U S Vh exactly when W^T = U' S Vh'."""
    if w.shape[-2] >= w.shape[-1]:
        return torch.linalg.svd(w, full_matrices=False)
    u, s, vh = torch.linalg.svd(w.mT, full_matrices=False)
    return vh.mT.contiguous(), s, u.mT.contiguous()


def singular_values(w: torch.Tensor) -> torch.Tensor:
    """The singular values [min(m, n)] of ``w`` in float64 on the CPU, descending (the tall
    orientation, as ``thin_svd``: 8x faster for a 1536 x 8960 matrix here)."""
    w = w.detach().double().cpu()
    return torch.linalg.svdvals(w if w.shape[-2] >= w.shape[-1] else w.mT)


def _approximate(w: torch.Tensor, rho: float, part: str, svd) -> torch.Tensor:
    """The top-k part of W (or the rest, part='bottom'; or the k smallest components,
    part='smallest'); ``svd()`` is called only when k < max rank, so rho = 1 returns W
    itself without any SVD (an empty remainder for 'bottom')."""
    k = rank_for(rho, min(w.shape))
    if k == min(w.shape):
        return w.clone() if part in ("top", "smallest") else torch.zeros_like(w)
    u, s, vh = svd()
    keep = {"top": slice(0, k), "bottom": slice(k, None), "smallest": slice(len(s) - k, None)}[part]
    return ((u[:, keep] * s[keep]) @ vh[keep]).to(w.dtype)


def mp_edge(s: torch.Tensor, shape: tuple[int, int]) -> tuple[float, float]:
    """laserRMT's Marchenko-Pastur edge from a matrix's own singular values ``s`` [r]
    (any order) of a matrix of ``shape`` (out, in): sigma = (q75(s) - q25(s)) / 1.349
    (quantiles of the singular values, linear interpolation as ``torch.quantile``),
    beta = min(out, in) / max(out, in), edge = sigma * (1 + sqrt(beta)). Computed in
    float64. Returns (edge, sigma), in the units of the singular values."""
    s = s.detach().double().cpu()
    q25, q75 = torch.quantile(s, torch.tensor([0.25, 0.75], dtype=torch.float64, device="cpu"))
    sigma = float(q75 - q25) / IQR_TO_SIGMA
    beta = min(shape) / max(shape)
    return sigma * (1 + math.sqrt(beta)), sigma


def iterative_edge(s: torch.Tensor, shape: tuple[int, int], max_iter: int = 100) -> tuple[float, float]:
    """The textbook Marchenko-Pastur bulk edge of a rank-k signal plus i.i.d. noise of
    per-entry standard deviation tau: edge = tau * (sqrt(out) + sqrt(in) + TW99 / 2 *
    (1/sqrt(out) + 1/sqrt(in))^(1/3)), the bulk edge plus the 99th percentile of the
    largest noise singular value's Tracy-Widom fluctuation (Johnstone 2001), with tau
    estimated from the energy of the components below the edge, tau^2 = sum_{i>k} s_i^2 /
    ((out - k)(in - k)), iterated from k = 0 until k stops changing. ``s`` [r] singular
    values in descending order. Returns (edge, tau), in the units of the singular values."""
    s = s.detach().double().cpu()
    n, m = shape
    k, seen = 0, set()
    while k not in seen and len(seen) < max_iter:
        seen.add(k)
        tau = math.sqrt(float((s[k:] ** 2).sum()) / max((n - k) * (m - k), 1))
        edge = tau * (math.sqrt(n) + math.sqrt(m) + TW99 / 2 * (1 / math.sqrt(n) + 1 / math.sqrt(m)) ** (1 / 3))
        k = min(int((s > edge).sum()), min(n, m) - 1)
    return edge, tau


MP_RULES = ("laserrmt", "iterative")
TW99 = 2.02  # 99th percentile of the Tracy-Widom (beta = 1) law


def mp_rank(w: torch.Tensor, rule: str = "laserrmt") -> dict:
    """The Marchenko-Pastur rank of W [out, in]: singular values of W itself in float64,
    k = #(s > edge). rule "laserrmt" (``rmt_laser.py``): ``mp_edge``, sigma from the
    singular values' interquartile range; "iterative": ``iterative_edge``, the noise level
    estimated per entry (the edge of pure Gaussian noise). Returns {k, max_rank, edge,
    sigma, rho} with rho = max(k, 1) / max_rank (a Reduction keeps at least one component:
    k = 0 is reported as k and reduced to rank 1)."""
    if rule not in MP_RULES:
        raise ValueError(f"rule: {rule!r} is not one of {', '.join(MP_RULES)}")
    return mp_rank_of(singular_values(w), tuple(w.shape), rule)


def mp_rank_of(s: torch.Tensor, shape: tuple[int, int], rule: str = "laserrmt") -> dict:
    """``mp_rank`` from the singular values ``s`` [r] (descending, float64) of a matrix of
    ``shape`` (out, in), so several rules share one SVD."""
    if rule not in MP_RULES:
        raise ValueError(f"rule: {rule!r} is not one of {', '.join(MP_RULES)}")
    edge, sigma = (mp_edge if rule == "laserrmt" else iterative_edge)(s, shape)
    k, r = int((s > edge).sum()), min(shape)
    return {"k": k, "max_rank": r, "edge": edge, "sigma": sigma, "rho": max(k, 1) / r}


def mp_reduction(model: nn.Module, matrix_type: str, layer: int, cache: SVDCache | None = None,
                 rule: str = "laserrmt") -> Reduction:
    """The Reduction of (matrix_type, layer) that keeps its ``mp_rank`` top components:
    rho = k / max_rank, so ``rank_for(rho, max_rank) == k`` (rho = 1, the identity, when
    every singular value lies above the edge). Reads the unmodified weight (from ``cache``
    when given)."""
    w = cache.original(matrix_type, layer) if cache is not None else arch.weight(model, matrix_type, layer).read()
    return Reduction(matrix_type, layer, mp_rank(w, rule)["rho"])


def validate(model: nn.Module, matrix_types: Iterable[str], layers: Iterable[int], rhos: Iterable[float]) -> None:
    """Refuse a bad grid before any expensive work, naming the parameter and allowed values."""
    allowed = arch.matrix_types(model)
    for t in matrix_types:
        if t not in allowed:
            raise ValueError(f"matrix_types: {t!r} is not available for {arch.arch_of(model).name}; "
                             f"allowed: {', '.join(allowed)}")
    n = arch.n_layers(model)
    for layer in layers:
        if not isinstance(layer, int) or not 0 <= layer < n:
            raise ValueError(f"layers: {layer!r} out of range; allowed: integers 0..{n - 1}")
    for rho in rhos:
        if not isinstance(rho, (int, float)) or not 0 < rho <= 1:
            raise ValueError(f"rhos: {rho!r} is not a rank fraction; allowed: numbers in (0, 1]")


@contextmanager
def reduced(model: nn.Module, reductions: Reduction | Iterable[Reduction],
            cache: SVDCache | None = None) -> Iterator[nn.Module]:
    """Apply one or several reductions for the duration of the block; the original
    weights are restored bit for bit on exit (also on error)."""
    if isinstance(reductions, Reduction):
        reductions = [reductions]
    reductions = list(reductions)
    cache = cache or SVDCache(model)
    seen = set()
    for r in reductions:
        if (r.matrix_type, r.layer) in seen:
            raise ValueError(f"two reductions of the same matrix ({r.matrix_type}, layer {r.layer})")
        seen.add((r.matrix_type, r.layer))
    with ExitStack() as stack:
        for r in reductions:
            key = (r.matrix_type, r.layer)
            ref = arch.weight(model, r.matrix_type, r.layer)
            original = cache.original(r.matrix_type, r.layer)
            cache.pin(key)  # its original stays cached until restored
            stack.callback(cache.unpin, key)
            replacement = cache.approximation(r)
            stack.callback(ref.write, original)  # the CPU original, written back bit for bit
            ref.write(replacement)
            del replacement
        yield model
