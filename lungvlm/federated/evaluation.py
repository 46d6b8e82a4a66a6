"""Score one checkpoint on every site's held-out test crops (crop Dice per site).

The same numbers for a federation's global model, a single site's model or the centralised
baseline, so they compare on equal terms. Whole-chest detection (FROC/CPM) is
``lungvlm evaluate --ckpt`` on the same checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from lungvlm.federated.config import FederatedConfig
from lungvlm.federated.sites import SITE_ARGS, build_site


def test_sites(config: FederatedConfig, ckpt_path: str | Path, out_dir: str | Path) -> dict:
    """Test ``ckpt_path`` on each site's test split.

    Args:
        config: the federation (its sites' data).
        ckpt_path: a LungVLM checkpoint of the federation's stage (read with weights_only).
        out_dir: where the sites' Lightning test runs go.

    Returns:
        ``{"checkpoint": str, "sites": {name: {"test/...": value, "samples": n}},
        "mean": {"test/...": sample-weighted mean over sites}}``.

    Raises:
        ValueError: the checkpoint's weights do not fit the sites' model (names the file).
    """
    from lungvlm.lightning.checkpoint import read_checkpoint

    state = read_checkpoint(ckpt_path)["state_dict"]
    sites: dict[str, dict[str, float]] = {}
    for site in config.sites:
        cli = build_site(config, site, Path(out_dir) / "test" / site.name, extra=SITE_ARGS)
        try:
            cli.model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"checkpoint {ckpt_path} does not fit site {site.name}'s model: {err}"
            ) from err
        results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
        values = {
            k: float(v.item() if isinstance(v, torch.Tensor) else v)
            for k, v in (results[0] if results else {}).items()
            if k.startswith("test/")
        }
        values = {k: v for k, v in values.items() if math.isfinite(v)}
        values["samples"] = float(len(cli.datamodule.test_dataloader().dataset))
        sites[site.name] = values
    keys = sorted({k for v in sites.values() for k in v if k != "samples"})
    mean: dict[str, Any] = {}
    for key in keys:
        rows = [(v[key], v["samples"]) for v in sites.values() if key in v]
        mean[key] = sum(a * w for a, w in rows) / sum(w for _, w in rows)
    return {"checkpoint": str(ckpt_path), "sites": sites, "mean": mean}
