"""The Dataset of nodule-centred crops read from a preprocessed cache (LIDC-IDRI and LUNA16).

Crops are cut with the shared sampler (:mod:`data_modules.sampling`) from memory-mapped
``image.npy`` / ``mask.npy``, so one sample reads only its own voxels, and augmented with the
phantom DataModule's torchio pipeline (:mod:`data_modules.transforms`). Entries are every
nodule of every case (positives) plus lung-centred negatives so that positives make up
``positive_fraction`` of the entries. A label a data set lacks is present-but-masked:
Lung-RADS and growth are never known here, malignancy and concepts only for LIDC nodules.

Concept targets are the readers' **median** rating mapped to [0, 1] with
:func:`lungvlm.labels.concept_to_unit` (project choice: the ratings are ordinal,
``reference/lidc-idri.md``). Malignancy is re-derived from the stored reader ratings with
``malignancy_rule`` (:func:`data_modules.io.binarize_malignancy`), so the rule is a training
setting and not frozen in the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import Dataset

from data_modules.cache import list_cached_cases, load_case_arrays, load_case_json, read_cache_spec
from data_modules.io import MALIGNANCY_RULES, binarize_malignancy
from data_modules.loaders import LungBatchLoadersMixin
from data_modules.sampling import context_crop, crop_around
from data_modules.transforms import augment, train_augmentation
from lungvlm.labels import CONCEPT_NAMES, concept_to_unit
from lungvlm.types import NoduleSample

LIDC_RATING_NAMES = {"internal_structure": "internalStructure"}
NEGATIVE_TRIES = 30


def patient_split(
    patient_ids: Sequence[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[int]]:
    """Split case indices by patient: a patient's cases all land in one split.

    Patients (sorted, then shuffled with ``seed``) go to test first, then val, then train; a
    non-zero fraction gets at least one patient while two or more are left for the others.

    Returns:
        ``{"train", "val", "test"}`` -> sorted case indices.

    Raises:
        ValueError: fractions outside [0, 1) or summing to >= 1.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}"
        )
    patients = sorted(set(patient_ids))
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]

    def count(fraction: float, left: int) -> int:
        n = int(round(fraction * len(patients)))
        return min(max(n, 1 if fraction > 0 else 0), max(left - 1, 0))

    n_test = count(test_fraction, len(order))
    n_val = count(val_fraction, len(order) - n_test)
    split_of = {p: "test" for p in order[:n_test]}
    split_of.update({p: "val" for p in order[n_test : n_test + n_val]})
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for index, patient in enumerate(patient_ids):
        out[split_of.get(patient, "train")].append(index)
    return out


def _context_crop_window(
    volume: NDArray, center: NDArray[np.float64], size: int, scale: float
) -> NDArray[np.float32]:
    """:func:`context_crop` on a window around ``center`` only (keeps memory-mapped reads small)."""
    half = int(np.ceil(size / 2 * scale)) + 2
    # crop_around puts the voxel nearest ``center`` at index ``half`` of the window, and
    # context_crop samples around the rounded centre, so the result equals context_crop on the
    # whole volume (up to interpolation at the volume's own edge).
    window = crop_around(volume, center, 2 * half + 1, pad_value=0.0).astype(np.float32)
    return context_crop(window, np.full(3, float(half)), size, scale, pad_value=0.0)


