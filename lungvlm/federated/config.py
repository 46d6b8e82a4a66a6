"""The federation's configuration (``experiments/federated.yaml``), read and checked once.

A federation trains one of the project's Lightning stages (stage 2 or stage 3) across sites
that keep their data. Every site is a LightningCLI configuration: the shared stage files
(``stage_configs``), the shared ``stage_overrides``, then the site's own ``config`` (its data
module: a :class:`~data_modules.phantom_datamodule.PhantomDataModule` with its own
:class:`~data_modules.phantom.scanner.PhantomSite`, or any other DataModule, e.g. LIDC-IDRI of
one scanner vendor). The server aggregates with FedAvg or FedAvgM; ``privacy`` adds client
update clipping and Gaussian noise (client-level differential privacy).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

STRATEGIES: tuple[str, ...] = ("fedavg", "fedavgm")
#: A site's name becomes a folder and a TensorBoard tag.
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class SiteConfig:
    """One institution.

    Attributes:
        name: folder and log name (letters, digits, ``_``, ``-``).
        config: LightningCLI configuration layered last for this site (usually ``data:``).
    """

    name: str
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PrivacyConfig:
    """Client-level differential privacy (DP-FedAvg, McMahan et al. 2018).

    Each site's update (its weights after local training minus the global weights it got) is
    clipped to L2 norm ``clipping_norm`` on the site; the server adds Gaussian noise of
    standard deviation ``noise_multiplier * clipping_norm / n_sites`` to the mean update before
    FedAvgM's momentum. The neighbouring relation is adding or removing one whole site; every
    round uses every site (no sampling amplification).

    Attributes:
        noise_multiplier: noise standard deviation over the clipping norm (> 0).
        clipping_norm: L2 bound of one site's update (weights' units, > 0).
        delta: the delta of the (epsilon, delta) reported per round.
    """

    noise_multiplier: float = 1.0
    clipping_norm: float = 1.0
    delta: float = 1e-5


@dataclass(frozen=True)
class StrategyConfig:
    """Server aggregation.

    Attributes:
        name: "fedavg" or "fedavgm" (server-side momentum, Hsu et al. 2019).
        server_learning_rate: step on the averaged update (1.0 with momentum 0 is FedAvg).
        server_momentum: momentum of the averaged update (FedAvgM only).
    """

    name: str = "fedavgm"
    server_learning_rate: float = 1.0
    server_momentum: float = 0.9


@dataclass(frozen=True)
class FederatedConfig:
    """A whole federation.

    Attributes:
        sites: the institutions (at least 2).
        stage_configs: LightningCLI config files every site layers first (repo-relative or
            absolute paths).
        stage_overrides: LightningCLI configuration every site layers after them.
        rounds: federated rounds.
        local_epochs: epochs each site trains per round.
        strategy: FedAvg or FedAvgM settings.
        privacy: differential privacy, or None.
        out_dir: folder of the run (``global/`` checkpoints, ``tensorboard/``, ``sites/``).
        client_cpus: CPU cores each simulated site gets (its torch threads); sites train
            side by side when the machine has enough.
        client_gpus: fraction of a GPU each simulated site gets (0 on a CPU machine).
        timeout_s: how long the server waits for a round's replies (seconds).
        source: the YAML file it was read from (error messages).
    """

    sites: tuple[SiteConfig, ...]
    stage_configs: tuple[str, ...]
    stage_overrides: dict[str, Any] = field(default_factory=dict)
    rounds: int = 4
    local_epochs: int = 1
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    privacy: PrivacyConfig | None = None
    out_dir: str = "runs/federated"
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    timeout_s: float = 3600.0
    source: str = "<config>"

    def with_changes(self, **changes: Any) -> FederatedConfig:
        """A copy with some fields replaced (command-line overrides), checked again."""
        updated = replace(self, **changes)
        check_config(updated)
        return updated

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the ``federation.yaml`` written beside the run)."""
        return {
            "sites": [{"name": s.name, "config": s.config} for s in self.sites],
            "stage_configs": list(self.stage_configs),
            "stage_overrides": self.stage_overrides,
            "rounds": self.rounds,
            "local_epochs": self.local_epochs,
            "strategy": vars(self.strategy).copy(),
            "privacy": None if self.privacy is None else vars(self.privacy).copy(),
            "out_dir": self.out_dir,
            "client_cpus": self.client_cpus,
            "client_gpus": self.client_gpus,
            "timeout_s": self.timeout_s,
        }


def _fail(source: str, message: str) -> ValueError:
    return ValueError(f"federated config {source}: {message}")


