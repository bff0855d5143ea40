"""Which Specific Character Set a document written for a study uses.

The documents carry over the current images' Specific Character Set, so that
the patient's name is stored exactly as the modality sent it. When the
report's own text needs characters that set cannot encode (an accented word
in an ASCII study, a symbol such as "≥" in a Latin-1 one), the document is
written in UTF-8 (ISO_IR 192) instead: every decoded name survives that too.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from pydicom.charset import decode_bytes, encode_string, python_encoding
from pydicom.dataset import Dataset

UTF8 = "ISO_IR 192"

CharacterSet = str | list[str] | None


def declared_character_set(header: Dataset) -> CharacterSet:
    """The header's Specific Character Set as a plain value (None: default)."""
    value = header.get("SpecificCharacterSet")
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else [str(term) for term in value]


def _terms(character_set: CharacterSet) -> list[str]:
    if character_set is None:
        return [""]
    return [character_set] if isinstance(character_set, str) else list(character_set)


def _python_encodings(character_set: CharacterSet) -> list[str] | None:
    """Python codecs for the set, or None when pydicom does not know a term."""
    terms = _terms(character_set)
    if any(term.strip() not in python_encoding for term in terms):
        return None
    return [python_encoding[term.strip()] for term in terms]


def _survives(text: str, encodings: list[str]) -> bool:
    """Whether encoding and decoding gives back exactly the same text."""
    with warnings.catch_warnings():
        # pydicom warns and substitutes '?' for what it cannot encode;
        # the comparison below is what detects that.
        warnings.simplefilter("ignore")
        encoded = encode_string(text, encodings)
        return decode_bytes(encoded, encodings, set()) == text


def choose_character_set(header: Dataset, texts: Iterable[str]) -> CharacterSet:
    """The header's set if it can hold the patient's name and every text, else UTF-8."""
    declared = declared_character_set(header)
    encodings = _python_encodings(declared)
    if encodings is None:
        return UTF8
    candidates = [str(header.get("PatientName") or ""), *texts]
    if all(_survives(text, encodings) for text in candidates if text):
        return declared
    return UTF8
