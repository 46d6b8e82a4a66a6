"""A site's Lightning objects (model, data module, trainer) built from the federation config.

Every site is a LightningCLI run built without running (``run=False``), as a sweep trial is:
``--config`` for each stage file, then the shared overrides, then the site's own config, then
what the caller fixes (epochs, run folder). The site configs are written as YAML files under
``OUT/sites/<name>/`` so a run can be re-read and a site can be started elsewhere.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import yaml

from lungvlm.export.writer import write_text_atomic
from lungvlm.federated.config import FederatedConfig, SiteConfig

log = logging.getLogger(__name__)

#: Overrides of every site run: no sanity check, no progress bar or model summary (sites log
#: through the server), no checkpoint files (the weights go to the server).
SITE_ARGS: tuple[str, ...] = (
    "--trainer.num_sanity_val_steps=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--checkpoint.monitor=null",
    "--checkpoint.save_top_k=0",
    "--checkpoint.save_last=false",
)
#: A local fit also skips validation inside the fit: the sites validate the global model
#: after aggregation instead.
LOCAL_FIT_ARGS: tuple[str, ...] = (*SITE_ARGS, "--trainer.limit_val_batches=0")


def site_index(config: FederatedConfig, name: str) -> int:
    """Index of the site called ``name``.

    Raises:
        KeyError: no such site (lists the configured names).
    """
    for i, site in enumerate(config.sites):
        if site.name == name:
            return i
    raise KeyError(f"no site {name!r} in {config.source}; sites: {[s.name for s in config.sites]}")


def _write_yaml(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as YAML atomically, unless the file already holds exactly that."""
    text = yaml.safe_dump(data, sort_keys=False)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return path
    return write_text_atomic(path, text)


def site_cli_args(
    config: FederatedConfig, site: SiteConfig, run_dir: str | Path, extra: list[str] | tuple = ()
) -> list[str]:
    """LightningCLI arguments (no subcommand) of ``site``.

    Args:
        config: the federation.
        site: one of its sites.
        run_dir: the Lightning run folder of this fit or validation.
        extra: further ``--key=value`` arguments, applied last.

    Returns:
        ``--config`` of each stage file, of the shared overrides and of the site's config
        (written to ``OUT/sites/<name>/``), then ``extra`` and ``--run_dir``.
    """
    folder = Path(config.out_dir) / "sites" / site.name
    args: list[str] = []
    for path in config.stage_configs:
        args += ["--config", str(path)]
    if config.stage_overrides:
        shared = _write_yaml(Path(config.out_dir) / "sites" / "shared.yaml", config.stage_overrides)
        args += ["--config", str(shared)]
    if site.config:
        args += ["--config", str(_write_yaml(folder / "site.yaml", site.config))]
    return [*args, *extra, "--run_dir", str(run_dir)]


def build_site(
    config: FederatedConfig,
    site: SiteConfig,
    run_dir: str | Path,
    max_epochs: int | None = None,
    extra: list[str] | tuple = (),
) -> Any:
    """Build ``site``'s LightningCLI (model, ``datamodule``, ``trainer``) without running it.

    Args:
        config: the federation.
        site: the site.
        run_dir: Lightning run folder.
        max_epochs: the fit's epochs (``trainer.max_epochs``); None keeps the config's.
        extra: further LightningCLI arguments.

    Raises:
        ValueError: the site's configuration does not parse (names the site).
    """
    from lungvlm.lightning.quiet import quiet_lightning_tips
    from lungvlm.sweep.runner import SweepTrialCLI

    quiet_lightning_tips()
    # In a Flower/Ray worker sys.argv holds the worker's own flags, which LightningCLI warns
    # about when it is given args as well; the args are all it reads.
    warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter is intended")
    args = list(extra)
    if max_epochs is not None:
        args.append(f"--trainer.max_epochs={int(max_epochs)}")
    cli_args = site_cli_args(config, site, run_dir, args)
    try:
        return SweepTrialCLI(cli_args)
    except Exception as err:  # jsonargparse raises several types; one line naming the site
        raise ValueError(
            f"site {site.name!r} of {config.source}: its LightningCLI config does not build: {err}"
        ) from err
