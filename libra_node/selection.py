"""Which studies are chest radiographs, which image is frontal, which study is the prior.

The same rules serve the listener's ledger rows, DICOM datasets (the Orthanc
plugin) and PACS query results, so they work on small fact records rather
than on any one source. Every decision carries the rule that made it, which
goes into the ledger so that a surprised radiologist can be told why.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})

# Storage SOP classes that hold a projection radiograph a model can read.
RADIOGRAPH_IMAGE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1",  # CR Image
        "1.2.840.10008.5.1.4.1.1.1.1",  # DX Image, for presentation
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # DX Image, for processing
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (digitised films)
    }
)
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"

# Words that name the chest, upper-cased and without accents, in the
# languages radiology departments commonly use in body part and descriptions.
CHEST_WORDS = frozenset(
    {
        "CHEST", "THORAX", "THORACIC", "CXR", "LUNG", "LUNGS",  # English
        "TORAX", "TORACE", "TORACICO", "TORACICA", "PECHO", "PULMON",  # es, it, pt
        "PULMONES", "PULMAO", "PULMOES", "PETTO", "POLMONI",
        "THORAKS", "BRUST", "BRUSTKORB", "LUNGE", "LUNGEN",  # de, nl, no, da
        "POUMON", "POUMONS", "THORACIQUE",  # fr
        "BORST", "BORSTKAS", "THORAXFOTO",  # nl
        "KLATKA", "KLP", "PLUCA",  # pl
        "HRUDNIK", "RINDKERE", "RINTAKEHA", "KEUHKOT",  # cs, et, fi
    }
)
# Codes for the chest in Anatomic Region Sequence, current and retired ones.
CHEST_REGION_CODES = frozenset(
    {codes.SCT.Chest.value, "43799004", "51185008", "302551006", "T-D3000", "T-D3010"}
)

FRONTAL_VIEW_POSITIONS = {"PA": "PA", "AP": "AP"}
LATERAL_VIEW_POSITIONS = frozenset({"LL", "RL", "LAT", "LATERAL", "RLD", "LLD"})
VIEW_CODE_MEANINGS = {
    codes.SCT.PosteroAnterior.value: "PA",
    codes.SCT.AnteroPosterior.value: "AP",
    codes.SCT.Frontal.value: "frontal",
    codes.SCT.LeftLateral.value: "lateral",
    codes.SCT.RightLateral.value: "lateral",
    codes.SCT.LateralProjection.value: "lateral",
    "R-10214": "PA",  # retired SNOMED-RT designators still sent by older modalities
    "R-10206": "AP",
    "R-10236": "lateral",
    "R-10232": "lateral",
}
DESCRIPTION_VIEW_WORDS = {
    "PA": "PA", "POSTEROANTERIOR": "PA", "PAPROJECTION": "PA",
    "AP": "AP", "ANTEROPOSTERIOR": "AP", "PORTABLE": "AP", "SUPINE": "AP", "BEDSIDE": "AP",
    "FRONTAL": "frontal", "FRONT": "frontal",
    "LAT": "lateral", "LATERAL": "lateral", "LATERALE": "lateral", "SEITLICH": "lateral",
    "PROFIL": "lateral", "PROFILE": "lateral", "LL": "lateral", "RL": "lateral",
}
# Preference among frontal views: PA is what Libra saw most, then AP.
VIEW_RANK = {"PA": 0, "AP": 1, "frontal": 2, "unknown": 3}


def _words(*texts: str | None) -> set[str]:
    """Upper-case words without accents; 'Thorax p.a.' gives {'THORAX', 'P', 'A', 'PA'}."""
    found: set[str] = set()
    for text in texts:
        if not text:
            continue
        plain = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode()
        upper = plain.upper()
        found.update(w for w in re.split(r"[^A-Z0-9]+", upper) if w)
        # "p.a." and "a.p." are common spellings of the views.
        found.update(w.replace(".", "") for w in re.findall(r"\b(?:[A-Z]\.){2,}", upper))
    return found


@dataclass(frozen=True)
class ImageFacts:
    """What selection needs to know about one instance."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str = ""
    body_part: str = ""
    anatomic_region: str = ""  # "code value|code meaning"
    view_position: str = ""
    view_code: str = ""  # "code value|code meaning"
    patient_orientation: str = ""  # "row\\column" directions, e.g. "L\\F"
    description: str = ""  # series/study/protocol descriptions and comments
    series_number: int | None = None
    instance_number: int | None = None

    @classmethod
    def from_dataset(cls, ds: Dataset) -> "ImageFacts":
        return cls(
            study_instance_uid=str(ds.get("StudyInstanceUID", "")),
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
            sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
            sop_class_uid=str(ds.get("SOPClassUID", "")),
            modality=str(ds.get("Modality", "") or ""),
            body_part=str(ds.get("BodyPartExamined", "") or ""),
            anatomic_region=_first_code(ds, "AnatomicRegionSequence"),
            view_position=str(ds.get("ViewPosition", "") or ""),
            view_code=_first_code(ds, "ViewCodeSequence"),
            patient_orientation="\\".join(str(v) for v in _as_list(ds.get("PatientOrientation"))),
            description=" | ".join(
                str(ds.get(keyword))
                for keyword in (
                    "SeriesDescription",
                    "StudyDescription",
                    "ProtocolName",
                    "ImageComments",
                    "AcquisitionDeviceProcessingDescription",
                    "PerformedProcedureStepDescription",
                    "RequestedProcedureDescription",
                )
                if ds.get(keyword)
            ),
            series_number=_as_int(ds.get("SeriesNumber")),
            instance_number=_as_int(ds.get("InstanceNumber")),
        )


