"""The Flower apps a real deployment loads (``flwr run``; ``[tool.flwr.app]`` in pyproject).

Both read the federation YAML named by the run config's ``config`` key (default
``experiments/federated.yaml``, relative to where the SuperLink and SuperNodes run); a
SuperNode says which site it is with ``--node-config "site=<name>"``. ``out-dir`` in the run
config replaces the YAML's ``out_dir`` (each host writes its own part there: the server the
global checkpoints and logs, a site its local runs).
"""

from __future__ import annotations

from functools import lru_cache

from flwr.app import Context

from lungvlm.federated.client import make_client_app
from lungvlm.federated.config import FederatedConfig, load_config
from lungvlm.federated.server import make_server_app


@lru_cache(maxsize=4)
def _load(path: str, out_dir: str | None) -> FederatedConfig:
    config = load_config(path)
    return config.with_changes(out_dir=out_dir) if out_dir else config


def config_from_context(context: Context) -> FederatedConfig:
    """The federation config a deployed app runs (run config ``config`` and ``out-dir``)."""
    run_config = dict(context.run_config)
    out_dir = run_config.get("out-dir")
    return _load(str(run_config.get("config", "experiments/federated.yaml")), out_dir or None)


server_app = make_server_app(config_from_context)
client_app = make_client_app(config_from_context)
