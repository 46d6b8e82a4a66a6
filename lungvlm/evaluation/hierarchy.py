"""Hierarchical Lung-RADS metrics: how bad an error is, not only whether it is one.

Flat accuracy counts calling a 4B nodule "2" and calling it "4A" as the same mistake. Following
the hierarchical evaluation of chest X-ray VLMs (``../shared/reference/system-claims.md``), the
Lung-RADS categories are leaves of a two-level taxonomy (project convention, from the issue):

- ``incomplete``: 0
- ``benign``: 1, 2
- ``probably_benign``: 3
- ``suspicious``: 4A, 4B, 4X

The hierarchical distance of two categories is half the path length between their leaves in
that tree: 0 (same category), 1 (same branch), 2 (different branches). A **catastrophic** error
crosses the benign/suspicious divide: a suspicious nodule called benign (a *catastrophic miss*)
or a benign nodule called suspicious (a *catastrophic over-call*). Calling a suspicious nodule
"3", or a benign one "3", is a branch error but not catastrophic.

Risk-constrained decision (:func:`constrained_predictions`): with the suspicious probability
``p_s = P(4A) + P(4B) + P(4X)``, a nodule is called suspicious (its most likely suspicious
category) when ``p_s >= t`` and otherwise gets its most likely non-suspicious category.
:func:`risk_constrained_threshold` picks, on validation data, the largest ``t`` whose
catastrophic-miss rate is at most ``max_miss_rate`` (2 % by default): the fewest over-calls that
keep the misses below the bound. What it costs is the over-call rate and flat accuracy on the
test data, reported beside the plain argmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lungvlm.labels import LUNGRADS_CATEGORIES

#: Branch of each Lung-RADS category (module docstring).
LUNGRADS_TAXONOMY: dict[str, str] = {
    "0": "incomplete",
    "1": "benign",
    "2": "benign",
    "3": "probably_benign",
    "4A": "suspicious",
    "4B": "suspicious",
    "4X": "suspicious",
}
#: Branches in order of suspicion.
BRANCHES: tuple[str, ...] = ("incomplete", "benign", "probably_benign", "suspicious")
#: Largest share of suspicious nodules that may be called benign (issue 17 target: 2 %).
DEFAULT_MAX_MISS_RATE = 0.02

_SUSPICIOUS = np.array([LUNGRADS_TAXONOMY[c] == "suspicious" for c in LUNGRADS_CATEGORIES])
_BENIGN = np.array([LUNGRADS_TAXONOMY[c] == "benign" for c in LUNGRADS_CATEGORIES])
_BRANCH_INDEX = np.array([BRANCHES.index(LUNGRADS_TAXONOMY[c]) for c in LUNGRADS_CATEGORIES])


def _indices(values: ArrayLike, name: str) -> NDArray[np.int64]:
    """Category indices (0 .. C-1) from indices or category strings."""
    arr = np.asarray(values)
    if arr.dtype.kind in "US":
        unknown = sorted({str(v) for v in arr.ravel()} - set(LUNGRADS_CATEGORIES))
        if unknown:
            raise ValueError(f"{name} has unknown Lung-RADS categories {unknown}")
        return np.array([LUNGRADS_CATEGORIES.index(str(v)) for v in arr.ravel()], np.int64)
    out = arr.astype(np.int64).reshape(-1)
    if out.size and (out.min() < 0 or out.max() >= len(LUNGRADS_CATEGORIES)):
        raise ValueError(f"{name} has category indices outside 0..{len(LUNGRADS_CATEGORIES) - 1}")
    return out


def hierarchical_distance(a: ArrayLike, b: ArrayLike) -> NDArray[np.int64]:
    """Element-wise taxonomy distance: 0 same category, 1 same branch, 2 other branch.

    ``a`` and ``b``: category indices into ``LUNGRADS_CATEGORIES`` or category strings, same
    length. Example: ("4B", "4A") -> 1, ("4B", "2") -> 2, ("1", "2") -> 1.
    """
    ia, ib = _indices(a, "a"), _indices(b, "b")
    if ia.shape != ib.shape:
        raise ValueError(f"a ({ia.size}) and b ({ib.size}) differ in length")
    same_branch = _BRANCH_INDEX[ia] == _BRANCH_INDEX[ib]
    return np.where(ia == ib, 0, np.where(same_branch, 1, 2)).astype(np.int64)


def catastrophic(reference: ArrayLike, predicted: ArrayLike) -> NDArray[np.bool_]:
    """Element-wise: True where one is suspicious (4A/4B/4X) and the other benign (1/2)."""
    r, p = _indices(reference, "reference"), _indices(predicted, "predicted")
    if r.shape != p.shape:
        raise ValueError(f"reference ({r.size}) and predicted ({p.size}) differ in length")
    return (_SUSPICIOUS[r] & _BENIGN[p]) | (_BENIGN[r] & _SUSPICIOUS[p])


def _rate(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else numerator / denominator


def hierarchical_summary(reference: ArrayLike, predicted: ArrayLike) -> dict:
    """Flat and hierarchical agreement of predicted with reference categories.

    Returns:
        ``n``; ``accuracy`` (exact); ``branch_accuracy`` (same branch); ``mean_distance``
        (:func:`hierarchical_distance`); ``catastrophic_rate`` (share of all nodules with a
        catastrophic error); ``catastrophic_miss_rate`` (suspicious nodules called benign, over
        the suspicious nodules); ``catastrophic_overcall_rate`` (benign nodules called
        suspicious, over the benign nodules); ``overcall_rate`` (non-suspicious nodules called
        suspicious, over the non-suspicious nodules); counts ``n_suspicious``, ``n_benign``;
        ``confusion`` (rows reference, columns predicted, ``LUNGRADS_CATEGORIES`` order).
        Rates are None when their denominator is 0.
    """
    r, p = _indices(reference, "reference"), _indices(predicted, "predicted")
    if r.shape != p.shape:
        raise ValueError(f"reference ({r.size}) and predicted ({p.size}) differ in length")
    n = int(r.size)
    distance = hierarchical_distance(r, p)
    susp_ref, benign_ref = _SUSPICIOUS[r], _BENIGN[r]
    confusion = np.zeros((len(LUNGRADS_CATEGORIES),) * 2, np.int64)
    np.add.at(confusion, (r, p), 1)
    return {
        "n": n,
        "accuracy": _rate(int((r == p).sum()), n),
        "branch_accuracy": _rate(int((distance <= 1).sum()), n),
        "mean_distance": float(distance.mean()) if n else None,
        "catastrophic_rate": _rate(int(catastrophic(r, p).sum()), n),
        "catastrophic_miss_rate": _rate(int((susp_ref & _BENIGN[p]).sum()), int(susp_ref.sum())),
        "catastrophic_overcall_rate": _rate(
            int((benign_ref & _SUSPICIOUS[p]).sum()), int(benign_ref.sum())
        ),
        "overcall_rate": _rate(int((~susp_ref & _SUSPICIOUS[p]).sum()), int((~susp_ref).sum())),
        "n_suspicious": int(susp_ref.sum()),
        "n_benign": int(benign_ref.sum()),
        "confusion": confusion.tolist(),
        "categories": list(LUNGRADS_CATEGORIES),
    }


def _probabilities(probabilities: ArrayLike) -> NDArray[np.float64]:
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(LUNGRADS_CATEGORIES):
        raise ValueError(
            f"probabilities must be (N, {len(LUNGRADS_CATEGORIES)}) over LUNGRADS_CATEGORIES, "
            f"got shape {probs.shape}"
        )
    return probs


def suspicious_probability(probabilities: ArrayLike) -> NDArray[np.float64]:
    """(N,) P(4A) + P(4B) + P(4X) from (N, C) class probabilities."""
    return _probabilities(probabilities)[:, _SUSPICIOUS].sum(axis=1)


def constrained_predictions(probabilities: ArrayLike, threshold: float) -> NDArray[np.int64]:
    """Category indices under the risk-constrained rule (module docstring).

    ``p_s >= threshold``: the most likely suspicious category; else the most likely of 0-3.
    """
    probs = _probabilities(probabilities)
    p_s = probs[:, _SUSPICIOUS].sum(axis=1)
    susp_idx = np.flatnonzero(_SUSPICIOUS)
    other_idx = np.flatnonzero(~_SUSPICIOUS)
    best_susp = susp_idx[np.argmax(probs[:, susp_idx], axis=1)]
    best_other = other_idx[np.argmax(probs[:, other_idx], axis=1)]
    return np.where(p_s >= threshold, best_susp, best_other).astype(np.int64)


def risk_constrained_threshold(
    probabilities: ArrayLike, reference: ArrayLike, max_miss_rate: float = DEFAULT_MAX_MISS_RATE
) -> dict:
    """Largest suspicious-probability threshold whose catastrophic-miss rate <= the bound.

    Candidates are 1 and every distinct ``p_s`` of the data (lowering ``t`` only turns calls
    into "suspicious", so the miss rate never rises as ``t`` falls; the smallest ``p_s``
    calls every nodule suspicious, with no misses).

    Args:
        probabilities: (N, C) Lung-RADS class probabilities (validation nodules).
        reference: (N,) reference categories (indices or strings).
        max_miss_rate: largest share of suspicious nodules allowed to be called benign.

    Returns:
        ``threshold``, ``max_miss_rate`` and the :func:`hierarchical_summary` at the threshold
        on these data (``summary``). With no suspicious nodule no miss is possible, so the
        largest candidate, 1.0, is taken.

    Raises:
        ValueError: ``max_miss_rate`` outside [0, 1] or mismatched lengths.
    """
    if not 0.0 <= max_miss_rate <= 1.0:
        raise ValueError(f"max_miss_rate={max_miss_rate!r} must be in [0, 1]")
    probs = _probabilities(probabilities)
    ref = _indices(reference, "reference")
    if ref.size != probs.shape[0]:
        raise ValueError(f"probabilities ({probs.shape[0]}) and reference ({ref.size}) differ")
    candidates = np.unique(np.concatenate([[1.0], suspicious_probability(probs)]))[::-1]
    chosen = float(candidates[-1]) if candidates.size else 1.0
    for threshold in candidates:  # descending: the first that meets the bound is the largest
        summary = hierarchical_summary(ref, constrained_predictions(probs, float(threshold)))
        miss = summary["catastrophic_miss_rate"]
        if miss is None or miss <= max_miss_rate + 1e-12:
            chosen = float(threshold)
            break
    summary = hierarchical_summary(ref, constrained_predictions(probs, chosen))
    return {"threshold": chosen, "max_miss_rate": float(max_miss_rate), "summary": summary}


def risk_constrained_report(
    val_probabilities: ArrayLike,
    val_reference: ArrayLike,
    test_probabilities: ArrayLike,
    test_reference: ArrayLike,
    max_miss_rate: float = DEFAULT_MAX_MISS_RATE,
) -> dict:
    """Threshold chosen on validation, then argmax vs constrained rule on test.

    Returns:
        ``threshold`` (from validation), ``validation`` (summary there), ``test_argmax`` and
        ``test_constrained`` (:func:`hierarchical_summary` on test for the plain argmax and for
        the constrained rule), and ``cost`` (constrained minus argmax on test: change in flat
        accuracy and in over-call rate; None where undefined).
    """
    fitted = risk_constrained_threshold(val_probabilities, val_reference, max_miss_rate)
    probs = _probabilities(test_probabilities)
    argmax = hierarchical_summary(test_reference, np.argmax(probs, axis=1))
    constrained = hierarchical_summary(
        test_reference, constrained_predictions(probs, fitted["threshold"])
    )

    def delta(key: str) -> float | None:
        a, b = constrained[key], argmax[key]
        return None if a is None or b is None else a - b

    return {
        "threshold": fitted["threshold"],
        "max_miss_rate": fitted["max_miss_rate"],
        "validation": fitted["summary"],
        "test_argmax": argmax,
        "test_constrained": constrained,
        "cost": {"accuracy": delta("accuracy"), "overcall_rate": delta("overcall_rate")},
    }


def taxonomy_rows() -> Sequence[tuple[str, str]]:
    """(category, branch) rows of the taxonomy, for tables."""
    return tuple(LUNGRADS_TAXONOMY.items())
