"""Read the numbers of a nodule description: volume, image, solid component, prior and current size.

Each kind is read and then blanked out of the text, in the order volume, image number, solid
component, prior size, so the current mean diameter is the first size left over ("part-solid
nodule measuring 12 mm with a 5 mm solid component, previously 10 mm" -> 12 mm).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lungvlm.text import patterns as pt
from lungvlm.text.schema import round_half_up


@dataclass(frozen=True)
class SizeReading:
    """Numbers stated in a nodule description (None where not stated).

    Attributes:
        mean_diameter_mm: current mean diameter; "L x S mm" gives (L + S) / 2.
        solid_component_mm: solid component mean diameter.
        prior_mean_diameter_mm: mean diameter on the prior exam.
        volume_mm3: volume, whole mm³ (cm³, cc and mL are converted).
        slice_index: image number.
        remaining_text: the text with every number read above blanked out (same length).
    """

    mean_diameter_mm: float | None
    solid_component_mm: float | None
    prior_mean_diameter_mm: float | None
    volume_mm3: float | None
    slice_index: int | None
    remaining_text: str


def read_sizes(text: str) -> SizeReading:
    """Read the sizes, volume and image number of one nodule description."""
    volume_mm3 = None
    for match in pt.VOLUME_RE.finditer(text):
        scale = 1000.0 if match.group("cm3") else 1.0
        volume_mm3 = round_half_up(float(match.group("v")) * scale, 0)
        break
    work = _mask(text, pt.VOLUME_RE)
    slice_match = pt.SLICE_RE.search(work)
    slice_index = int(slice_match.group("i")) if slice_match else None
    work = _mask(work, pt.SLICE_RE)
    solid_mm = prior_mm = None
    for regex in pt.SOLID_COMPONENT_RES:
        value, work = _take_size(regex, work)
        solid_mm = solid_mm if solid_mm is not None else value
    for regex in pt.PRIOR_SIZE_RES:
        value, work = _take_size(regex, work)
        prior_mm = prior_mm if prior_mm is not None else value
    size_mm, _ = _take_size(pt.SIZE_RE, work)
    return SizeReading(size_mm, solid_mm, prior_mm, volume_mm3, slice_index, work)


def _mask(text: str, regex: re.Pattern[str]) -> str:
    """Blank out every match (same length, so offsets stay valid)."""
    return regex.sub(lambda m: " " * len(m.group(0)), text)


def _take_size(regex: re.Pattern[str], text: str) -> tuple[float | None, str]:
    """The first size (mm) matched by ``regex``, and ``text`` with every size match blanked.

    Matches without a unit ("prior exam 3 months") are not sizes and stay in the text.
    """
    first: float | None = None
    parts: list[str] = []
    last_end = 0
    for match in regex.finditer(text):
        value = _size_mm(match)
        if value is None:
            continue
        first = value if first is None else first
        parts += [text[last_end : match.start()], " " * (match.end() - match.start())]
        last_end = match.end()
    return first, "".join(parts) + text[last_end:]


def _size_mm(match: re.Match[str]) -> float | None:
    """Mean diameter in mm of a size match (first two dimensions), None when it has no unit.

    A dimension without its own unit takes the last unit given ("8 x 6 mm").
    """
    numbers = [match.group("s" + k) for k in "abc"]
    units = [match.group("su" + k) for k in "abc"]
    count = sum(n is not None for n in numbers)
    last_unit = next((u for u in reversed(units[:count]) if u), None)
    if last_unit is None:
        return None
    values = []
    for number, unit in zip(numbers[:2], units[:2], strict=True):
        if number is None:
            break
        scale = 10.0 if (unit or last_unit).lower().startswith("c") else 1.0
        values.append(float(number) * scale)
    return round_half_up(sum(values) / len(values), 1)
