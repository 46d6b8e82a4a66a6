"""Data efficiency: what stage-1 pretraining buys at a fraction of the labels.

A data-efficiency study trains the same stage (stage 2 by default) with the segmentation labels
of only a fraction of the training crops (``data.init_args.label_fraction``: the other crops
stay in the batches with their masks hidden), once initialised from the stage-1 checkpoint and
once from scratch, with the same number of steps for every run. The figure is the final
validation crop Dice (``val/seg/dice``) of each run (:func:`read_final_metrics` reads the
run's ``csv/metrics.csv``). The claim checked (RenalCLIP's): pretrained at 20 % of the labels
matches scratch at 100 % (:func:`data_efficiency_summary`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

#: Label fractions of the study.
DEFAULT_FRACTIONS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0)
#: Initialisations compared.
INITS: tuple[str, ...] = ("stage1", "scratch")
#: Metrics read from each run (the last logged value).
METRICS: tuple[str, ...] = ("val/seg/dice",)
#: Largest Dice shortfall at which "pretrained at 20 % matches scratch at 100 %" holds.
MATCH_TOLERANCE = 0.01


def run_name(init: str, fraction: float) -> str:
    """Folder name of one run, e.g. ``stage1-labels-020`` for 20 %."""
    if init not in INITS:
        raise ValueError(f"init={init!r} is not one of {INITS}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r} must be in (0, 1]")
    return f"{init}-labels-{round(100 * fraction):03d}"


def read_final_metrics(metrics_csv: str | Path, names: Sequence[str] = METRICS) -> dict:
    """Last non-empty value of each metric column of a Lightning ``metrics.csv``.

    Raises:
        ValueError: the file is missing or has none of the columns (names the file).
    """
    path = Path(metrics_csv)
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as err:
        raise ValueError(f"{path}: cannot read the run's metrics ({err})") from err
    out = {}
    for name in names:
        values = [r[name] for r in rows if r.get(name) not in (None, "")]
        out[name] = float(values[-1]) if values else None
    if all(v is None for v in out.values()):
        raise ValueError(f"{path} has no value of {list(names)}: did the run validate?")
    return out


def data_efficiency_summary(results: Mapping[str, Mapping[float, float | None]]) -> dict:
    """Curves and the 20 %-vs-100 % check from ``{init: {fraction: dice}}``.

    Returns:
        ``curves`` (``{init: [[fraction, dice], ...]}`` sorted by fraction), ``pretrained_20``,
        ``scratch_100``, ``difference`` (pretrained at 20 % minus scratch at 100 %) and
        ``matches`` (difference >= -:data:`MATCH_TOLERANCE`); None where a run is missing.
    """
    curves = {
        init: [[float(f), v] for f, v in sorted(values.items())] for init, values in results.items()
    }
    pre = results.get("stage1", {}).get(0.2)
    scratch = results.get("scratch", {}).get(1.0)
    ok = pre is not None and scratch is not None and math.isfinite(pre) and math.isfinite(scratch)
    difference = pre - scratch if ok else None
    return {
        "curves": curves,
        "pretrained_20": pre,
        "scratch_100": scratch,
        "difference": difference,
        "matches": None if difference is None else difference >= -MATCH_TOLERANCE,
        "tolerance": MATCH_TOLERANCE,
    }
