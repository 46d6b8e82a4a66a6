"""Run a whole federation on one machine, and its centralised baseline.

:func:`simulate` runs the server and one simulated SuperNode per site with Flower's simulation
engine (Ray): the same ServerApp and ClientApp a deployment runs, with each site in its own
worker process (``client_cpus`` cores and ``client_gpus`` of a GPU each; sites train side by
side when the machine has room). :func:`train_centralised` trains the same stage on the
sites' pooled data for the same total number of steps: the upper bound a federation is
compared with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from lungvlm.federated.config import FederatedConfig
from lungvlm.federated.sites import LOCAL_FIT_ARGS, build_site

log = logging.getLogger(__name__)


def absolute(config: FederatedConfig) -> FederatedConfig:
    """``config`` with its stage files and output folder as absolute paths.

    Simulated sites run in worker processes; absolute paths keep them independent of the
    workers' current directory.
    """
    return replace(
        config,
        stage_configs=tuple(str(Path(p).resolve()) for p in config.stage_configs),
        out_dir=str(Path(config.out_dir).resolve()),
    )


def simulate(config: FederatedConfig, verbose: bool = False) -> dict[str, Any]:
    """Run (or resume) the federation with one simulated SuperNode per site.

    Args:
        config: the federation.
        verbose: Flower's debug logging.

    Returns:
        ``{"rounds_done": int, "checkpoint": path of OUT/global/last.ckpt}``.

    Raises:
        RuntimeError: the federation stopped before its last round (a site or the server
            failed; Flower logged the reason above).
    """
    from flwr.simulation import run_simulation

    from lungvlm.federated.client import make_client_app
    from lungvlm.federated.server import make_server_app, read_state

    config = absolute(config)
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    server = make_server_app(lambda context: config)
    client = make_client_app(lambda context: config)
    resources: dict[str, float] = {"num_cpus": config.client_cpus}
    if config.client_gpus > 0:
        resources["num_gpus"] = config.client_gpus
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=len(config.sites),
        backend_config={
            "client_resources": resources,
            "init_args": {"include_dashboard": False, "logging_level": "warning"},
        },
        verbose_logging=verbose,
    )
    state = read_state(config.out_dir)
    done = 0 if state is None else int(state["rounds_done"])
    if done < config.rounds:
        raise RuntimeError(
            f"the federation in {config.out_dir} stopped after {done} of {config.rounds} rounds; "
            "Flower logged the reason above. Run the same command again to resume."
        )
    return {"rounds_done": done, "checkpoint": str(Path(config.out_dir) / "global" / "last.ckpt")}


def train_centralised(
    config: FederatedConfig, out_dir: str | Path, pool: Callable[[list[Any]], Any]
) -> Path:
    """Train the stage on all sites' data pooled, for as many steps as the federation takes.

    The federation trains ``rounds * local_epochs`` epochs on each site; pooling the sites and
    training ``rounds * local_epochs`` epochs over the pool takes the same total number of
    optimizer steps (up to a last partial batch per site). Local fits and this one share the
    same overrides (no validation inside the fit), but this one writes ``last.ckpt``.

    Args:
        config: the federation (its sites and stage).
        out_dir: the run folder.
        pool: builds one DataModule from the sites' DataModules
            (:class:`data_modules.pooled.PooledDataModule`).

    Returns:
        The checkpoint ``out_dir/checkpoints/last.ckpt`` (a normal ``lungvlm fit`` checkpoint).
    """
    config = absolute(config)
    out_dir = Path(out_dir).resolve()
    epochs = config.rounds * config.local_epochs
    sites = [
        build_site(config, site, out_dir / "sites" / site.name, extra=LOCAL_FIT_ARGS)
        for site in config.sites
    ]
    extra = [*LOCAL_FIT_ARGS, "--checkpoint.save_last=true"]
    main = build_site(config, config.sites[0], out_dir, max_epochs=epochs, extra=extra)
    pooled = pool([cli.datamodule for cli in sites])
    main.trainer.fit(main.model, datamodule=pooled)
    return out_dir / "checkpoints" / "last.ckpt"
