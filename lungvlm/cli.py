"""The one ``lungvlm`` entry point: a table of commands, each imported only when it runs.

``lungvlm --help`` imports nothing but this file; ``lungvlm <command> --help`` imports only that
command's module, whose top level holds argparse code only (the library, torch and Lightning are
imported inside its ``run``). ``fit``, ``validate`` and ``test`` are LightningCLI
(:mod:`lungvlm.commands.fit`); every other command is a plain argparse command registered by its
module in :mod:`lungvlm.commands`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

#: LightningCLI subcommands: name -> one-line help.
LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train a stage from layered YAML configs (experiments/base.yaml + stageN.yaml)",
    "validate": "run the validation loop of a config and checkpoint",
    "test": "run the test loop of a config and checkpoint",
}

#: Plain subcommands: name -> (module defining ``register(subparsers)``, one-line help).
PLAIN_COMMANDS: dict[str, tuple[str, str]] = {
    "report": ("lungvlm.commands.report", "write the report folder of one CT (md, json, HTML, NIfTI, DICOM SEG/SR)"),
    "predict": ("lungvlm.commands.predict", "reports for many CTs (a folder or a CSV) with a summary CSV; resumes"),
    "ask": ("lungvlm.commands.ask", "answer a question about one reported nodule, with heatmaps"),
    "calibrate": ("lungvlm.commands.calibrate", "fit the sentence-confidence threshold and malignancy temperature"),
    "evaluate": ("lungvlm.commands.evaluate", "whole-chest detection: per-nodule Dice, FROC/CPM, FPs per scan"),
    "evaluate-reports": ("lungvlm.commands.evaluate_reports", "score whole-exam reports against phantom truth"),
    "audit": ("lungvlm.commands.audit", "calibration, Brock baseline, hierarchical Lung-RADS errors, subgroup fairness"),
    "data-efficiency": ("lungvlm.commands.data_efficiency", "Dice at 5-100 % of the labels, from stage 1 and from scratch"),
    "export-onnx": ("lungvlm.commands.export_onnx", "export encoder + segmentation head to ONNX (parity-checked)"),
    "phantom": ("lungvlm.commands.phantom", "write synthetic chest CTs with nodules, labels and reports"),
    "preprocess": ("lungvlm.commands.preprocess", "resample LIDC-IDRI / LUNA16 / phantom data into the training cache"),
    "federate": ("lungvlm.commands.federate", "federated training across sites with Flower (FedAvgM, differential privacy)"),
    "sweep": ("lungvlm.commands.sweep", "Optuna hyper-parameter sweep over a stage's config"),
}  # fmt: skip

DESCRIPTION = (
    "LungVLM: explainable lung-nodule segmentation, risk scoring and grounded report generation "
    "from chest CT."
)


def _epilog() -> str:
    lines = ["commands:"]
    for name, text in LIGHTNING_COMMANDS.items():
        lines.append(f"  {name:<17} {text}")
    for name, (_module, text) in PLAIN_COMMANDS.items():
        lines.append(f"  {name:<17} {text}")
    lines.append("")
    lines.append("`lungvlm COMMAND --help` lists a command's options.")
    return "\n".join(lines)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; with ``command``, that plain command's sub-parser is registered.

    Only ``command``'s module is imported, so building the parser stays cheap.
    """
    parser = argparse.ArgumentParser(
        prog="lungvlm",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog(),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    if command is not None:
        module = importlib.import_module(PLAIN_COMMANDS[command][0])
        module.register(subparsers)
    return parser


class _LiveStderrHandler(logging.StreamHandler):
    """A stream handler that always writes to the current ``sys.stderr`` (tests swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # the base class assigns it in __init__
        pass


def configure_logging(level: int = logging.INFO) -> None:
    """Send LungVLM's own log records (``lungvlm.*``, ``data_modules.*``) to stderr."""
    for name in ("lungvlm", "data_modules"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = _LiveStderrHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


def _suggest(name: str) -> str:
    import difflib

    names = [*LIGHTNING_COMMANDS, *PLAIN_COMMANDS]
    close = difflib.get_close_matches(name, names, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lungvlm`` console script.

    Args:
        argv: command-line arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The process exit code: 0 on success, 2 on bad input (one line on stderr naming the file
        or option and the problem).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0
    configure_logging()
    command = args[0]
    if command in LIGHTNING_COMMANDS:
        from lungvlm.commands.fit import run_lightning

        try:
            run_lightning(args)
        except ValueError as err:
            print(f"lungvlm {command}: error: {err}", file=sys.stderr)
            return 2
        return 0
    if command not in PLAIN_COMMANDS:
        print(
            f"lungvlm: error: unknown command {command!r}{_suggest(command)} "
            "(`lungvlm --help` lists them)",
            file=sys.stderr,
        )
        return 2
    namespace = build_parser(command).parse_args(args)
    try:
        result = namespace.func(namespace)
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as err:
        # Bad input (a data file, a folder, a checkpoint): one clear line, non-zero exit.
        print(f"lungvlm {command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
