"""``lungvlm federate``: train a stage across sites that keep their data (Flower).

    lungvlm federate --config experiments/federated.yaml
    lungvlm federate --config experiments/federated.yaml --strategy fedavg --out runs/fed_avg
    lungvlm federate --config experiments/federated.yaml --centralised --out runs/fed_pooled

One machine runs the whole federation (Flower's simulation engine: one worker process per
site). The output folder holds the global model as a normal checkpoint (global/last.ckpt,
and global/round_NNN.ckpt per round) that `lungvlm report`, `evaluate` and `init_from` load,
per-round global and per-site validation metrics (tensorboard/, rounds.jsonl) and, with
privacy, the epsilon spent per round. Run the same command again to resume a stopped
federation at its next round. --centralised trains the same stage on the sites' pooled data
for the same number of steps instead (the baseline a federation is compared with).

Across hosts, the same ServerApp and ClientApp run under Flower's deployment engine; see
docs/federated.md for the SuperLink, SuperNode and `flwr run` command lines.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``federate`` subcommand to a ``lungvlm`` sub-parser set."""
    parser = subparsers.add_parser(
        "federate",
        help="federated training across sites with Flower (FedAvg / FedAvgM, differential privacy)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", type=Path, required=True, help="federation YAML (experiments/federated.yaml)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: the YAML's out_dir)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="federated rounds (default: the YAML's)"
    )
    parser.add_argument(
        "--strategy",
        choices=("fedavg", "fedavgm"),
        default=None,
        help="server aggregation (default: the YAML's); fedavg ignores the YAML's momentum",
    )
    parser.add_argument(
        "--server-momentum", type=float, default=None, help="FedAvgM momentum, in [0, 1)"
    )
    parser.add_argument(
        "--server-lr", type=float, default=None, help="FedAvgM server learning rate"
    )
    privacy = parser.add_mutually_exclusive_group()
    privacy.add_argument("--no-privacy", action="store_true", help="turn the YAML's privacy off")
    privacy.add_argument(
        "--noise-multiplier",
        type=float,
        default=None,
        help="turn client-level DP on (or change it): noise sd over the clipping norm",
    )
    parser.add_argument(
        "--clipping-norm",
        type=float,
        default=None,
        help="L2 bound of one site's update per round (with privacy; default: the YAML's or 1.0)",
    )
    parser.add_argument(
        "--centralised",
        action="store_true",
        help="train on the sites' pooled data for the same number of steps (no federation)",
    )
    parser.add_argument(
        "--test",
        type=Path,
        default=None,
        metavar="CKPT",
        help="instead of training: test CKPT on every site's test crops (crop Dice per site), "
        "written to OUT/site_test.json",
    )
    parser.add_argument("--verbose", action="store_true", help="Flower's debug logging")
    parser.set_defaults(func=run)
    return parser  # fmt: skip


def apply_overrides(config, namespace: argparse.Namespace):
    """``config`` with the command line's overrides (rounds, strategy, privacy, out).

    Raises:
        ValueError: an override the config check refuses (names the field).
    """
    from lungvlm.federated.config import PrivacyConfig, StrategyConfig

    changes = {}
    if namespace.out is not None:
        changes["out_dir"] = str(namespace.out)
    if namespace.rounds is not None:
        changes["rounds"] = namespace.rounds
    strategy = config.strategy
    if namespace.strategy == "fedavg":
        strategy = StrategyConfig(name="fedavg", server_learning_rate=1.0, server_momentum=0.0)
    elif namespace.strategy == "fedavgm":
        strategy = StrategyConfig(
            "fedavgm", strategy.server_learning_rate, strategy.server_momentum
        )
    if namespace.server_momentum is not None:
        strategy = StrategyConfig(
            strategy.name, strategy.server_learning_rate, namespace.server_momentum
        )
    if namespace.server_lr is not None:
        strategy = StrategyConfig(strategy.name, namespace.server_lr, strategy.server_momentum)
    changes["strategy"] = strategy
    privacy = config.privacy
    if namespace.no_privacy:
        privacy = None
    elif namespace.noise_multiplier is not None or namespace.clipping_norm is not None:
        base = privacy or PrivacyConfig()
        privacy = PrivacyConfig(
            noise_multiplier=namespace.noise_multiplier or base.noise_multiplier,
            clipping_norm=namespace.clipping_norm or base.clipping_norm,
            delta=base.delta,
        )
    changes["privacy"] = privacy
    return config.with_changes(**changes)  # fmt: skip


def run(namespace: argparse.Namespace) -> int:
    """Run the ``federate`` subcommand; prints the checkpoint and the last round's metrics."""
    import logging

    from lungvlm.federated.config import load_config
    from lungvlm.federated.server import read_rounds

    try:
        import flwr  # noqa: F401
        import opacus  # noqa: F401
    except ImportError as err:
        raise ValueError(
            f"lungvlm federate needs Flower and Opacus ({err.name} is missing): "
            "pip install -e '.[federated]'"
        ) from err
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("flwr").propagate = False  # Flower prints its own log lines
    config = apply_overrides(load_config(namespace.config), namespace)
    if namespace.test is not None:
        from lungvlm.export.writer import write_text_atomic
        from lungvlm.federated.evaluation import test_sites

        result = test_sites(config, namespace.test, config.out_dir)
        for name, values in result["sites"].items():
            shown = {
                k: round(v, 4) for k, v in values.items() if k in ("test/seg/dice", "test/loss")
            }
            print(f"{name}: {shown} ({int(values['samples'])} crops)")
        print(f"mean: { {k: round(v, 4) for k, v in result['mean'].items()} }")
        written = write_text_atomic(
            Path(config.out_dir) / "site_test.json", json.dumps(result, indent=2)
        )
        print(f"written: {written}")
        return 0
    if namespace.centralised:
        from data_modules.pooled import PooledDataModule
        from lungvlm.federated.simulation import train_centralised

        checkpoint = train_centralised(config, config.out_dir, PooledDataModule)
        print(
            f"centralised: {len(config.sites)} sites pooled, {config.rounds * config.local_epochs} epochs"
        )
        print(f"checkpoint: {checkpoint}")
        return 0
    from lungvlm.federated.simulation import simulate

    result = simulate(config, verbose=namespace.verbose)
    rounds = read_rounds(config.out_dir)
    print(
        f"federation: {result['rounds_done']} rounds, {len(config.sites)} sites, {config.strategy.name}"
    )
    if rounds:
        last = rounds[-1]
        shown = {k: round(v, 4) for k, v in last["global"].items() if v is not None}
        print(f"round {last['round']} global: {shown}")
        if "privacy" in last:
            p = last["privacy"]
            print(f"privacy spent: epsilon {p['epsilon']:.3f} at delta {p['delta']:g}")
    print(f"checkpoint: {result['checkpoint']}")
    print(
        f"per-round metrics: {Path(config.out_dir) / 'rounds.jsonl'}, TensorBoard: {Path(config.out_dir) / 'tensorboard'}"
    )
    return 0  # fmt: skip
