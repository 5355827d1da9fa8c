"""The ledger's keyed checksum: an edit by anything without the node's ledger key is detected.

docs/privacy.md says what this withstands (accidents, a careless operator, a writer who cannot
read the key) and what it does not (the node's own operator account, which can read the key).
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest

from medalloc_core.privacy import ledger as ledger_module
from medalloc_core.privacy.ledger import (
    LEDGER_VERSION,
    LedgerCorrupt,
    PrivacyLedger,
    ledger_key_path,
    upgrade_ledger,
)

FP = "a" * 64


def _spent_ledger(path: Path) -> PrivacyLedger:
    ledger = PrivacyLedger.open(path, epsilon_budget=8.0, delta=1e-5, accountant="rdp")
    ledger.spend(FP, noise_multiplier=1.0, sample_rate=0.05, steps=200, run_id="r1")
    return ledger


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def test_the_key_is_created_beside_the_ledger_readable_by_the_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    _spent_ledger(path)
    key = ledger_key_path(path)
    assert key == tmp_path / "ledger.json.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(bytes.fromhex(key.read_text().strip())) == 32
    document = json.loads(path.read_text())
    assert document["version"] == LEDGER_VERSION and "body_sha256" not in document


def test_an_edit_with_a_recomputed_sha256_is_refused(tmp_path: Path) -> None:
    """The attack that worked on version 1: delete the spends, recompute the plain hash. Now refused."""
    path = tmp_path / "ledger.json"
    _spent_ledger(path)
    document = json.loads(path.read_text())
    document["body"]["entries"] = {}
    document["body_sha256"] = hashlib.sha256(_canonical(document["body"])).hexdigest()
    document["body_hmac_sha256"] = hashlib.sha256(_canonical(document["body"])).hexdigest()
    path.write_text(json.dumps(document))
    with pytest.raises(LedgerCorrupt, match="fails its checksum"):
        PrivacyLedger.load(path)


def test_an_edit_authenticated_with_another_key_is_refused(tmp_path: Path) -> None:
    import hmac

    path = tmp_path / "ledger.json"
    _spent_ledger(path)
    document = json.loads(path.read_text())
    document["body"]["entries"] = {}
    document["body_hmac_sha256"] = hmac.new(b"\0" * 32, _canonical(document["body"]), hashlib.sha256).hexdigest()
    path.write_text(json.dumps(document))
    with pytest.raises(LedgerCorrupt, match="fails its checksum"):
        PrivacyLedger.open(path, epsilon_budget=8.0, delta=1e-5, accountant="rdp")


def test_an_untouched_ledger_reads_back_its_spend(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    spent = _spent_ledger(path).epsilon_spent()
    assert PrivacyLedger.load(path).epsilon_spent() == spent > 0
    # The backup is checked with the same key.
    _spent_ledger_again = PrivacyLedger.open(path, epsilon_budget=8.0, delta=1e-5, accountant="rdp")
    _spent_ledger_again.spend(FP, noise_multiplier=1.0, sample_rate=0.05, steps=10, run_id="r2")
    assert PrivacyLedger.load(path.with_name("ledger.json.bak")).epsilon_spent() == spent


def test_a_missing_key_is_refused_and_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    _spent_ledger(path)
    ledger_key_path(path).unlink()
    before = path.read_bytes()
    with pytest.raises(LedgerCorrupt, match="its key .* does not"):
        PrivacyLedger.open(path, epsilon_budget=8.0, delta=1e-5, accountant="rdp")
    assert not ledger_key_path(path).exists() and path.read_bytes() == before


def test_a_deleted_ledger_whose_key_remains_is_a_reset_not_a_new_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    _spent_ledger(path)
    path.unlink()
    path.with_name("ledger.json.bak").unlink(missing_ok=True)
    with pytest.raises(LedgerCorrupt, match="missing but its key"):
        PrivacyLedger.open(path, epsilon_budget=8.0, delta=1e-5, accountant="rdp")
    assert not path.exists()


def _v1(path: Path) -> None:
    """Rewrite the ledger at ``path`` in the version-1 envelope (unkeyed SHA-256), as older releases wrote it."""
    document = json.loads(path.read_text())
    body = document["body"]
    path.write_text(
        json.dumps(
            {
                "format": document["format"],
                "version": 1,
                "body_sha256": hashlib.sha256(_canonical(body)).hexdigest(),
                "body": body,
            }
        )
    )
    ledger_key_path(path).unlink()


def test_a_version_1_ledger_is_refused_until_upgraded_then_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    spent = _spent_ledger(path).epsilon_spent()
    _v1(path)
    with pytest.raises(LedgerCorrupt, match="--upgrade"):
        PrivacyLedger.load(path)
    key = upgrade_ledger(path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert PrivacyLedger.load(path).epsilon_spent() == spent
    assert json.loads(path.with_name("ledger.json.v1").read_text())["version"] == 1


def test_an_unkeyed_ledger_beside_a_key_is_a_downgrade_and_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    _spent_ledger(path)
    key = ledger_key_path(path).read_bytes()
    _v1(path)
    ledger_key_path(path).write_bytes(key)
    with pytest.raises(LedgerCorrupt, match="replaced by an unkeyed one"):
        upgrade_ledger(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[" * 100_000, "nests its JSON too deeply"),
        (b'{"format": "medalloc-privacy-ledger", "version": 2, "body": ' + b"[" * 100_000, "nests its JSON too deeply"),
    ],
)
def test_pathological_json_is_a_clear_refusal(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "ledger.json"
    path.write_bytes(content)
    with pytest.raises(LedgerCorrupt, match=message):
        PrivacyLedger.load(path)


def test_a_ledger_over_the_size_cap_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_module, "MAX_LEDGER_BYTES", 1000)
    path = tmp_path / "ledger.json"
    path.write_bytes(b" " * 1001)
    with pytest.raises(LedgerCorrupt, match="over the 1000 a ledger can reach"):
        PrivacyLedger.load(path)


def test_the_privacy_command_upgrades_a_version_1_ledger(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medalloc.cli import app

    path = tmp_path / "ledger.json"
    _spent_ledger(path)
    _v1(path)
    refused = CliRunner().invoke(app, ["privacy", "--ledger", str(path)])
    assert refused.exit_code == 2 and "--upgrade" in refused.output
    upgraded = CliRunner().invoke(app, ["privacy", "--ledger", str(path), "--upgrade", "--json"])
    assert upgraded.exit_code == 0, upgraded.output
    assert ledger_key_path(path).exists()
