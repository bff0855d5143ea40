"""Any Structured Report as readable text, for ``libra-node show``.

Works on any SR whose root is a CONTAINER (TID 2000 reports and others),
not only the node's own: it prints the document header (patient, study,
status flags, who or what wrote it) and then the content tree, one content
item a line, indented by depth. Long or multi-line text values follow on
their own indented lines, exactly as stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from libra_node.report.display import (
    format_date,
    format_datetime,
    format_person_name,
    format_time,
)

_INDENT = "  "
_INLINE_TEXT_MAX = 60
# Observer context items (TID 1002, 1003, 1004) that say who wrote the report.
_OBSERVER_CONCEPTS = {
    "121008": "Person",  # Person Observer Name
    "121013": "Device",  # Device Observer Name
    "121015": "Device model",  # Device Observer Model Name
    "121014": "Device manufacturer",  # Device Observer Manufacturer
}


class NotAStructuredReportError(ValueError):
    """The file cannot be shown as an SR; the message says why."""


def read_sr(path: str | Path) -> Dataset:
    """Read a file and make sure it is an SR document with a content tree."""
    try:
        dataset = pydicom.dcmread(path)
    except InvalidDicomError:
        raise NotAStructuredReportError(f"{path} is not a DICOM file") from None
    except OSError as exc:
        raise NotAStructuredReportError(f"cannot read {path}: {exc.strerror or exc}") from None
    if dataset.get("ValueType") != "CONTAINER" or "ContentSequence" not in dataset:
        kind = _sop_class_name(dataset) or "an object without SOP class"
        raise NotAStructuredReportError(
            f"{path} is not a Structured Report with a content tree (it is {kind})"
        )
    return dataset


def _sop_class_name(dataset: Dataset) -> str:
    uid = dataset.get("SOPClassUID")
    return UID(str(uid)).name if uid else ""


def _concept_name(item: Dataset) -> str:
    names = item.get("ConceptNameCodeSequence")
    return str(names[0].CodeMeaning) if names else ""


def _code_meaning(item: Dataset, keyword: str) -> str:
    codes = item.get(keyword)
    return str(codes[0].CodeMeaning) if codes else ""


def _references(item: Dataset) -> str:
    """Referenced instances of an IMAGE, COMPOSITE or WAVEFORM item."""
    parts = []
    for reference in item.get("ReferencedSOPSequence", []):
        sop_class = UID(str(reference.get("ReferencedSOPClassUID", ""))).name
        text = f"{sop_class} {reference.get('ReferencedSOPInstanceUID', '')}".strip()
        frames = reference.get("ReferencedFrameNumber")
        if frames is not None:
            text += f" frames {frames}"
        parts.append(text)
    return "; ".join(parts)


def _numeric(item: Dataset) -> str:
    measured = item.get("MeasuredValueSequence")
    if not measured:
        return "(no value)"
    units = measured[0].get("MeasurementUnitsCodeSequence")
    unit = ""
    if units:
        # UCUM code values ("mm", "cm2") read better than their meanings.
        is_ucum = units[0].get("CodingSchemeDesignator") == "UCUM"
        unit = str(units[0].CodeValue if is_ucum else units[0].CodeMeaning)
    return f"{measured[0].NumericValue} {unit}".strip()


def _value(item: Dataset) -> str:
    """The item's value as text; TEXT values are returned unchanged."""
    value_type = str(item.get("ValueType", ""))
    renderers = {
        "TEXT": lambda: str(item.get("TextValue", "")),
        "CODE": lambda: _code_meaning(item, "ConceptCodeSequence"),
        "NUM": lambda: _numeric(item),
        "DATE": lambda: format_date(item.get("Date")),
        "TIME": lambda: format_time(item.get("Time")),
        "DATETIME": lambda: format_datetime(item.get("DateTime")),
        "UIDREF": lambda: str(item.get("UID", "")),
        "PNAME": lambda: format_person_name(item.get("PersonName")),
        "IMAGE": lambda: _references(item),
        "COMPOSITE": lambda: _references(item),
        "WAVEFORM": lambda: _references(item),
        "SCOORD": lambda: f"{item.get('GraphicType', '')} region",
        "SCOORD3D": lambda: f"{item.get('GraphicType', '')} region (3D)",
        "TCOORD": lambda: f"{item.get('TemporalRangeType', '')} time range",
        "CONTAINER": lambda: "",
    }
    render = renderers.get(value_type)
    return render() if render else f"({value_type or 'unknown'} value)"


