"""``lungvlm audit --ckpt CKPT --out DIR``: calibration, baselines, hierarchical Lung-RADS
errors, fairness across scanners and deferral of a stage-3 checkpoint (issue 17).

CLI wiring only; the sections are pure functions in :mod:`lungvlm.evaluation.audit`. Steps:

1. phantom validation crops (``--n-val``) and test crops (``--n-test``) go through the model as
   ``lungvlm report`` runs it (:func:`lungvlm.evaluation.crop_predictions.collect_crop_records`;
   on the test crops also Grad-CAM and the cross-attention maps, scored against the masks);
   the records are stored in ``DIR/crops_val.json`` / ``DIR/crops_test.json`` and reused by a
   second run with the same weights and sizes (a new calibration keeps them; delete them to
   recompute);
2. whole test chests for the detection rows of the fairness section: ``--detection FILE`` reads
   the ``evaluation.json`` of a ``lungvlm evaluate`` run; otherwise ``lungvlm evaluate`` runs on
   the first ``--n-chests`` test chests into ``DIR/detection/`` (resumable; 0 skips them);
3. robustness curves on the test crops (noise, blur, FGSM; ``--no-robustness`` skips them);
4. the data-efficiency study of ``lungvlm data-efficiency`` (``--data-efficiency FILE``) and
   energy rows from the ``energy.json`` of each ``--runs`` folder (written by ``lungvlm fit``);
5. ``DIR/audit.json`` and ``DIR/audit.html`` (+ ``figures/``), written atomically; with
   ``--keep-calibrator`` (default) the malignancy calibrator that won on validation is stored in
   the calibrated checkpoint (``<stem>_calibrated.ckpt``; a ``*_calibrated.ckpt`` is updated).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from lungvlm.commands.options import add_ckpt, add_device, add_progress

log = logging.getLogger(__name__)

#: Test chests run by default for the detection rows (a few minutes on 2 CPU cores).
DEFAULT_N_CHESTS = 6


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``audit`` subcommand."""
    parser = subparsers.add_parser(
        "audit",
        help="calibration, Brock baseline, hierarchical Lung-RADS errors, subgroup fairness",
        description=(
            "Audit a stage-3 checkpoint on phantom validation and test data: malignancy, growth "
            "and Lung-RADS calibration (temperature vs isotonic, fitted on validation), Brock vs "
            "LungVLM malignancy AUROC, hierarchical Lung-RADS errors with a risk-constrained "
            "threshold, per-scanner-subgroup metrics with bootstrap CIs, sentence deferral and "
            "training energy. Writes OUT/audit.json and OUT/audit.html."
        ),
    )
    add_ckpt(parser)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--n-val", type=int, default=128, help="phantom validation crops (default 128)"
    )
    parser.add_argument("--n-test", type=int, default=192, help="phantom test crops (default 192)")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="crops per forward pass (default 8)"
    )
    parser.add_argument(
        "--detection", type=Path, default=None,
        help="evaluation.json of `lungvlm evaluate` for the chest rows (default: run it)",
    )  # fmt: skip
    parser.add_argument(
        "--n-chests", type=int, default=DEFAULT_N_CHESTS,
        help=f"test chests evaluated when --detection is not given (default {DEFAULT_N_CHESTS}; "
        "0: no chest rows)",
    )  # fmt: skip
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples of a CI (default 1000)"
    )
    parser.add_argument(
        "--no-robustness", dest="robustness", action="store_false",
        help="skip the robustness curves (noise, blur and FGSM on the test crops)",
    )  # fmt: skip
    parser.add_argument(
        "--data-efficiency", type=Path, default=None,
        help="data_efficiency.json of `lungvlm data-efficiency` to include (section 5)",
    )  # fmt: skip
    parser.add_argument(
        "--runs", type=Path, nargs="*", default=(),
        help="training run folders whose energy.json (from `lungvlm fit`) the audit reports",
    )  # fmt: skip
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("--keep-calibrator", dest="keep_calibrator", action="store_true",
                      default=True, help="store the better malignancy calibrator (default)")  # fmt: skip
    keep.add_argument("--no-keep-calibrator", dest="keep_calibrator", action="store_false",
                      help="leave the checkpoints untouched")  # fmt: skip
    add_device(parser)
    add_progress(parser)
    parser.set_defaults(func=run)
    return parser