def check_config(config: FederatedConfig) -> None:
    """Check a :class:`FederatedConfig`; raise ``ValueError`` naming the file and the field."""
    src = config.source
    if len(config.sites) < 2:
        raise _fail(src, f"sites: {len(config.sites)} given; a federation needs at least 2")
    names = [s.name for s in config.sites]
    for name in names:
        if not isinstance(name, str) or not _SITE_NAME.match(name):
            raise _fail(src, f"site name {name!r}: use letters, digits, '_' or '-' (<= 64)")
    if len(set(names)) != len(names):
        raise _fail(src, f"site names repeat: {names}")
    for site in config.sites:
        if not isinstance(site.config, dict):
            raise _fail(src, f"sites[{site.name}].config must be a mapping (LightningCLI YAML)")
    if not config.stage_configs:
        raise _fail(src, "stage_configs is empty; name the stage's config files")
    for path in config.stage_configs:
        if not Path(path).is_file():
            raise _fail(src, f"stage_configs: {path} does not exist")
    if not isinstance(config.stage_overrides, dict):
        raise _fail(src, "stage_overrides must be a mapping (LightningCLI YAML)")
    for name in ("rounds", "local_epochs"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _fail(src, f"{name}={value!r} must be a positive integer")
    strategy = config.strategy
    if strategy.name not in STRATEGIES:
        raise _fail(src, f"strategy.name={strategy.name!r}; expected one of {STRATEGIES}")
    if not strategy.server_learning_rate > 0:
        raise _fail(src, f"strategy.server_learning_rate={strategy.server_learning_rate!r} <= 0")
    if not 0.0 <= strategy.server_momentum < 1.0:
        raise _fail(src, f"strategy.server_momentum={strategy.server_momentum!r}; need [0, 1)")
    if strategy.name == "fedavg" and (
        strategy.server_momentum != 0.0 or strategy.server_learning_rate != 1.0
    ):
        raise _fail(
            src,
            "strategy fedavg takes no server_momentum or server_learning_rate "
            "(use fedavgm, or set them to 0 and 1)",
        )
    privacy = config.privacy
    if privacy is not None:
        if not privacy.noise_multiplier > 0:
            raise _fail(src, f"privacy.noise_multiplier={privacy.noise_multiplier!r} must be > 0")
        if not privacy.clipping_norm > 0:
            raise _fail(src, f"privacy.clipping_norm={privacy.clipping_norm!r} must be > 0")
        if not 0.0 < privacy.delta < 1.0:
            raise _fail(src, f"privacy.delta={privacy.delta!r} must be in (0, 1)")
    if not config.client_cpus > 0 or config.client_gpus < 0:
        raise _fail(src, "client_cpus must be > 0 and client_gpus >= 0")
    if not config.timeout_s > 0:
        raise _fail(src, f"timeout_s={config.timeout_s!r} must be > 0")


def _section(raw: dict, key: str, cls: type, src: str) -> Any:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail(src, f"{key} must be a mapping")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(value) - known)
    if unknown:
        raise _fail(src, f"{key}: unknown keys {unknown}; expected some of {sorted(known)}")
    return cls(**value)


def load_config(path: str | Path) -> FederatedConfig:
    """Read and check a federation YAML file (``experiments/federated.yaml``).

    Raises:
        ValueError: a missing, malformed or inconsistent file (names it and the field).
    """
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise _fail(src, "the file does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise _fail(src, f"cannot read it as YAML: {err}") from err
    if not isinstance(raw, dict):
        raise _fail(src, "expected a mapping at the top level")
    known = set(FederatedConfig.__dataclass_fields__) - {"source"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _fail(src, f"unknown keys {unknown}; expected some of {sorted(known)}")
    sites = raw.get("sites") or []
    if not isinstance(sites, list):
        raise _fail(src, "sites must be a list of {name, config}")
    parsed_sites = []
    for i, site in enumerate(sites):
        if not isinstance(site, dict) or "name" not in site or set(site) - {"name", "config"}:
            raise _fail(src, f"sites[{i}] must be a mapping with 'name' and optional 'config'")
        parsed_sites.append(SiteConfig(name=site["name"], config=site.get("config") or {}))
    fields = {k: raw[k] for k in known if k in raw}
    fields["sites"] = tuple(parsed_sites)
    fields["stage_configs"] = tuple(str(p) for p in raw.get("stage_configs") or ())
    fields["stage_overrides"] = raw.get("stage_overrides") or {}
    fields["strategy"] = _section(raw, "strategy", StrategyConfig, src) or StrategyConfig()
    fields["privacy"] = _section(raw, "privacy", PrivacyConfig, src)
    try:
        config = FederatedConfig(**fields, source=src)
    except TypeError as err:
        raise _fail(src, str(err)) from err
    check_config(config)
    return config
