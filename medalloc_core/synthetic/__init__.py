"""Synthetic hospital regions that look like real operations, for experiments and demos.

``generate_region(RegionConfig(...))`` simulates patients unit by unit (so admissions,
discharges and census agree exactly) under weekly, annual, holiday and regional epidemic
effects; ``write_region`` writes one file per hospital plus region.json. See docs/synthetic.md.
"""

from medalloc_core.synthetic.calendar import public_holidays
from medalloc_core.synthetic.config import GENERATOR_VERSION, UNIT_PROFILES, UNITS, RegionConfig, UnitProfile
from medalloc_core.synthetic.region import Hospital, Region, UnitTruth, generate_region
from medalloc_core.synthetic.writer import METADATA_NAME, existing_region_files, write_region

__all__ = [
    "GENERATOR_VERSION",
    "METADATA_NAME",
    "UNITS",
    "UNIT_PROFILES",
    "Hospital",
    "Region",
    "RegionConfig",
    "UnitProfile",
    "UnitTruth",
    "existing_region_files",
    "generate_region",
    "public_holidays",
    "write_region",
]