def _loader_factory(settings, split: str, n: int, batch_size: int):
    """A function returning a fresh loader over ``n`` phantom crops of ``split``."""
    from data_modules.phantom_datamodule import PhantomDataModule

    sizes = {
        "n_train": 0,
        "n_val": n if split == "val" else 0,
        "n_test": n if split == "test" else 0,
    }
    data = PhantomDataModule(
        crop_size_vox=settings.crop_size_vox, context_scale=settings.context_scale,
        spacing_mm=settings.spacing_mm, batch_size=batch_size, num_workers=0, **sizes,
    )  # fmt: skip
    data.setup("validate" if split == "val" else "test")
    return data.val_dataloader if split == "val" else data.test_dataloader


def _crop_records(
    model, settings, split: str, n: int, batch_size: int, path: Path, key: dict,
    saliency: bool = False,
):  # fmt: skip
    """Records of ``n`` phantom crops of ``split``, reused from ``path`` when ``key`` matches."""
    from lungvlm.evaluation.crop_predictions import collect_crop_records
    from lungvlm.export.writer import write_text_atomic

    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("key") == key:
                log.info("%s: %d records reused", path, len(stored["records"]))
                return stored["records"]
        except (OSError, ValueError, KeyError) as err:
            log.warning("%s is unreadable (%s); recomputed", path, err)
    records = collect_crop_records(
        model, _loader_factory(settings, split, n, batch_size)(), saliency=saliency
    )
    write_text_atomic(path, json.dumps({"key": key, "records": records}))
    return records


def load_detection(path: Path) -> list[dict]:
    """Per-chest rows at the operating point (:func:`lungvlm.evaluation.audit.chest_rows`) of
    a ``lungvlm evaluate`` evaluation.json of phantom chests (ValueError naming the file)."""
    from lungvlm.evaluation.audit import chest_rows

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        scans = data["scans"]
        if not isinstance(scans, list):
            raise TypeError("'scans' is not a list")
        point = (data.get("summary") or {}).get("operating_point") or {}
        return chest_rows(scans, point.get("candidate_threshold"))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"--detection {path} is not a `lungvlm evaluate` evaluation.json of phantom chests "
            f"with a 'scans' list ({err})"
        ) from err


def run_detection(args: argparse.Namespace) -> list[dict]:
    """Run ``lungvlm evaluate`` on the first ``--n-chests`` test chests into OUT/detection/."""
    from data_modules.phantom_datamodule import split_seed_base
    from lungvlm.cli import build_parser

    start = split_seed_base("test", 0)
    out = args.out / "detection"
    argv = ["evaluate", "--ckpt", str(args.ckpt), "--phantom-seeds",
            f"{start}:{start + args.n_chests}", "--min-thick-low-dose", "0", "--out", str(out),
            "--device", args.device] + ([] if args.progress else ["--no-progress"])  # fmt: skip
    evaluate_args = build_parser("evaluate").parse_args(argv)
    code = evaluate_args.func(evaluate_args)
    if code != 0:
        raise RuntimeError(f"lungvlm evaluate exited with {code}")
    return load_detection(out / "evaluation.json")


def energy_rows(runs) -> list[dict]:
    """One row per run folder from its ``energy.json`` (a missing file is a row that says so)."""
    rows = []
    for run_dir in runs:
        path = Path(run_dir) / "energy.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            rows.append({"run": str(run_dir), "method": f"no readable energy.json ({err})"})
            continue
        rows.append({"run": str(run_dir), **data})
    return rows


