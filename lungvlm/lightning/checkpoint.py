"""The one owner of checkpoints: writing, safe reading and rebuilding a model.

Every checkpoint LungVLM reads is untrusted input (a user hands us the file), so every read
uses ``torch.load(..., weights_only=True)``: only tensors and plain Python data (dict, list,
str, numbers) load; a file whose unpickling would build any other object (and could run code)
is refused with a clear error. To keep our own files loadable that way,
:meth:`LungVLMModule.on_save_checkpoint` turns the hyper-parameters into plain data
(:func:`plain_data`), and :func:`rebuild_model` only instantiates ``lungvlm.*`` classes named in
the file's configuration.

Two kinds of use:

- **Lightning checkpoints** written by ``lungvlm fit`` (``last.ckpt``, ``best.ckpt``): the
  ``state_dict``, the LightningCLI configuration in ``hyper_parameters`` and LungVLM's own
  metadata under :data:`CHECKPOINT_KEY` (normalisation, labels, tokenizer, calibration).
  :func:`read_checkpoint` reads one, :func:`rebuild_model` / :func:`load_model` rebuild the model,
  :func:`write_calibrated_checkpoint` writes the calibrated copy. The ``language`` stage's
  checkpoint is one of them; stage 3 takes its decoder and tokenizer through
  ``model.vl.language_init`` (:func:`lungvlm.lightning.language.load_language_decoder`).
- ``init_from`` (a previous stage): only the weights are copied (:func:`load_weights_non_strict`).
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lungvlm.labels import CONCEPT_NAMES, CONCEPT_SCALE_MAX, GROWTH_BINS_MONTHS, LUNGRADS_CATEGORIES

if TYPE_CHECKING:  # heavy imports only where used
    from lungvlm.lightning.module import LungVLMModule

log = logging.getLogger(__name__)

#: Key under which LungVLM stores its own metadata in a Lightning checkpoint.
CHECKPOINT_KEY = "lungvlm"
#: Version of the metadata layout below; bump on incompatible changes. 2: plain-data
#: hyper-parameters, readable with ``weights_only=True``.
CHECKPOINT_FORMAT_VERSION = 2
#: Key of the calibration (``lungvlm calibrate``) under :data:`CHECKPOINT_KEY`.
CALIBRATION_KEY = "calibration"
#: Module arguments a model needs at inference; training-only ones (optimizer, scheduler,
#: init_from) are dropped before rebuilding, so a file cannot make us build them.
_TRAINING_ONLY_ARGS: tuple[str, ...] = (
    "optimizer",
    "lr_scheduler",
    "init_from",
    "init_from_required",
)
#: Packages whose classes a checkpoint's configuration may name.
_ALLOWED_CLASS_PREFIXES: tuple[str, ...] = ("lungvlm.",)


@dataclass
class InitReport:
    """What :func:`load_weights_non_strict` did, key by key."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line with the counts, for logs."""
        return (
            f"loaded {len(self.loaded)} tensors, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, shape mismatch {len(self.shape_mismatch)}"
        )


def _plain_key(key: Any) -> Any:
    """A mapping key as plain data: numbers, strings, booleans and None are kept."""
    return key if key is None or isinstance(key, bool | int | float | str) else str(key)


