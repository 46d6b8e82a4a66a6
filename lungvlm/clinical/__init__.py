"""Pure clinical rules: HU windowing, attenuation and subsolid extent from HU, Lung-RADS v2022, nodule measurement, growth/VDT, Brock
and emphysema. No I/O and no module state; each function cites its guideline in its docstring.
"""

from lungvlm.clinical.attenuation import (
    AttenuationMeasurement,
    HUMeasurement,
    classify_attenuation,
    measure_hu,
    subsolid_extent,
)
from lungvlm.clinical.brock import brock_logit, malignancy_probability
from lungvlm.clinical.emphysema import (
    EMPHYSEMA_LAA_THRESHOLD_HU,
    emphysema_severity,
    laa950_percent,
)
from lungvlm.clinical.growth import (
    growth_status,
    growth_status_volumetric,
    is_lungrads_growth,
    volume_after_days,
    volume_doubling_time_days,
    volume_doubling_time_from_diameters_days,
)
from lungvlm.clinical.hu import LUNG_WINDOW, denormalize_hu, normalize_hu, window_hu
from lungvlm.clinical.lungrads import (
    MANAGEMENT,
    LungRADSResult,
    categorize,
    categorize_exam,
    management_for,
    round_diameter_mm,
)
from lungvlm.clinical.measure import (
    NoduleMeasurement,
    equivalent_sphere_diameter_mm,
    measure_nodule,
    solid_component_diameter_mm,
)

__all__ = [
    "AttenuationMeasurement",
    "HUMeasurement",
    "classify_attenuation",
    "growth_status_volumetric",
    "measure_hu",
    "subsolid_extent",
    "EMPHYSEMA_LAA_THRESHOLD_HU",
    "LUNG_WINDOW",
    "MANAGEMENT",
    "LungRADSResult",
    "NoduleMeasurement",
    "brock_logit",
    "categorize",
    "categorize_exam",
    "denormalize_hu",
    "emphysema_severity",
    "equivalent_sphere_diameter_mm",
    "growth_status",
    "is_lungrads_growth",
    "laa950_percent",
    "malignancy_probability",
    "management_for",
    "measure_nodule",
    "normalize_hu",
    "round_diameter_mm",
    "solid_component_diameter_mm",
    "volume_after_days",
    "volume_doubling_time_days",
    "volume_doubling_time_from_diameters_days",
    "window_hu",
]
