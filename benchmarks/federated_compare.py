"""Compare centralised training, FedAvg, FedAvgM and FedAvgM with DP on the same sites.

    python benchmarks/federated_compare.py --config experiments/federated.yaml \
        --out runs/federated_compare --noise-multiplier 1.0 --clipping-norm 5.0 --chests 6

Every variant trains the federation's stage for the same total number of local steps
(``rounds * local_epochs`` epochs on each site's crops; the centralised run pools them), then
is scored the same way: crop Dice on every site's test crops (``lungvlm federate --test``)
and whole-chest FROC/CPM on ``--chests`` default phantom test chests (``lungvlm evaluate``).
Prints a markdown table (and writes OUT/compare.json); runs that finished are not run again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

LUNGVLM = [sys.executable, "-m", "lungvlm.cli"]


def _run(args: list[str], log: Path) -> float:
    """Run ``lungvlm ARGS`` with its output in ``log``; returns the wall time (s)."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        subprocess.run([*LUNGVLM, *args], stdout=handle, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="experiments/federated.yaml")
    parser.add_argument("--out", type=Path, default=Path("runs/federated_compare"))
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    parser.add_argument(
        "--clipping-norm",
        type=float,
        default=5.0,
        help="L2 bound of a site's update; the default CPU sites' updates are ~7",
    )
    parser.add_argument(
        "--chests", type=int, default=6, help="whole test chests for the CPM (0: skip)"
    )
    parser.add_argument(
        "--variants",
        default="centralised,fedavg,fedavgm,fedavgm_dp",
        help="comma-separated: centralised, fedavg, fedavgm, fedavgm_dp (--noise-multiplier) "
        "or fedavgm_dp:SIGMA",
    )
    ns = parser.parse_args()
    ns.out.mkdir(parents=True, exist_ok=True)

    def variant_args(name: str) -> list[str]:
        if name == "centralised":
            return ["--centralised"]
        if name in ("fedavg", "fedavgm"):
            return ["--strategy", name, "--no-privacy"]
        if name.startswith("fedavgm_dp"):  # fedavgm_dp or fedavgm_dp:SIGMA
            sigma = name.split(":", 1)[1] if ":" in name else str(ns.noise_multiplier)
            return [
                "--strategy",
                "fedavgm",
                "--noise-multiplier",
                sigma,
                "--clipping-norm",
                str(ns.clipping_norm),
            ]
        raise SystemExit(f"unknown variant {name!r}")

    results_path = ns.out / "compare.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name in ns.variants.split(","):
        safe = name.replace(":", "_sigma")
        out = ns.out / safe
        row = results.get(name, {})
        ckpt = out / ("checkpoints/last.ckpt" if name == "centralised" else "global/last.ckpt")
        if "train_s" not in row:
            row["train_s"] = _run(
                ["federate", "--config", ns.config, "--out", str(out), *variant_args(name)],
                ns.out / f"{safe}.log",
            )
        if "crop" not in row:
            _run(
                ["federate", "--config", ns.config, "--out", str(out), "--test", str(ckpt)],
                ns.out / f"{safe}_test.log",
            )
            row["crop"] = json.loads((out / "site_test.json").read_text())
        if ns.chests > 0 and "cpm" not in row:
            seeds = f"2000000:{2000000 + ns.chests}"
            row["evaluate_s"] = _run(
                [
                    "evaluate",
                    "--ckpt",
                    str(ckpt),
                    "--phantom-seeds",
                    seeds,
                    "--out",
                    str(out / "evaluate"),
                    "--no-progress",
                ],
                ns.out / f"{safe}_evaluate.log",
            )
            evaluation = json.loads((out / "evaluate" / "evaluation.json").read_text())
            row["cpm"] = evaluation["summary"]["cpm"]
        rounds = out / "rounds.jsonl"
        if rounds.is_file():
            last = [json.loads(line) for line in rounds.read_text().splitlines() if line][-1]
            row["privacy"] = last.get("privacy")
            row["update_norms"] = {k: v.get("train/update_norm") for k, v in last["sites"].items()}
        results[name] = row
        results_path.write_text(json.dumps(results, indent=2))
    lines = [
        "| variant | crop Dice (mean of sites) | per site | CPM | epsilon | train s |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        crop = row.get("crop", {})
        per_site = ", ".join(
            f"{k} {v.get('test/seg/dice', float('nan')):.3f}"
            for k, v in crop.get("sites", {}).items()
        )
        eps = (row.get("privacy") or {}).get("epsilon")
        cpm = row.get("cpm")
        dice = crop.get("mean", {}).get("test/seg/dice", float("nan"))
        lines.append(
            f"| {name} | {dice:.3f} | {per_site} | {'-' if cpm is None else f'{cpm:.3f}'} | "
            f"{'-' if eps is None else f'{eps:.4g}'} | {row.get('train_s', 0):.0f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table, end="")
    (ns.out / "compare.md").write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
