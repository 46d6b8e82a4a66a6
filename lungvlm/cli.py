"""The one ``lungvlm`` entry point.

``lungvlm fit|validate|test|predict`` run LightningCLI on the YAML configs in ``experiments/``
(layered: ``--config experiments/base.yaml --config experiments/stage2.yaml``); every other
subcommand (``phantom``, ...) is a plain argparse command registered by its own module. This
is the only place where ``lungvlm`` imports ``data_modules``: it wires the two together.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train a stage from a YAML config (e.g. experiments/stage3.yaml)",
    "validate": "run the validation loop of a config/checkpoint",
    "test": "run the test loop of a config/checkpoint",
    "predict": "run the predict loop of a config/checkpoint",
}

#: Plain subcommands: (name, module defining ``register(subparsers)``).
PLAIN_COMMANDS: tuple[tuple[str, str], ...] = (
    ("phantom", "data_modules.phantom.cli"),
    ("preprocess", "data_modules.preprocess_cli"),
    ("report", "lungvlm.inference.report_cli"),
    ("ask", "lungvlm.inference.ask_cli"),
    ("evaluate", "lungvlm.inference.evaluate_cli"),
    ("evaluate-reports", "lungvlm.inference.report_eval_cli"),
    ("sweep", "lungvlm.sweep.cli"),
    ("pretrain-language", "lungvlm.lightning.language_cli"),
)


def build_plain_parser() -> argparse.ArgumentParser:
    """Build the argparse parser of the plain (non-Lightning) subcommands."""
    parser = argparse.ArgumentParser(
        prog="lungvlm",
        description=(
            "LungVLM: explainable lung-nodule segmentation, risk scoring and grounded "
            "report generation from chest CT."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Training and evaluation (LightningCLI; `lungvlm fit --help` for options):\n"
        + "\n".join(f"  {name:<10} {text}" for name, text in LIGHTNING_COMMANDS.items()),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _name, module_name in PLAIN_COMMANDS:
        module = importlib.import_module(module_name)
        module.register(subparsers)
    return parser


def run_lightning(argv: Sequence[str]) -> None:
    """Run LightningCLI with ``argv`` (first element is fit/validate/test/predict)."""
    from lungvlm.lightning.cli import LungVLMCLI

    LungVLMCLI(args=list(argv))


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lungvlm`` console script.

    Args:
        argv: command-line arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The process exit code (0 on success).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    configure_logging()
    if args and args[0] in LIGHTNING_COMMANDS:
        run_lightning(args)
        return 0
    parser = build_plain_parser()
    if not args:
        parser.print_help()
        return 0
    namespace = parser.parse_args(args)
    if namespace.command is None:
        parser.print_help()
        return 0
    try:
        result = namespace.func(namespace)
    except (ValueError, FileNotFoundError, OSError) as err:
        # Bad input (a data file, a folder, a checkpoint): one clear line, non-zero exit.
        print(f"lungvlm {namespace.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
