"""Federated training across sites that keep their data (Flower): FedAvg, FedAvgM and DP.

- :mod:`.config`: the federation YAML (``experiments/federated.yaml``): sites, stage, rounds,
  strategy, privacy.
- :mod:`.sites`: a site's LightningCLI run (its model, data module and trainer).
- :mod:`.client`: the site ClientApp (local Lightning fit and validation).
- :mod:`.strategy`: FedAvg / FedAvgM with noise before the momentum, and the privacy ledger.
- :mod:`.server`: the ServerApp, per-round TensorBoard logs, global checkpoints, resume.
- :mod:`.simulation`: one machine runs the whole federation (Flower's simulation engine);
  :mod:`.app`: the apps a real deployment (``flwr run``) loads.

Nothing here may reach the network by itself: Flower's telemetry and update check and Ray's
usage statistics are switched off before they are imported.
"""

import os

for _name, _value in (
    ("FLWR_TELEMETRY_ENABLED", "0"),
    ("FLWR_DISABLE_UPDATE_CHECK", "1"),
    ("RAY_USAGE_STATS_ENABLED", "0"),
    # Ray's notice about GPU visibility on CPU-only workers, printed by every worker.
    ("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0"),
):
    os.environ.setdefault(_name, _value)