def _as_list(value: object) -> list[object]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)  # type: ignore[arg-type]
    return [value]


def _as_int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _first_code(ds: Dataset, keyword: str) -> str:
    sequence = ds.get(keyword)
    if not sequence:
        return ""
    item = sequence[0]
    return f"{item.get('CodeValue', '')}|{item.get('CodeMeaning', '')}"


# --- is it a chest radiograph? --------------------------------------------------


@dataclass(frozen=True)
class Classification:
    is_chest_radiograph: bool
    reason: str


def classify_study(images: Sequence[ImageFacts], study_description: str = "") -> Classification:
    """A study is a chest radiograph when it has a CR/DX image that names the chest."""
    radiographs = [
        image
        for image in images
        if image.modality.upper() in RADIOGRAPH_MODALITIES
        and image.sop_class_uid in RADIOGRAPH_IMAGE_CLASSES
    ]
    if not radiographs:
        modalities = sorted({image.modality.upper() or "?" for image in images})
        if not images:
            return Classification(False, "study has no instances")
        return Classification(
            False, f"no CR or DX radiograph in the study (modalities: {', '.join(modalities)})"
        )
    for image in radiographs:
        source = chest_evidence(image, study_description)
        if source:
            return Classification(True, f"chest radiograph ({source})")
    parts = sorted({image.body_part.upper() for image in radiographs if image.body_part})
    named = f"body part {', '.join(parts)}" if parts else "no body part or description names it"
    return Classification(False, f"radiograph but not of the chest ({named})")


def chest_evidence(image: ImageFacts, study_description: str = "") -> str:
    """Which attribute says this image shows the chest; empty when none does."""
    if _words(image.body_part) & CHEST_WORDS:
        return "BodyPartExamined"
    region_value, _, region_meaning = image.anatomic_region.partition("|")
    if region_value in CHEST_REGION_CODES or _words(region_meaning) & CHEST_WORDS:
        return "AnatomicRegionSequence"
    if _words(image.description, study_description) & CHEST_WORDS:
        return "description"
    return ""


# --- which image is frontal? -----------------------------------------------------


@dataclass(frozen=True)
class FrontalChoice:
    image: ImageFacts
    view: str  # "PA", "AP", "frontal" or "unknown"
    rule: str  # which attribute decided, for the ledger


def image_view(image: ImageFacts) -> tuple[str, str]:
    """(view, rule): view is PA, AP, frontal, lateral, other or unknown."""
    position = image.view_position.strip().upper()
    if position in FRONTAL_VIEW_POSITIONS:
        return FRONTAL_VIEW_POSITIONS[position], f"ViewPosition {position}"
    if position in LATERAL_VIEW_POSITIONS:
        return "lateral", f"ViewPosition {position}"
    if position:
        return "other", f"ViewPosition {position}"

    code_value, _, code_meaning = image.view_code.partition("|")
    if code_value in VIEW_CODE_MEANINGS:
        return VIEW_CODE_MEANINGS[code_value], f"ViewCodeSequence {code_meaning or code_value}"
    if code_meaning:
        view = _view_from_words(_words(code_meaning))
        if view:
            return view, f"ViewCodeSequence {code_meaning}"

    view = _view_from_words(_words(image.description))
    if view:
        return view, "description"

    row_direction = image.patient_orientation.split("\\")[0].strip().upper()[:1]
    if row_direction in ("L", "R"):
        return "frontal", "PatientOrientation"
    if row_direction in ("A", "P"):
        return "lateral", "PatientOrientation"
    return "unknown", "no view information"


def _view_from_words(words: set[str]) -> str:
    views = {DESCRIPTION_VIEW_WORDS[w] for w in words if w in DESCRIPTION_VIEW_WORDS}
    if "lateral" in views and len(views) > 1:
        return ""  # "PA and lateral" on one image says nothing about this image
    for view in ("PA", "AP", "frontal", "lateral"):
        if view in views:
            return view
    return ""


