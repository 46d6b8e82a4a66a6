"""``lungvlm calibrate --ckpt CKPT``: fit the sentence-confidence threshold and the malignancy
temperature on phantom validation crops; writes ``<ckpt stem>_calibrated.ckpt`` beside it."""

from __future__ import annotations

import argparse

from lungvlm.commands.options import add_ckpt, add_device, add_progress


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``calibrate`` subcommand."""
    parser = subparsers.add_parser(
        "calibrate",
        help="fit the sentence-confidence threshold and malignancy temperature",
        description=(
            "Fit the sentence-confidence threshold (kept sentences reach --target-precision) and "
            "the malignancy temperature on phantom validation crops; writes "
            "<ckpt stem>_calibrated.ckpt next to the checkpoint."
        ),
    )
    add_ckpt(parser)
    parser.add_argument("--n-val", type=int, default=64, help="phantom validation crops")
    parser.add_argument(
        "--target-precision", type=float, default=None,
        help="precision (0-1) the kept sentences must reach (default: 0.9, "
        "lungvlm.inference.calibration.DEFAULT_TARGET_PRECISION)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8, help="crops per forward pass")
    add_device(parser)
    add_progress(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """The ``calibrate`` subcommand; prints the calibration table and the written file."""
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
