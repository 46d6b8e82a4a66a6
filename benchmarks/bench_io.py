"""Time ``read_dicom_series`` against SimpleITK's GDCM series reader on one synthetic series.

Run: ``PYTHONPATH=. python -m benchmarks.bench_io [--slices 100] [--size 512] [--repeats 3]``.
Writes an int16 axial CT series to a temporary folder, reads it with both readers (best of
``repeats`` wall-clock times, in seconds) and checks the two volumes are equal.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from data_modules.io import read_dicom_series


def write_series(folder: Path, slices: int, size: int, seed: int = 0) -> None:
    """Write ``slices`` axial int16 CT slices of size x size pixels (0.7 mm, 1.25 mm steps)."""
    rng = np.random.default_rng(seed)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    for k in rng.permutation(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", series, study
        ds.FrameOfReferenceUID = frame
        ds.ImagePositionPatient = [-180.0, -180.0, -300.0 + 1.25 * int(k)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = rng.integers(0, 3000, (size, size), dtype=np.int16).tobytes()
        ds.save_as(folder / f"{generate_uid()}.dcm", enforce_file_format=True)


def _best_time(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark and print, then return, the best times in seconds."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_series(folder, args.slices, args.size)

        def read_sitk() -> sitk.Image:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
            return reader.Execute()

        t_ours, vol = _best_time(lambda: read_dicom_series(folder), args.repeats)
        t_sitk, image = _best_time(read_sitk, args.repeats)
        if not np.array_equal(vol.array_hu, sitk.GetArrayFromImage(image)):
            raise RuntimeError("read_dicom_series and SimpleITK disagree on the voxel values")
    result = {"read_dicom_series_s": t_ours, "simpleitk_s": t_sitk}
    shape = f"{args.slices}x{args.size}x{args.size}"
    print(f"series {shape}: read_dicom_series {t_ours:.3f} s, SimpleITK {t_sitk:.3f} s")
    return result


if __name__ == "__main__":
    main()
