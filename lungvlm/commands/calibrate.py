"""``lungvlm calibrate --ckpt CKPT``: fit the sentence-confidence threshold and the malignancy
temperature on phantom validation crops; with ``--detection``, choose the candidate threshold on
whole phantom validation chests instead. Either writes ``<ckpt stem>_calibrated.ckpt`` beside
the checkpoint and keeps the other calibration already there (same weights)."""

from __future__ import annotations

import argparse

from lungvlm.commands.options import add_ckpt, add_device, add_phantom_size, add_progress


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``calibrate`` subcommand."""
    parser = subparsers.add_parser(
        "calibrate",
        help="fit the sentence-confidence threshold and malignancy temperature",
        description=(
            "Fit the sentence-confidence threshold (kept sentences reach --target-precision) and "
            "the malignancy temperature on phantom validation crops; with --detection, choose "
            "the candidate-probability threshold that the report applies, on whole phantom "
            "validation chests, as the lowest with at most --max-fps-per-scan false positives "
            "per chest. Writes <ckpt stem>_calibrated.ckpt next to the checkpoint, keeping the "
            "other calibration of a calibrated file already there."
        ),
    )
    add_ckpt(parser, "stage-3 checkpoint (--detection: stage 2 or 3, with a candidate head)")
    parser.add_argument("--n-val", type=int, default=64, help="phantom validation crops")
    parser.add_argument(
        "--target-precision", type=float, default=None,
        help="precision (0-1) the kept sentences must reach (default: 0.9, "
        "lungvlm.inference.calibration.DEFAULT_TARGET_PRECISION)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8, help="crops per forward pass")
    detection = parser.add_argument_group("detection (--detection)")
    detection.add_argument(
        "--detection", action="store_true",
        help="calibrate the candidate threshold on whole validation chests instead",
    )  # fmt: skip
    detection.add_argument(
        "--n-chests", type=int, default=8, help="phantom validation chests (validation seeds)"
    )
    detection.add_argument(
        "--max-fps-per-scan", type=float, default=1.0,
        help="false positives per chest allowed at the chosen threshold (default 1.0)",
    )  # fmt: skip
    add_phantom_size(detection)
    detection.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction")
    detection.add_argument("--sw-batch-size", type=int, default=4, help="windows per forward")
    detection.add_argument(
        "--threshold", type=float, default=0.5, help="segmentation probability threshold"
    )
    add_device(parser)
    add_progress(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """The ``calibrate`` subcommand; prints the calibration table and the written file."""
    if args.detection:
        return run_detection(args)
    from data_modules.phantom_datamodule import PhantomDataModule
    from lungvlm.api import LungVLM
    from lungvlm.commands.progress import progress_bars
    from lungvlm.inference.calibration import calibrate, collect_calibration_data
    from lungvlm.lightning.checkpoint import write_calibrated_checkpoint

    if args.n_val < 1:
        raise ValueError(f"--n-val={args.n_val} must be >= 1")
    model = LungVLM.from_checkpoint(args.ckpt, device=args.device)
    s = model.report_model.settings
    data = PhantomDataModule(
        crop_size_vox=s.crop_size_vox, context_scale=s.context_scale, spacing_mm=s.spacing_mm,
        n_train=0, n_val=args.n_val, n_test=0, batch_size=args.batch_size, num_workers=0,
    )  # fmt: skip
    data.setup("validate")
    with progress_bars(args.progress):
        collected = collect_calibration_data(model.report_model.model, data.val_dataloader())
    options = {} if args.target_precision is None else {"target_precision": args.target_precision}
    result = calibrate(*collected, **options)
    path = write_calibrated_checkpoint(args.ckpt, result)
    print(result.table())
    print(f"wrote {path}")
    return 0


def run_detection(args: argparse.Namespace) -> int:
    """``calibrate --detection``: segment the first ``--n-chests`` phantom validation chests
    (``PhantomDataModule.validation_chests``, data seed 0: never training chests of any seed),
    score the candidates and store the threshold at ``--max-fps-per-scan`` under the
    calibration's ``"detection"`` key."""
    from data_modules.phantom_datamodule import PhantomDataModule
    from lungvlm.commands.options import resolve_device
    from lungvlm.commands.progress import progress_bars
    from lungvlm.evaluation.detection import detection_calibration, evaluate_scans
    from lungvlm.inference.report_analysis import settings_from_checkpoint
    from lungvlm.lightning.callbacks import evaluation_scan
    from lungvlm.lightning.checkpoint import (
        load_model,
        read_checkpoint,
        write_calibrated_checkpoint,
    )

    if args.n_chests < 1:
        raise ValueError(f"--n-chests={args.n_chests} must be >= 1")
    if not args.max_fps_per_scan >= 0:
        raise ValueError(f"--max-fps-per-scan={args.max_fps_per_scan} must be >= 0")
    try:
        checkpoint = read_checkpoint(args.ckpt)
    except FileNotFoundError as err:
        raise ValueError(f"checkpoint {args.ckpt} does not exist") from err
    model = load_model(args.ckpt, resolve_device(args.device), checkpoint=checkpoint)
    if getattr(model, "candidate_head", None) is None:
        raise ValueError(
            f"checkpoint {args.ckpt} has no candidate head (model.candidate_head): train with one "
            "to calibrate detection"
        )
    s = settings_from_checkpoint(checkpoint)
    data = PhantomDataModule(
        crop_size_vox=s.crop_size_vox, context_scale=s.context_scale, spacing_mm=s.spacing_mm,
        n_train=0, n_val=0, n_test=0,
    )  # fmt: skip
    chests = data.validation_chests(args.n_chests, args.phantom_size)
    with progress_bars(args.progress):
        result = evaluate_scans(
            model, [evaluation_scan(c) for c in chests], s.spacing_mm, args.threshold,
            roi_size_vox=s.crop_size_vox, overlap=args.overlap,
            sw_batch_size=args.sw_batch_size, context_scale=s.context_scale,
        )  # fmt: skip
    calibration = detection_calibration(result, args.max_fps_per_scan)
    path = write_calibrated_checkpoint(args.ckpt, {"detection": calibration})
    sensitivity = calibration["val_sensitivity"]
    print(
        f"candidate_threshold = {calibration['candidate_threshold']:.4f} at <= "
        f"{args.max_fps_per_scan:g} FPs/scan on {len(chests)} validation chests: sensitivity "
        f"{sensitivity:.3f}, {calibration['val_fps_per_scan']:.2f} FPs/scan "
        f"({result.n_nodules} nodules, {sum(len(sc.candidates) for sc in result.scans)} "
        "candidates)"
    )
    print(f"wrote {path}")
    return 0