def choose_frontal(images: Sequence[ImageFacts]) -> FrontalChoice | None:
    """The frontal image to report on: PA before AP, never a lateral.

    Among equals, a DX image for presentation beats one for processing and
    the last acquired (retakes come later) wins. A study with a single image
    whose view nothing tells is used as it is, and the rule says so.
    """
    candidates = [
        image
        for image in images
        if image.sop_class_uid in RADIOGRAPH_IMAGE_CLASSES
        and image.modality.upper() in RADIOGRAPH_MODALITIES
    ]
    ranked: list[tuple[tuple[int, int, int, int], FrontalChoice]] = []
    for image in candidates:
        view, rule = image_view(image)
        if view in ("lateral", "other"):
            continue
        if view == "unknown":
            if len(candidates) > 1:
                continue
            rule = "only image in the study, view not recorded"
        key = (
            VIEW_RANK[view],
            1 if image.sop_class_uid == DX_FOR_PROCESSING else 0,
            -(image.series_number or 0),
            -(image.instance_number or 0),
        )
        ranked.append((key, FrontalChoice(image, view, rule)))
    if not ranked:
        return None
    return min(ranked, key=lambda pair: pair[0])[1]


# --- which study is the prior? ------------------------------------------------------


@dataclass(frozen=True)
class StudyFacts:
    """A study as a PACS query describes it."""

    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str = ""
    study_date: str = ""  # DA as the PACS sent it
    study_time: str = ""
    modalities: tuple[str, ...] = ()
    study_description: str = ""

    @property
    def when(self) -> dt.datetime | None:
        return parse_study_datetime(self.study_date, self.study_time)


def parse_study_datetime(date_text: str, time_text: str = "") -> dt.datetime | None:
    """DICOM DA/TM to datetime, lenient about what PACSes actually return.

    Accepts YYYYMMDD and the old YYYY.MM.DD; a missing or partial time counts
    from midnight. A partial date (YYYY or YYYYMM) cannot be ordered against
    the current study reliably and gives None.
    """
    digits = re.sub(r"[^0-9]", "", (date_text or "").split("-")[0])
    if len(digits) != 8:
        return None
    try:
        date = dt.datetime.strptime(digits, "%Y%m%d")
    except ValueError:
        return None
    time_digits = re.sub(r"[^0-9]", "", (time_text or "").split(".")[0])[:6]
    time_digits = time_digits.ljust(6, "0") if time_digits else "000000"
    try:
        clock = dt.datetime.strptime(time_digits, "%H%M%S").time()
    except ValueError:
        clock = dt.time()
    return dt.datetime.combine(date.date(), clock)


@dataclass(frozen=True)
class PriorCandidates:
    """Earlier chest studies to try, most recent first, and why others were left out."""

    ranked: list[StudyFacts]
    excluded: dict[str, str] = field(default_factory=dict)  # study UID -> reason


def rank_prior_candidates(current: StudyFacts, found: Iterable[StudyFacts]) -> PriorCandidates:
    """Order a PACS's answer into the priors Libra was trained with.

    Same patient (and issuer when both name one), a CR or DX study (when the
    PACS says which modalities it holds), strictly before the current study's
    day: studies on the same day share the prior of that day's first study,
    so a same-day study is never the prior. Most recent first.
    """
    current_when = current.when
    ranked: list[tuple[dt.datetime, str, StudyFacts]] = []
    excluded: dict[str, str] = {}
    for study in found:
        reason = _prior_exclusion(current, current_when, study)
        if reason:
            excluded[study.study_instance_uid] = reason
            continue
        ranked.append((study.when, study.study_instance_uid, study))  # type: ignore[arg-type]
    ranked.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return PriorCandidates([study for _, _, study in ranked], excluded)


def _prior_exclusion(
    current: StudyFacts, current_when: dt.datetime | None, study: StudyFacts
) -> str:
    if study.study_instance_uid == current.study_instance_uid:
        return "the current study itself"
    if study.patient_id != current.patient_id:
        return "another patient ID"
    if current.issuer_of_patient_id and study.issuer_of_patient_id and (
        current.issuer_of_patient_id != study.issuer_of_patient_id
    ):
        return "same patient ID from another issuer"
    if study.modalities and not set(m.upper() for m in study.modalities) & RADIOGRAPH_MODALITIES:
        return f"not a radiograph study ({', '.join(study.modalities)})"
    when = study.when
    if when is None:
        return "study date missing or incomplete"
    if current_when is None:
        return "current study has no date to compare with"
    if when.date() >= current_when.date():
        return "not before the current study's day"
    return ""
