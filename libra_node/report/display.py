"""How DICOM values read for people: names, dates and times.

Both the PDF rendition and ``libra-node show`` print header values; they
format them here so that the two agree.
"""

from __future__ import annotations

from pydicom.valuerep import DA, DT, TM, PersonName


def format_person_name(value: object) -> str:
    """'Doe^John' as 'Doe, John'; every component group (alphabetic,
    ideographic, phonetic) is shown, separated by ' / '."""
    if value is None or str(value) == "":
        return ""
    name = value if isinstance(value, PersonName) else PersonName(str(value))
    groups = [name.alphabetic, name.ideographic, name.phonetic]
    return " / ".join(_format_group(group) for group in groups if group)


def _format_group(group: str) -> str:
    family, _, rest = group.partition("^")
    # Given, middle, prefix and suffix names, in the stored order.
    others = " ".join(part for part in rest.split("^") if part)
    return f"{family}, {others}" if family and others else family or others


def format_date(value: object) -> str:
    """A DICOM date (DA) as YYYY-MM-DD; text that is no valid date is kept."""
    text = str(value or "").strip()
    if not text:
        return ""
    try:
        return DA(text).isoformat()
    except ValueError:
        return text


def format_time(value: object) -> str:
    """A DICOM time (TM) as HH:MM:SS; text that is no valid time is kept."""
    text = str(value or "").strip()
    if not text:
        return ""
    try:
        return TM(text).strftime("%H:%M:%S")
    except ValueError:
        return text


def format_datetime(value: object) -> str:
    """A DICOM date-time (DT) as YYYY-MM-DD HH:MM:SS."""
    text = str(value or "").strip()
    if not text:
        return ""
    try:
        return DT(text).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return text
