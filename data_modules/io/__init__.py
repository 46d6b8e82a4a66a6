"""Readers for real CT data: DICOM series, LIDC-IDRI XML, LUNA16 MetaImage + CSV, NIfTI.

Every reader returns a :class:`CTVolume` (HU float32, (z, y, x), LPS geometry in mm) and raises
a :class:`DataError` subclass, carrying the offending ``.path``, on bad input.
"""

from data_modules.io.dicom_series import list_series, read_dicom_series, read_first_header
from data_modules.io.errors import (
    AnnotationError,
    ClusterError,
    CSVFormatError,
    DataError,
    DicomReadError,
    MetaImageError,
    MultipleSeriesError,
    NiftiError,
    NoDicomError,
    NotCTError,
    PointOutsideImageError,
    SliceGeometryError,
    UnsupportedTransferSyntaxError,
)
from data_modules.io.lidc_consensus import (
    MALIGNANCY_RULES,
    aggregate_ratings,
    binarize_malignancy,
    cluster_annotations,
    consensus_mask,
)
from data_modules.io.lidc_tree import LIDCTree, TreeProblem, find_lidc_series, scan_lidc_tree
from data_modules.io.lidc_xml import (
    CHARACTERISTIC_NAMES,
    ROI,
    LIDCReadMessage,
    NonNodule,
    ReaderNodule,
    parse_lidc_xml,
    rasterize_annotation,
    read_header_uids,
)
from data_modules.io.luna16 import (
    LUNA16_SUBSETS,
    LunaAnnotation,
    LunaCandidate,
    check_rows_inside,
    fold_of_subset_folder,
    read_annotations_csv,
    read_candidates_csv,
    read_metaimage,
    world_to_voxel_zyx,
)
from data_modules.io.nifti import read_nifti, write_nifti
from lungvlm.imaging.volume import CTVolume

__all__ = [
    "CHARACTERISTIC_NAMES",
    "LUNA16_SUBSETS",
    "MALIGNANCY_RULES",
    "ROI",
    "AnnotationError",
    "CSVFormatError",
    "CTVolume",
    "ClusterError",
    "DataError",
    "DicomReadError",
    "LIDCReadMessage",
    "LIDCTree",
    "LunaAnnotation",
    "LunaCandidate",
    "MetaImageError",
    "MultipleSeriesError",
    "NiftiError",
    "NoDicomError",
    "NonNodule",
    "NotCTError",
    "PointOutsideImageError",
    "ReaderNodule",
    "SliceGeometryError",
    "TreeProblem",
    "UnsupportedTransferSyntaxError",
    "aggregate_ratings",
    "binarize_malignancy",
    "check_rows_inside",
    "cluster_annotations",
    "consensus_mask",
    "find_lidc_series",
    "fold_of_subset_folder",
    "list_series",
    "parse_lidc_xml",
    "rasterize_annotation",
    "scan_lidc_tree",
    "read_annotations_csv",
    "read_candidates_csv",
    "read_dicom_series",
    "read_first_header",
    "read_header_uids",
    "read_metaimage",
    "read_nifti",
    "world_to_voxel_zyx",
    "write_nifti",
]
