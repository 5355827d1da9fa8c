"""The ClientApp on OMOP and FHIR data, and log hints that name the key an operator can set.

A node whose ``data-path`` is an OMOP SQLite CDM (or a FHIR export) trains like one with a
CSV file. When it declines, its log names the node-config key (``data-path``,
``data-mapping``, ``privacy-epsilon-budget``) or the run-config key to ask the coordinator
about (``history``, ``horizon``), never a Python name (``WindowSpec``, ``allow_budget_change``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from medalloc.client.app import handle_train
from medalloc_core import protocol
from medalloc_core.forecast.features import federation_window_spec
from medalloc_core.privacy.ledger import PrivacyLedger
from medalloc_core.protocol import Refusal
from medalloc_core.sources.synthetic import create_omop_database
from medalloc_core.synthetic import RegionConfig, generate_region, write_region
from tests.fed_fixtures import record, request, task_identity
from tests.source_fixtures import omop_tables
from tests.test_client_app import _config, _global

PYTHON_NAMES = ("WindowSpec", "allow_budget_change", "epsilon_budget", "data_path", "max_local_epochs")


@pytest.fixture(autouse=True)
def _identity():  # type: ignore[no-untyped-def]
    with task_identity():
        yield


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sources")
    config = RegionConfig(hospitals=2, days=120, seed=5, shape="encounters", min_beds=40, max_beds=80)
    write_region(generate_region(config), out, shape="mixed")  # H000.sqlite (OMOP), H001.fhir (FHIR)
    return out


def _train(tmp_path: Path, data: str, **extra: object):  # type: ignore[no-untyped-def]
    node = {"data-path": data, "ledger-path": str(tmp_path / "ledger.json"), "privacy-epsilon-budget": 20.0} | extra
    context = Context(run_id=1, node_id=5, node_config=node, state=RecordDict(), run_config={})
    return handle_train(request(5, record(_global()), _config()), context)


# The region's public calendar, as its operator declares it (issue 20: a deployed node reading stays needs one).
REGION_CALENDAR = {
    "calendar-units": "icu,medical,paediatric,surgical",
    "calendar-start": "2023-02-01",
    "calendar-end": "2023-04-30",
}


@pytest.mark.parametrize("source", ["H000.sqlite", "H001.fhir"])
def test_a_node_trains_on_omop_and_fhir(tmp_path: Path, region: Path, source: str) -> None:
    reply = _train(tmp_path, str(region / source), **REGION_CALENDAR)
    assert not reply.has_error(), reply.error
    metrics = reply.content.metric_records[protocol.METRICS]
    assert metrics[protocol.NUM_EXAMPLES] > 0
    assert len(PrivacyLedger.load(tmp_path / "ledger.json").history()) == 1


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


def test_bad_data_names_the_source_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A structural problem (a table without a required column) refuses; a malformed record would be left out
    # (issue 20: test_public_calendar.py::test_a_malformed_omop_record_is_left_out_not_a_refusal).
    tables = omop_tables()
    tables["visit_detail"] = tables["visit_detail"].drop(columns=["person_id"])
    cdm = tmp_path / "cdm.sqlite"
    create_omop_database(tables, f"sqlite:///{cdm}")
    with caplog.at_level(logging.ERROR, logger="medalloc.client.app"):
        reply = _train(tmp_path, str(cdm))
    assert reply.error.code == Refusal.DATA_INVALID
    log = _logged(caplog)
    assert "visit_detail has no column 'person_id'" in log
    assert f"medalloc validate {cdm}" in log and "node-config 'data-path'" in log
    assert not any(name in log for name in PYTHON_NAMES), log


def test_short_history_names_the_run_config_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cdm = tmp_path / "cdm.sqlite"
    create_omop_database(omop_tables(), f"sqlite:///{cdm}")  # four days of stays
    calendar = {
        "calendar-units": "Emergency department,ICU,Ward 3",
        "calendar-start": "2025-01-01",
        "calendar-end": "2025-01-04",
    }
    with caplog.at_level(logging.ERROR, logger="medalloc.client.app"):
        reply = _train(tmp_path, str(cdm), **calendar)
    assert reply.error.code == Refusal.DATA_INVALID
    log = _logged(caplog)
    spec = federation_window_spec(history=14, horizon=7, targets=("admissions",))
    assert "run-config history=14, horizon=7" in log and "'history' or 'horizon'" in log, log
    assert f"need at least {14 + 7 + spec.val_periods + spec.test_periods} days per unit" in log
    assert "medalloc node check" in log


def test_ledger_mismatch_names_the_node_config_key(
    tmp_path: Path, region: Path, caplog: pytest.LogCaptureFixture
) -> None:
    PrivacyLedger.open(tmp_path / "ledger.json", epsilon_budget=4.0, delta=1e-6, unit="patient", max_stay_days=14)
    with caplog.at_level(logging.ERROR, logger="medalloc.client.app"):
        reply = _train(tmp_path, str(region / "H000.sqlite"), **REGION_CALENDAR)
    assert reply.error.code == Refusal.LEDGER_CONFIG_MISMATCH
    log = _logged(caplog)
    assert "set node-config privacy-epsilon-budget=4 " in log, log


def test_bad_mapping_file_is_a_node_config_problem(
    tmp_path: Path, region: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mapping = tmp_path / "mapping.toml"
    mapping.write_text("[omop]\nlevels = 'x'\n")
    with caplog.at_level(logging.ERROR, logger="medalloc.client.app"):
        reply = _train(tmp_path, str(region / "H000.sqlite"), **{"data-mapping": str(mapping)})
    assert reply.error.code == Refusal.NODE_MISCONFIGURED
    assert f"data-mapping: {mapping}: [omop] unknown key(s) ['levels']" in _logged(caplog)
    assert json.dumps(str(mapping)) not in reply.error.reason  # the node's paths stay in its own log
