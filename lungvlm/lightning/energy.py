"""Energy and CO2e of every ``lungvlm fit``: a Lightning callback around codecarbon.

:class:`EnergyMeter` starts codecarbon's ``OfflineEmissionsTracker`` (no network: the carbon
intensity comes from the country table shipped with codecarbon, ``country_iso_code``) when
fitting starts and stops it when fitting ends or fails. codecarbon reads the hardware's energy
counters where it can (Intel RAPL on Linux, NVML on NVIDIA GPUs) and otherwise *estimates* the
CPU power from its load and the CPU model's TDP; the ``method`` field of the record says which.
Only the global-zero process measures (codecarbon measures the whole machine).

Each fit (or resumed part of one) appends a segment to ``RUN_DIR/energy.json``, written
atomically, whose ``energy_kwh`` / ``co2e_kg`` are the totals over the segments; the same totals
are logged as ``energy/kwh`` and ``energy/co2e_kg`` to the run's loggers (TensorBoard, CSV).
``lungvlm audit --runs RUN_DIR ...`` reports them per stage.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L

from lungvlm.export.writer import write_text_atomic

log = logging.getLogger(__name__)

ENERGY_FILE = "energy.json"


class EnergyMeter(L.Callback):
    """Measure the energy (kWh) and CO2e (kg) of fitting (module docstring).

    Args:
        enabled: measure at all (False: the callback does nothing).
        country_iso_code: three-letter ISO code of the grid whose carbon intensity applies.
        measure_power_secs: seconds between codecarbon's power readings.
    """

    def __init__(
        self, enabled: bool = True, country_iso_code: str = "USA", measure_power_secs: float = 15.0
    ) -> None:
        super().__init__()
        if measure_power_secs <= 0:
            raise ValueError(f"measure_power_secs={measure_power_secs!r} must be > 0")
        self.enabled = enabled
        self.country_iso_code = country_iso_code
        self.measure_power_secs = measure_power_secs
        self._tracker: Any = None
        self._start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the tracker (global zero only)."""
        if not self.enabled or not trainer.is_global_zero:
            return
        try:
            from codecarbon import OfflineEmissionsTracker
        except ImportError:  # a dependency of the project; only a broken install lacks it
            log.warning("codecarbon is not importable: this run's energy is not measured")
            return
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        self._tracker = OfflineEmissionsTracker(
            country_iso_code=self.country_iso_code,
            measure_power_secs=self.measure_power_secs,
            save_to_file=False,
            log_level="error",
            project_name="lungvlm",
        )
        self._tracker.start()
        self._start = time.time()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Stop the tracker and record the segment."""
        self._finish(trainer, "completed")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Record what was spent before the failure too."""
        self._finish(trainer, f"failed: {type(exception).__name__}")

    def _method(self, tracker, data) -> str:
        """What measured: codecarbon version, grid, CPU power source and hardware models."""
        import codecarbon

        parts = [f"codecarbon {codecarbon.__version__} offline, {self.country_iso_code} grid"]
        cpu = next(
            (h for h in getattr(tracker, "_hardware", []) if type(h).__name__ == "CPU"), None
        )
        if getattr(cpu, "_mode", None):
            parts.append(f"CPU power from {cpu._mode}")
        for field in ("cpu_model", "gpu_model"):
            value = getattr(data, field, None)
            if value:
                parts.append(f"{field.split('_')[0].upper()} {value}")
        return "; ".join(parts)

    def _finish(self, trainer: L.Trainer, status: str) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is None:
            return
        try:
            emissions = tracker.stop()
            data = tracker.final_emissions_data
        except Exception as err:  # measuring must never break training
            log.warning("codecarbon failed to stop (%s): energy not recorded", err)
            return
        segment = {
            "status": status,
            "started_unix_s": self._start,
            "duration_s": float(getattr(data, "duration", time.time() - self._start)),
            "energy_kwh": float(getattr(data, "energy_consumed", 0.0) or 0.0),
            "cpu_kwh": float(getattr(data, "cpu_energy", 0.0) or 0.0),
            "gpu_kwh": float(getattr(data, "gpu_energy", 0.0) or 0.0),
            "ram_kwh": float(getattr(data, "ram_energy", 0.0) or 0.0),
            "co2e_kg": float(emissions or 0.0),
            "global_step": int(trainer.global_step),
        }
        path = Path(trainer.default_root_dir) / ENERGY_FILE
        record = read_energy(path)
        if record is None:
            if path.exists():
                log.warning("%s is unreadable: it is replaced and its earlier segments are lost",
                            path)  # fmt: skip
            record = {"segments": []}
        record["segments"].append(segment)
        record["energy_kwh"] = sum(s["energy_kwh"] for s in record["segments"])
        record["co2e_kg"] = sum(s["co2e_kg"] for s in record["segments"])
        record["duration_s"] = sum(s["duration_s"] for s in record["segments"])
        record["method"] = self._method(tracker, data)
        write_text_atomic(path, json.dumps(record, indent=2))
        step = max(int(trainer.global_step) - 1, 0)  # the last step that logged metrics
        for logger in trainer.loggers:
            logger.log_metrics(
                {"energy/kwh": record["energy_kwh"], "energy/co2e_kg": record["co2e_kg"]},
                step=step,
            )
            logger.save()
        log.info("energy: %.6f kWh, %.6f kg CO2e (%s)", record["energy_kwh"],
                 record["co2e_kg"], record["method"])  # fmt: skip


def read_energy(path: str | Path) -> dict | None:
    """The record of an ``energy.json`` (None when missing or unreadable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("segments"), list) else None
