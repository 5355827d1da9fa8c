"""The site mapping file: kebab-case keys, documented defaults, and errors that name the key and what is expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from medalloc_core.sources.mapping import (
    DEFAULT_ENCOUNTER_CLASSES,
    DEFAULT_INPATIENT_VISIT_CONCEPTS,
    FhirMapping,
    MappingError,
    OmopMapping,
    SourceMapping,
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mapping.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_and_a_full_file(tmp_path: Path) -> None:
    assert OmopMapping().inpatient_visit_concepts == DEFAULT_INPATIENT_VISIT_CONCEPTS == (9201, 262, 8717, 32037)
    assert FhirMapping().encounter_classes == DEFAULT_ENCOUNTER_CLASSES == ("IMP", "ACUTE", "NONAC")
    path = _write(
        tmp_path,
        """
[omop]
schema = "cdm"
inpatient-visit-concepts = [9201]
level = "visit_occurrence"
unit-name = "care_site_source_value"
units = { "ICU1" = "ICU", "W3" = "MED-3", "W4" = "MED-3" }

[fhir]
encounter-classes = ["IMP", "OBSENC"]
timezone = "Europe/London"
unit-name = "reference"
units = { "Location/icu" = "ICU" }
""",
    )
    mapping = SourceMapping.from_toml(path)
    assert mapping.omop == OmopMapping(
        schema="cdm",
        inpatient_visit_concepts=(9201,),
        level="visit_occurrence",
        unit_name="care_site_source_value",
        units={"ICU1": "ICU", "W3": "MED-3", "W4": "MED-3"},
    )
    assert mapping.fhir.encounter_classes == ("IMP", "OBSENC") and mapping.fhir.timezone == "Europe/London"
    assert mapping.fhir.skip_statuses == ("planned", "cancelled", "entered-in-error")  # default kept
    assert mapping.path == path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[omop]\ninpatient-concepts = [9201]\n", "[omop] unknown key(s) ['inpatient-concepts']; known keys: "),
        ("[omp]\n", "unknown section(s) ['omp']; expected [omop] and/or [fhir]"),
        (
            "[omop]\ninpatient-visit-concepts = ['9201']\n",
            "[omop] inpatient-visit-concepts must be a list of whole numbers",
        ),
        ("[omop]\ninpatient-visit-concepts = []\n", "[omop] inpatient-visit-concepts is empty"),
        (
            "[omop]\nlevel = 'detail'\n",
            "[omop] level must be 'auto', 'visit_detail' or 'visit_occurrence', got 'detail'",
        ),
        ("[omop]\nunits = { ICU = 3 }\n", "[omop] units must be a table of names"),
        ("[omop]\nunits = { ICU = ' ' }\n", "[omop] units maps 'ICU' to an empty unit name"),
        ("[fhir]\ntimezone = 'Mars/Olympus'\n", "[fhir] timezone 'Mars/Olympus' is not a known IANA time zone"),
        ("[fhir]\nunit-name = 'display'\n", "[fhir] unit-name must be 'name' or 'reference', got 'display'"),
        ("[fhir\n", "not valid TOML"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(MappingError) as caught:
        SourceMapping.from_toml(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="cannot be read"):
        SourceMapping.from_toml(tmp_path / "nope.toml")