def run(args: argparse.Namespace) -> int:
    """Execute ``lungvlm audit``; prints the headline figures and the written files."""
    from lungvlm.api import LungVLM
    from lungvlm.commands.progress import progress_bars
    from lungvlm.evaluation.audit import run_audit
    from lungvlm.export.audit_html import write_audit_page
    from lungvlm.export.writer import write_text_atomic
    from lungvlm.lightning.checkpoint import weights_digest, write_calibrated_checkpoint

    for name in ("n_val", "n_test", "batch_size", "bootstrap"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.n_chests < 0:
        raise ValueError(f"--n-chests={args.n_chests} must be >= 0")
    ckpt = Path(args.ckpt)
    if not ckpt.is_file():
        raise ValueError(f"checkpoint {ckpt} does not exist")
    scans = load_detection(args.detection) if args.detection is not None else None
    efficiency = None
    if args.data_efficiency is not None:
        try:
            efficiency = json.loads(Path(args.data_efficiency).read_text(encoding="utf-8"))
            efficiency["summary"]["curves"]  # noqa: B018  (the part the page draws)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"--data-efficiency {args.data_efficiency} is not a data_efficiency.json of "
                f"`lungvlm data-efficiency` ({err})"
            ) from err
    model = LungVLM.from_checkpoint(ckpt, device=args.device)
    settings = model.report_model.settings
    # Records hold raw outputs: keyed by the weights, so a new calibration does not void them.
    key = {"weights_sha1": weights_digest(model.report_model.model.state_dict())}
    args.out.mkdir(parents=True, exist_ok=True)
    with progress_bars(args.progress):
        val = _crop_records(model.report_model.model, settings, "val", args.n_val,
                            args.batch_size, args.out / "crops_val.json", {**key, "n": args.n_val})  # fmt: skip
        test = _crop_records(model.report_model.model, settings, "test", args.n_test,
                             args.batch_size, args.out / "crops_test.json",
                             {**key, "n": args.n_test, "saliency": True}, saliency=True)  # fmt: skip
        detection_source = str(args.detection) if args.detection is not None else None
        if scans is None and args.n_chests > 0:
            scans = run_detection(args)
            detection_source = str(args.out / "detection" / "evaluation.json")
        robustness = None
        if args.robustness:
            from lungvlm.evaluation.robustness import robustness_curves

            module = model.report_model.model
            hu = module.normalization
            robustness = robustness_curves(
                module, _loader_factory(settings, "test", args.n_test, args.batch_size),
                float(hu["hu_max"]) - float(hu["hu_min"]), settings.spacing_mm,
            )  # fmt: skip
    audit = run_audit(val, test, scans, n_boot=args.bootstrap, robustness=robustness)
    audit["checkpoint"] = str(ckpt)
    audit["detection_source"] = detection_source
    if args.runs:
        audit["energy"] = energy_rows(args.runs)
    if efficiency is not None:
        audit["data_efficiency"] = {**efficiency, "source": str(args.data_efficiency)}
        audit["headline"]["data_efficiency_matches"] = efficiency["summary"].get("matches")
    calibrator = (audit["calibration"].get("malignancy") or {}).get("calibrator")
    if args.keep_calibrator and calibrator is not None:
        path = write_calibrated_checkpoint(ckpt, {"malignancy_calibrator": calibrator})
        audit["calibrator_written_to"] = str(path)
    write_text_atomic(args.out / "audit.json", json.dumps(audit, indent=2))
    page = write_audit_page(audit, args.out)
    for name, value in audit["headline"].items():
        print(f"{name:>36}: {json.dumps(value) if isinstance(value, dict) else value}")
    if "calibrator_written_to" in audit:
        print(
            f"kept the {audit['headline']['calibrator']} calibrator in {audit['calibrator_written_to']}"
        )
    print(f"wrote {args.out / 'audit.json'} and {page}")
    return 0