def plain_data(value: Any) -> Any:
    """``value`` as plain data that ``torch.load(weights_only=True)`` reads back.

    Mappings (jsonargparse ``Namespace`` included) become dicts, tuples stay tuples, other
    sequences become lists, paths and enums become strings, dataclasses dicts; tensors and
    numbers are kept. Anything else becomes its ``repr`` (a configuration value we cannot store
    faithfully is at least readable).
    """
    if value is None or isinstance(value, bool | int | float | str | torch.Tensor):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Enum):
        return plain_data(value.value)
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_data(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping) or hasattr(value, "items") and callable(value.items):
        return {_plain_key(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(plain_data(v) for v in value)
    if isinstance(value, list | set | frozenset):
        return [plain_data(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return repr(value)


def refused_global(err: BaseException) -> str | None:
    """The global a weights-only load refused (``"io.open"``), or None for other errors."""
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    return match.group(1) if match else None


def _safe_load(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU with errors that name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = refused_global(err)
        if refused is None:  # not an unsafe object: a corrupt or truncated file
            raise ValueError(
                f"{what} {path} is not readable (corrupt or not a checkpoint)"
            ) from err
        raise ValueError(
            f"{what} {path} holds a Python object ({refused}) that a safe load refuses: LungVLM "
            "reads checkpoints with weights_only=True and never unpickles other objects, since "
            "they can run code"
        ) from err
    except Exception as err:  # torch raises many types for a corrupt file
        raise ValueError(f"{what} {path} is not readable ({type(err).__name__}: {err})") from err


def read_checkpoint(path: str | Path) -> dict:
    """Read a Lightning checkpoint on the CPU, safely (``weights_only=True``).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a readable checkpoint with a ``state_dict``, or holds
            objects a safe load refuses.
    """
    path = Path(path)
    checkpoint = _safe_load(path, "checkpoint")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"checkpoint {path} has no 'state_dict'; is it a Lightning checkpoint?")
    return checkpoint


def save_checkpoint(path: str | Path, checkpoint: dict) -> Path:
    """Write ``checkpoint`` atomically (temporary file in the same folder, then rename).

    Returns:
        ``path``. A crash leaves either the old file or the new one, never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def module_checkpoint(
    model: LungVLMModule,
    datamodule: Any = None,
    epoch: int = 0,
    global_step: int = 0,
    extra: dict | None = None,
) -> dict:
    """A checkpoint of ``model`` written without a Trainer (e.g. a federation's global model).

    It holds what a ``lungvlm fit`` checkpoint holds for inference and :func:`rebuild_model`:
    the ``state_dict``, the module's and data module's hyper-parameters as plain data, and
    LungVLM's metadata (:meth:`LungVLMModule.on_save_checkpoint`); no optimizer or loop state,
    so it starts a new fit (``init_from``) rather than resuming one.

    Args:
        model: the module (its ``normalization`` should be the data's).
        datamodule: the data module whose hyper-parameters to record, or None.
        epoch, global_step: counters to record (a federation: rounds, and local steps).
        extra: more plain-data entries (e.g. a federation's round and privacy spent).
    """
    import lightning as L

    checkpoint: dict[str, Any] = {
        "epoch": int(epoch),
        "global_step": int(global_step),
        "pytorch-lightning_version": L.__version__,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "hyper_parameters": dict(model.hparams),
    }
    if datamodule is not None and getattr(datamodule, "hparams", None) is not None:
        checkpoint["datamodule_hyper_parameters"] = dict(datamodule.hparams)
    model.on_save_checkpoint(checkpoint)
    checkpoint.update(plain_data(extra or {}))
    return checkpoint


def _check_class_paths(value: Any, path: Path, where: str) -> None:
    """Refuse a configuration that names a class outside :data:`_ALLOWED_CLASS_PREFIXES`."""
    if isinstance(value, dict):
        class_path = value.get("class_path")
        if class_path is not None and not (
            isinstance(class_path, str) and class_path.startswith(_ALLOWED_CLASS_PREFIXES)
        ):
            raise ValueError(
                f"checkpoint {path}: {where}.class_path={class_path!r} is not a LungVLM class; "
                "refusing to build it"
            )
        for key, item in value.items():
            _check_class_paths(item, path, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_class_paths(item, path, f"{where}[{i}]")


def _model_config(checkpoint: dict, path: Path) -> dict:
    """The checkpoint's module configuration, reduced to what inference builds, and checked."""
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict) or "encoder" not in hparams:
        raise ValueError(
            f"checkpoint {path} has no model configuration in its hyper-parameters (it was not "
            "written by `lungvlm fit`); build the module and load its state_dict instead"
        )
    config = {
        k: copy.deepcopy(v)
        for k, v in hparams.items()
        if not k.startswith("_") and k not in _TRAINING_ONLY_ARGS
    }
    for name in ("encoder", "seg_head", "recon_head", "seg_loss", "vl_heads", "candidate_head"):
        value = config.get(name)
        if value is not None and not isinstance(value, dict):
            raise ValueError(
                f"checkpoint {path}: model.{name}={value!r} is not a class_path configuration"
            )
    _check_class_paths(config, path, "model")
    return config


def rebuild_model(
    checkpoint: dict, path: str | Path, map_location: str | torch.device = "cpu"
) -> LungVLMModule:
    """Build the :class:`LungVLMModule` a checkpoint describes and load its weights (strictly).

    Args:
        checkpoint: the dict from :func:`read_checkpoint` (read once, by the caller).
        path: the file it came from (for error messages).
        map_location: device of the returned model.

    Returns:
        The model in eval mode, with the checkpoint's normalisation and tokenizer.

    Raises:
        ValueError: the configuration is missing, names a class outside ``lungvlm``, or cannot
            rebuild a model whose weights match the file.
    """
    from lightning.pytorch.cli import instantiate_module

    from lungvlm.lightning.module import LungVLMModule

    path = Path(path)
    config = _model_config(checkpoint, path)
    try:
        model = instantiate_module(LungVLMModule, config)
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except (TypeError, KeyError, RuntimeError, ValueError) as err:
        raise ValueError(f"checkpoint {path} cannot rebuild the model: {err}") from err
    model.on_load_checkpoint(checkpoint)
    return model.to(map_location).eval()


def checkpoint_stage(checkpoint: dict) -> str | None:
    """The stage ("pretrain", "segment", "language", "vision_language") a checkpoint trained."""
    meta = checkpoint.get(CHECKPOINT_KEY) or {}
    return meta.get("stage", (checkpoint.get("hyper_parameters") or {}).get("stage"))


def load_model(
    ckpt_path: str | Path, map_location: str | torch.device = "cpu", checkpoint: dict | None = None
) -> LungVLMModule:
    """Rebuild a model with a segmentation head from a ``lungvlm fit`` checkpoint.

    Args:
        ckpt_path: the checkpoint file.
        map_location: device of the returned model ("cpu", "cuda", "cuda:1", ...).
        checkpoint: the file's contents when the caller has read it already (no second read).

    Returns:
        The model in eval mode with the checkpoint's normalisation.

    Raises:
        ValueError: the file is missing or unreadable or refused by the safe load, it is a
            stage-1 ('pretrain') checkpoint or has no segmentation head, or its configuration
            cannot rebuild the model.
    """
    path = Path(ckpt_path)
    if checkpoint is None:
        try:
            checkpoint = read_checkpoint(path)
        except FileNotFoundError as err:
            raise ValueError(f"checkpoint {path} does not exist") from err
    if checkpoint_stage(checkpoint) == "pretrain":
        raise ValueError(
            f"checkpoint {path} is a stage 'pretrain' checkpoint without a segmentation head; "
            "use a 'segment' or 'vision_language' checkpoint"
        )
    if not any(k.startswith("seg_head.") for k in checkpoint["state_dict"]):
        raise ValueError(f"checkpoint {path} has no segmentation head weights (seg_head.*)")
    return rebuild_model(checkpoint, path, map_location)


def load_weights_non_strict(
    module: nn.Module, state_dict: dict[str, torch.Tensor], prefixes: tuple[str, ...] = ("",)
) -> InitReport:
    """Copy every tensor of ``state_dict`` whose name and shape match into ``module``.

    Args:
        module: the model receiving the weights.
        state_dict: source weights (e.g. a previous stage's ``checkpoint["state_dict"]``).
        prefixes: only keys starting with one of these are considered ("" = all).

    Returns:
        An :class:`InitReport` listing loaded, missing, unexpected and shape-mismatched keys.
    """
    own = module.state_dict()
    report = InitReport()
    usable: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefixes):
            continue
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.shape_mismatch.append(key)
        else:
            usable[key] = value
            report.loaded.append(key)
    report.missing = [key for key in own if key not in usable]
    module.load_state_dict(usable, strict=False)
    return report


def inference_metadata(stage: str, normalization: dict[str, float], tasks: list[str]) -> dict:
    """Everything inference needs besides the weights, stored in every checkpoint.

    Args:
        stage: "pretrain", "segment" or "vision_language".
        normalization: HU normalisation parameters used by the data (``hu_min``, ``hu_max``).
        tasks: the tasks the model was trained on.

    Returns:
        A JSON-serialisable dict.
    """
    return {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "stage": stage,
        "normalization": dict(normalization),
        "tasks": list(tasks),
        "labels": {
            "lungrads_categories": list(LUNGRADS_CATEGORIES),
            "concept_names": list(CONCEPT_NAMES),
            "concept_scale_max": dict(CONCEPT_SCALE_MAX),
            "growth_bins_months": list(GROWTH_BINS_MONTHS),
        },
    }


# ---------------------------------------------------------------- calibration
def calibrated_path(ckpt_path: str | Path) -> Path:
    """``<folder>/<stem>_calibrated.ckpt`` next to ``ckpt_path``; a file already named
    ``*_calibrated.ckpt`` is its own calibrated path (calibrations merge into it)."""
    path = Path(ckpt_path)
    if path.stem.endswith("_calibrated"):
        return path
    return path.with_name(f"{path.stem}_calibrated.ckpt")


def weights_digest(state_dict: dict) -> str:
    """SHA-1 (hex) of a state dict's names, dtypes, shapes and values: equal for the same
    weights, whatever else (calibration, optimizer state) the checkpoint file holds."""
    import hashlib

    digest = hashlib.sha1()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _same_weights(a: dict, b: dict) -> bool:
    """Whether two state dicts hold the same tensors under the same names."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def write_calibrated_checkpoint(ckpt_path: str | Path, calibration: Any) -> Path:
    """Copy the checkpoint with ``calibration`` under ``["lungvlm"]["calibration"]``, atomically.

    Calibrations merge: the sentence calibration (``lungvlm calibrate``) is top-level keys of
    that dict and the detection calibration (``lungvlm calibrate --detection``) its
    ``"detection"`` key. The keys given replace those of the calibration already in
    ``ckpt_path`` and, when the calibrated file exists and holds the same weights, in that
    file; the other keys are kept. So both commands, run in either order on one checkpoint,
    leave both calibrations in one file, and a calibration of other weights is never kept.

    Args:
        ckpt_path: the checkpoint to copy.
        calibration: a dict, or an object with ``to_dict()`` (``CalibrationResult``).

    Returns:
        The written file, :func:`calibrated_path` of ``ckpt_path``.
    """
    if hasattr(calibration, "to_dict"):
        calibration = calibration.to_dict()
    checkpoint = read_checkpoint(ckpt_path)
    merged = dict(read_calibration(checkpoint) or {})
    target = calibrated_path(ckpt_path)
    if target.is_file():
        existing = read_checkpoint(target)
        if _same_weights(existing["state_dict"], checkpoint["state_dict"]):
            merged.update(read_calibration(existing) or {})
    merged.update(plain_data(calibration))
    checkpoint.setdefault(CHECKPOINT_KEY, {})[CALIBRATION_KEY] = merged
    return save_checkpoint(target, checkpoint)


def read_calibration(checkpoint: dict) -> dict | None:
    """The stored calibration of a checkpoint dict, or None."""
    return (checkpoint.get(CHECKPOINT_KEY) or {}).get(CALIBRATION_KEY)