def _item_lines(item: Dataset, depth: int) -> Iterator[str]:
    indent = _INDENT * depth
    relationship = str(item.get("RelationshipType", "")).lower()
    if "ReferencedContentItemIdentifier" in item:
        target = ".".join(str(number) for number in item.ReferencedContentItemIdentifier)
        yield f"{indent}{relationship} (see content item {target})"
        return
    label = " ".join(part for part in (relationship, _concept_name(item)) if part)
    value = _value(item)
    is_text = item.get("ValueType") == "TEXT"
    if "\n" in value or "\r" in value or (is_text and len(value) > _INLINE_TEXT_MAX):
        yield f"{indent}{label}:"
        for line in value.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
            yield f"{indent}{_INDENT}{_INDENT}{line}".rstrip()
    else:
        yield f"{indent}{label}: {value}" if value else f"{indent}{label}"
    for child in item.get("ContentSequence", []):
        yield from _item_lines(child, depth + 1)


def _observers(dataset: Dataset) -> list[str]:
    """Who wrote the report: root observer context, then author observers."""
    observers = []
    for item in dataset.get("ContentSequence", []):
        if item.get("RelationshipType") != "HAS OBS CONTEXT":
            continue
        names = item.get("ConceptNameCodeSequence")
        role = _OBSERVER_CONCEPTS.get(str(names[0].CodeValue)) if names else None
        if role:
            observers.append(f"{role}: {_value(item)}")
    for author in dataset.get("AuthorObserverSequence", []):
        if "PersonName" in author:
            observers.append(f"Person: {format_person_name(author.PersonName)}")
        elif "DeviceObserverName" in author:
            observers.append(f"Device: {author.DeviceObserverName}")
    return observers


def _verifiers(dataset: Dataset) -> list[str]:
    return [
        ", ".join(
            part
            for part in (
                format_person_name(observer.get("VerifyingObserverName")),
                str(observer.get("VerifyingOrganization", "")),
                format_datetime(observer.get("VerificationDateTime")),
            )
            if part
        )
        for observer in dataset.get("VerifyingObserverSequence", [])
    ]


def _equipment(dataset: Dataset) -> list[str]:
    lines = []
    for item in dataset.get("ContributingEquipmentSequence", []):
        purpose = _code_meaning(item, "PurposeOfReferenceCodeSequence")
        versions = item.get("SoftwareVersions")
        if versions is not None and not isinstance(versions, str):
            versions = ", ".join(str(version) for version in versions)
        what = " ".join(
            str(part)
            for part in (item.get("Manufacturer"), item.get("ManufacturerModelName"))
            if part
        )
        lines.append(f"{purpose}: {what}" + (f" ({versions})" if versions else ""))
    return lines


def _header_lines(dataset: Dataset) -> Iterator[tuple[str, str]]:
    patient = format_person_name(dataset.get("PatientName")) or "(no name)"
    details = [
        f"ID {dataset.get('PatientID')}" if dataset.get("PatientID") else "",
        f"born {format_date(dataset.get('PatientBirthDate'))}"
        if dataset.get("PatientBirthDate")
        else "",
        str(dataset.get("PatientSex") or ""),
    ]
    details = [part for part in details if part]
    yield "Patient", patient + (f" ({', '.join(details)})" if details else "")
    study = [
        f"{format_date(dataset.get('StudyDate'))} {format_time(dataset.get('StudyTime'))}".strip(),
        str(dataset.get("StudyDescription") or ""),
        f"accession {dataset.get('AccessionNumber')}" if dataset.get("AccessionNumber") else "",
    ]
    yield "Study", ", ".join(part for part in study if part)
    series = str(dataset.get("SeriesDescription") or "")
    if dataset.get("SeriesNumber") is not None:
        series = f"{series} (#{dataset.SeriesNumber})".strip()
    yield "Series", series
    content_time = (
        f"{format_date(dataset.get('ContentDate'))} {format_time(dataset.get('ContentTime'))}"
    )
    yield "Content date", content_time.strip()
    flags = [dataset.get(k) for k in ("VerificationFlag", "PreliminaryFlag", "CompletionFlag")]
    yield "Status", ", ".join(str(flag) for flag in flags if flag)
    for verifier in _verifiers(dataset):
        yield "Verified by", verifier
    for observer in _observers(dataset):
        yield "Author", observer
    for equipment in _equipment(dataset):
        yield "Equipment", equipment
    for item in dataset.get("PredecessorDocumentsSequence", []):
        for series_item in item.get("ReferencedSeriesSequence", []):
            for sop in series_item.get("ReferencedSOPSequence", []):
                yield "Replaces", str(sop.ReferencedSOPInstanceUID)


def render_sr_text(dataset: Dataset) -> str:
    """The SR's header and content tree as indented, readable text."""
    lines = [_sop_class_name(dataset) or "Structured Report", ""]
    header = [(label, value) for label, value in _header_lines(dataset) if value]
    width = max(len(label) for label, _ in header)
    lines += [f"{label.ljust(width)} : {value}" for label, value in header]
    lines += ["", _concept_name(dataset) or "(untitled report)"]
    for item in dataset.ContentSequence:
        lines += _item_lines(item, depth=1)
    return "\n".join(lines) + "\n"