class CachedNoduleDataset(Dataset):
    """Nodule-centred crops of cached cases (see the module docstring).

    Args:
        case_dirs: cache case folders (``dst/<case_id>``).
        crop_size_vox: edge of the cubic fine crop (voxels at the cache spacing).
        context_scale: field-of-view factor of the context crop (same grid size).
        positive_fraction: fraction of entries centred on a nodule.
        label_fraction: fraction of samples whose labels are present (the rest are masked).
        jitter_mm: maximum offset of a positive crop centre from its nodule, per axis (mm).
        augment: apply the torchio training augmentation; also redraws jitter and negative
            locations every epoch.
        seed: seed of the sampling and augmentation.
        malignancy_rule: rule turning reader ratings into a binary label.
    """

    def __init__(
        self,
        case_dirs: Sequence[str | PathLike[str]],
        crop_size_vox: int = 32,
        context_scale: float = 2.0,
        positive_fraction: float = 0.8,
        label_fraction: float = 1.0,
        jitter_mm: float = 3.0,
        augment: bool = False,
        seed: int = 0,
        malignancy_rule: str = "mean_gt3",
    ) -> None:
        if not 0.0 <= positive_fraction <= 1.0 or not 0.0 <= label_fraction <= 1.0:
            raise ValueError(
                f"positive_fraction={positive_fraction} and label_fraction={label_fraction} "
                "must be in [0, 1]"
            )
        self.case_dirs = [Path(d) for d in case_dirs]
        self.cases = [load_case_json(d) for d in self.case_dirs]
        self.crop_size_vox, self.context_scale = int(crop_size_vox), float(context_scale)
        self.label_fraction, self.jitter_mm = float(label_fraction), float(jitter_mm)
        self.seed, self.malignancy_rule, self.epoch = int(seed), malignancy_rule, 0
        self.transform = train_augmentation() if augment else None
        positives: list[tuple[int, int | None]] = [
            (c, n) for c, case in enumerate(self.cases) for n in range(len(case["nodules"]))
        ]
        if positive_fraction == 0:
            positives = []
        if positives:
            n_neg = int(round(len(positives) * (1 - positive_fraction) / positive_fraction))
        else:
            n_neg = len(self.cases)  # nothing to centre on: one lung-centred crop per case
        self.entries = positives + [(i % len(self.cases), None) for i in range(n_neg)]

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Redraw augmentation (and, when augmenting, jitter and negatives) for ``epoch``."""
        self.epoch = int(epoch)

    def _centre(self, case: dict[str, Any], nodule: int | None, arrays, rng) -> NDArray:
        spacing = np.asarray(case["spacing_mm"], dtype=np.float64)
        if nodule is not None:
            centre = np.asarray(case["nodules"][nodule]["centroid_voxel_zyx"], dtype=np.float64)
            return centre + rng.uniform(-self.jitter_mm, self.jitter_mm, 3) / spacing
        shape = np.asarray(arrays["lung"].shape)
        centre = (shape - 1) / 2.0
        for _ in range(NEGATIVE_TRIES):
            point = rng.integers(0, shape)
            if (
                arrays["lung"][tuple(point)]
                and not crop_around(arrays["mask"], point, self.crop_size_vox).any()
            ):
                return point.astype(np.float64)
            centre = point.astype(np.float64)
        return centre  # no nodule-free lung point found: the crop's mask says what it holds

    def _labels(self, case: dict[str, Any], nodule: int | None, labelled: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"malignancy": None, "concepts": np.zeros(len(CONCEPT_NAMES))}
        out["concepts_present"] = np.zeros(len(CONCEPT_NAMES), dtype=bool)
        if nodule is None or not labelled:
            return out
        record = case["nodules"][nodule]
        ratings = (record.get("malignancy") or {}).get("ratings")
        if ratings:
            out["malignancy"] = binarize_malignancy(ratings, self.malignancy_rule)
        medians = {k: v["median"] for k, v in (record.get("ratings") or {}).items()}
        for i, name in enumerate(CONCEPT_NAMES):
            value = medians.get(LIDC_RATING_NAMES.get(name, name))
            if value is not None:
                out["concepts"][i] = concept_to_unit(name, value)
                out["concepts_present"][i] = True
        return out

    def __getitem__(self, index: int) -> NoduleSample:
        if not 0 <= index < len(self.entries):
            raise IndexError(f"index={index} outside 0..{len(self.entries) - 1}")
        case_index, nodule = self.entries[index]
        case = self.cases[case_index]
        arrays = load_case_arrays(self.case_dirs[case_index], mmap=True)
        epoch = self.epoch if self.transform is not None else 0
        rng = np.random.default_rng([self.seed, index, epoch])
        centre = self._centre(case, nodule, arrays, rng)
        size = self.crop_size_vox
        image = torch.from_numpy(crop_around(arrays["image"], centre, size).astype(np.float32))[
            None
        ]
        context = torch.from_numpy(
            _context_crop_window(arrays["image"], centre, size, self.context_scale)
        )[None]
        mask = torch.from_numpy(crop_around(arrays["mask"], centre, size) > 0).float()[None]
        spacing = tuple(float(s) for s in case["spacing_mm"])
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(rng.integers(2**31)))
                context_spacing = tuple(s * self.context_scale for s in spacing)
                image, context, mask = augment(
                    self.transform, image, context, mask, spacing, context_spacing
                )
        labelled = bool(
            np.random.default_rng([self.seed, index, 102]).random() < self.label_fraction
        )
        labels = self._labels(case, nodule, labelled)
        malignancy = labels["malignancy"]
        world = np.asarray(case["origin_lps_mm"]) + np.reshape(case["direction"], (3, 3)) @ (
            np.asarray(spacing[::-1]) * np.rint(centre)[::-1]
        )
        return NoduleSample(
            image=image.float(),
            context=context.float(),
            seg_mask=mask.float(),
            seg_present=labelled and case.get("mask_source", "none") != "none",
            malignancy=float(malignancy or 0),
            malignancy_present=malignancy is not None,
            lungrads=0,
            lungrads_present=False,
            growth_time_months=0.0,
            growth_event=0.0,
            growth_present=False,
            concepts=torch.from_numpy(labels["concepts"]).float(),
            concepts_present=torch.from_numpy(labels["concepts_present"]),
            report_text="",
            report_spans=[],
            impression_text="",
            spacing_mm=torch.tensor(spacing, dtype=torch.float32),
            patient_id=str(case["patient_id"]),
            meta={
                "case_id": case["case_id"],
                "series_uid": case["series_uid"],
                "format": case["format"],
                "fold": case.get("fold"),
                "positive": nodule is not None,
                "nodule_label": None if nodule is None else case["nodules"][nodule]["label"],
                "world_centre_lps_mm": world.tolist(),
            },
        )


MISSING_ROOT_HINT = (
    "Preprocess the data first, e.g. `lungvlm preprocess {fmt} --src <raw data> --dst {root}`; "
    'see README.md, section "Real data".'
)


class CachedDataModuleBase(LungBatchLoadersMixin, L.LightningDataModule):
    """Loaders, epochs and normalisation shared by the LIDC-IDRI and LUNA16 DataModules.

    Subclasses set ``data_format``, save their ``__init__`` arguments as hyper-parameters and
    may replace :meth:`split_cases` (default: :func:`patient_split` with the ``val_fraction``
    and ``test_fraction`` hyper-parameters).
    """

    data_format = ""

    def _dataset_kwargs(self) -> dict[str, Any]:
        hp = self.hparams
        return {
            "crop_size_vox": hp.crop_size_vox,
            "context_scale": hp.context_scale,
            "positive_fraction": hp.positive_fraction,
            "jitter_mm": hp.jitter_mm,
            "seed": hp.seed,
            "malignancy_rule": hp.malignancy_rule,
        }

    def _check_args(self) -> None:
        hp = self.hparams
        if hp.crop_size_vox < 8:
            raise ValueError(f"crop_size_vox={hp.crop_size_vox} must be >= 8 voxels")
        if hp.context_scale <= 0:
            raise ValueError(f"context_scale={hp.context_scale} must be > 0")
        for name in ("positive_fraction", "label_fraction"):
            if not 0.0 <= hp[name] <= 1.0:
                raise ValueError(f"{name}={hp[name]} must be in [0, 1]")
        if hp.batch_size < 1:
            raise ValueError(f"batch_size={hp.batch_size} must be >= 1")
        if hp.persistent_workers and hp.num_workers == 0:
            raise ValueError("persistent_workers=True needs num_workers > 0")
        if hp.malignancy_rule not in MALIGNANCY_RULES:
            raise ValueError(
                f"malignancy_rule={hp.malignancy_rule!r} must be one of {MALIGNANCY_RULES}"
            )

    def _case_dirs(self) -> list[Path]:
        root = Path(self.hparams.data_root)
        hint = MISSING_ROOT_HINT.format(fmt=self.data_format, root=root)
        if not root.is_dir():
            raise ValueError(f"data_root={str(root)!r} does not exist. {hint}")
        if not (root / "cache.json").is_file():
            raise ValueError(f"data_root={str(root)!r} is not a preprocessed cache. {hint}")
        dirs = list_cached_cases(root)
        formats = {load_case_json(d)["format"] for d in dirs}
        if not dirs or formats != {self.data_format}:
            raise ValueError(
                f"data_root={str(root)!r} holds cases of format(s) {sorted(formats)}; expected "
                f"only {self.data_format!r} cases. {hint}"
            )
        return dirs

    @property
    def normalization(self) -> dict[str, float]:
        """The cache's HU normalisation ``{"hu_min", "hu_max"}`` (saved with checkpoints)."""
        self._case_dirs()
        spec = read_cache_spec(self.hparams.data_root)
        return {"hu_min": float(spec["hu_min"]), "hu_max": float(spec["hu_max"])}

    def prepare_data(self) -> None:
        """Check that the cache exists (no download; preprocessing is a separate command)."""
        self._case_dirs()

    def split_cases(self, cases: list[dict[str, Any]]) -> dict[str, list[int]]:
        """Indices of ``cases`` per split: seeded patient-level ``val/test_fraction`` split."""
        hp = self.hparams
        patients = [str(c["patient_id"]) for c in cases]
        return patient_split(patients, hp.val_fraction, hp.test_fraction, hp.seed)

    def setup(self, stage: str | None = None) -> None:
        """Read the case list and build the patient-level splits."""
        dirs = self._case_dirs()
        splits = self.split_cases([load_case_json(d) for d in dirs])
        self.split_case_ids = {s: [dirs[i].name for i in idx] for s, idx in splits.items()}
        hp = self.hparams
        self.datasets = {
            split: CachedNoduleDataset(
                [dirs[i] for i in idx],
                label_fraction=hp.label_fraction if split == "train" else 1.0,
                augment=hp.augment and split == "train",
                **self._dataset_kwargs(),
            )
            for split, idx in splits.items()
        }

    def set_epoch(self, epoch: int) -> None:
        """Advance the training sampling/augmentation to ``epoch``."""
        if "train" in getattr(self, "datasets", {}):
            self.datasets["train"].set_epoch(epoch)
