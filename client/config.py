"""A hospital node's own configuration: read once from the SuperNode's node config into a frozen ``NodeConfig``.

On a real node everything comes from ``flower-supernode --node-config "data-path='...'
ledger-path='...' privacy-epsilon-budget=8.0"``; the coordinator's run config cannot change
any of it. Only in simulation, where Flower gives a virtual node nothing but
``partition-id``/``num-partitions``, are the data file, ledger and budget taken from the
simulation-only run-config keys (``simulation-data-dir``, ``simulation-epsilon-budget``,
``simulation-delta``): partition ``i`` is the ``i``-th hospital file of that folder, the node's
*own* file, never a slice of a shared dataset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context

from medalloc_core.privacy.accounting import ACCOUNTANTS, AccountantName
from medalloc_core.sources import FORMATS, DataSource, MappingError, SourceMapping

# What a region folder may hold per hospital: contract files, OMOP SQLite databases, FHIR NDJSON
# files and Bundles (.fhir.json), and export folders (OMOP tables, FHIR Bulk Data).
DATA_SUFFIXES = (".csv", ".parquet", ".sqlite", ".ndjson")


class NodeConfigError(ValueError):
    """The node's configuration is incomplete or invalid; the message says which key to set."""


def _accountant(value: object) -> AccountantName:
    """``value`` as the ledger's accountant name, or a ``NodeConfigError`` naming the choices."""
    if value not in ACCOUNTANTS:
        raise NodeConfigError(f"privacy-accountant must be 'prv' or 'rdp', got {value!r}")
    return value


@dataclass(frozen=True)
class NodeConfig:
    """What a hospital node decides for itself.

    Parameters
    ----------
    data_path : Path
        The hospital's data (node-config ``data-path``): a unit-records or encounter file (CSV or
        Parquet), an OMOP CDM (SQLite file, database URL or export folder) or a FHIR export
        (Bulk Data folder, NDJSON or Bundle file). A database URL is kept verbatim in
        ``data_location`` (a URL is not a path).
    ledger_path : Path
        The node's privacy ledger (JSON); created on first use.
    epsilon_budget : float
        Lifetime epsilon budget of this node PER PATIENT (a stay of at most ``max_stay_days``
        nights); the ledger refuses anything beyond it.
    delta : float (default: 1e-6)
        Delta every epsilon is reported at.
    max_stay_days : int (default: 14)
        The stay length the patient-level epsilon covers (longer stays: docs/privacy.md).
    release_path : Path (default: ``<ledger>.released.csv``)
        Where the node keeps its source release (counts released once, with DP noise).
    node_state_path : Path (default: ``medalloc-node-state.json`` in the ledger's folder)
        The node state record that notices a deleted or replaced ledger; keep it outside the
        ledger's folder (beside the node's keys) so that removing that folder is noticed too.
    release_columns : tuple of str (default: admissions, census)
        The count columns the node releases (each adds to the per-stay sensitivity).
    hospital_id : str
        Name used in logs and in the reply's node info (default: the data file's stem).
    max_local_epochs : int (default: 5)
        The most local epochs per round the node accepts, whatever the coordinator proposes.
    min_noise_multiplier : float (default: 0.5)
        The least DP-SGD noise the node accepts; a smaller proposal is raised to it.
    max_grad_norm : float (default: 1.0)
        The largest per-example clipping bound the node accepts.
    accountant : {"prv", "rdp"} (default: "prv")
        Privacy accountant of the ledger ("prv" or "rdp").
    threads : int (default: 1)
        CPU threads torch may use while training. The forecaster is small: one thread is
        fastest, and more oversubscribe a shared machine (one DP round took 0.2 s on one
        thread and 7 s on two on the 2-core development box).
    simulated : bool
        True when the values came from simulation run-config keys.
    data_format : {"auto", "contract", "omop", "fhir"} (default: "auto")
        Node-config ``data-format``: what ``data-path`` is (auto tells them apart).
    data_mapping : Path or None (default: None)
        Node-config ``data-mapping``: the site's mapping file (TOML; docs/data.md) for OMOP/FHIR.
    data_location : str (default: ``str(data_path)``)
        ``data-path`` exactly as given.
    approved_apps : Path or None (default: None)
        Node-config ``approved-apps``: the data owner's list of app hashes the node may run
        (enforced by ``medalloc node exec``, checked by ``medalloc node check``; docs/hospital.md).
    """

    data_path: Path
    ledger_path: Path
    epsilon_budget: float
    delta: float = 1e-6
    max_stay_days: int = 14
    release_path: Path | None = None
    node_state_path: Path | None = None
    release_columns: tuple[str, ...] = ("admissions", "census")
    hospital_id: str = ""
    max_local_epochs: int = 5
    min_noise_multiplier: float = 0.5
    max_grad_norm: float = 1.0
    accountant: AccountantName = "prv"
    threads: int = 1
    simulated: bool = False
    data_format: str = "auto"
    data_mapping: Path | None = None
    data_location: str = ""
    approved_apps: Path | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon_budget) and self.epsilon_budget > 0):
            raise NodeConfigError(f"privacy-epsilon-budget must be a finite number > 0, got {self.epsilon_budget}")
        if not 0 < self.delta < 1:
            raise NodeConfigError(f"privacy-delta must be in (0, 1), got {self.delta}")
        if self.max_local_epochs < 1:
            raise NodeConfigError(f"max-local-epochs must be >= 1, got {self.max_local_epochs}")
        if self.min_noise_multiplier <= 0:
            raise NodeConfigError("min-noise-multiplier must be > 0: a node never trains without DP noise")
        if self.max_grad_norm <= 0:
            raise NodeConfigError(f"max-grad-norm must be > 0, got {self.max_grad_norm}")
        if self.threads < 1:
            raise NodeConfigError(f"torch-threads must be >= 1, got {self.threads}")
        _accountant(self.accountant)
        if self.max_stay_days < 1:
            raise NodeConfigError(f"max-stay-days must be >= 1, got {self.max_stay_days}")
        if self.release_path is None:
            object.__setattr__(
                self, "release_path", self.ledger_path.with_name(self.ledger_path.name + ".released.csv")
            )
        if self.node_state_path is None:
            object.__setattr__(self, "node_state_path", self.ledger_path.parent / "medalloc-node-state.json")
        if self.data_format not in FORMATS:
            raise NodeConfigError(f"data-format must be one of {', '.join(FORMATS)}, got {self.data_format!r}")
        if not self.data_location:
            object.__setattr__(self, "data_location", str(self.data_path))
        if not self.hospital_id:
            object.__setattr__(self, "hospital_id", DataSource(self.data_location).name)

    @property
    def data_source_display(self) -> str:
        """``data-path`` as it may be logged (a database URL's password hidden)."""
        return DataSource(self.data_location).display

    @property
    def data_source(self) -> DataSource:
        """The node's data with its site mapping; raises NodeConfigError naming ``data-mapping`` if that is bad."""
        try:
            mapping = SourceMapping.from_toml(self.data_mapping) if self.data_mapping else SourceMapping()
        except MappingError as exc:
            raise NodeConfigError(f"data-mapping: {exc}") from None
        return DataSource(self.data_location, self.data_format, mapping)  # type: ignore[arg-type]

    @classmethod
    def from_context(cls, context: Context, *, run_config: Mapping[str, Any] | None = None) -> NodeConfig:
        """Read the node's config; fall back to the simulation run-config keys only when ``data-path`` is absent.

        ``run_config`` replaces ``context.run_config`` (Flower's Python simulation API leaves
        a virtual node's run config empty, so the simulation runner passes its own).
        """
        node = context.node_config
        run = context.run_config if run_config is None else run_config
        if "data-path" in node:
            return cls._from_node(node)
        if "partition-id" in node:
            return cls._from_simulation(node, run)
        raise NodeConfigError(
            "this node has no 'data-path' in its node config; start it with "
            "flower-supernode --node-config \"data-path='/path/records.csv' ledger-path='/path/ledger.json' "
            'privacy-epsilon-budget=8.0"'
        )

    @classmethod
    def from_node_config(cls, node: Mapping[str, Any]) -> NodeConfig:
        """A real node's config from its ``--node-config`` keys (what ``medalloc node check`` reads too)."""
        if "data-path" not in node:
            raise NodeConfigError("the node config has no 'data-path'; set it to the node's data (file, folder or URL)")
        return cls._from_node(node)

    @classmethod
    def _from_node(cls, node: Mapping[str, Any]) -> NodeConfig:
        for key in ("ledger-path", "privacy-epsilon-budget"):
            if key not in node:
                raise NodeConfigError(f"node config has 'data-path' but no '{key}'; a node must set its own {key}")
        return cls(
            data_path=Path(str(node["data-path"])),
            data_location=str(node["data-path"]),
            data_format=str(node.get("data-format", "auto")),
            data_mapping=Path(str(node["data-mapping"])) if node.get("data-mapping") else None,
            approved_apps=Path(str(node["approved-apps"])) if node.get("approved-apps") else None,
            ledger_path=Path(str(node["ledger-path"])),
            epsilon_budget=_number(node, "privacy-epsilon-budget"),
            delta=_number(node, "privacy-delta", 1e-6),
            max_stay_days=int(_number(node, "max-stay-days", 14)),
            release_path=Path(str(node["release-path"])) if "release-path" in node else None,
            node_state_path=Path(str(node["node-state-path"])) if "node-state-path" in node else None,
            release_columns=tuple(
                c.strip() for c in str(node.get("release-columns", "admissions,census")).split(",") if c.strip()
            ),
            hospital_id=str(node.get("hospital-id", "")),
            max_local_epochs=int(_number(node, "max-local-epochs", 5)),
            min_noise_multiplier=_number(node, "min-noise-multiplier", 0.5),
            max_grad_norm=_number(node, "max-grad-norm", 1.0),
            accountant=_accountant(str(node.get("privacy-accountant", "prv"))),
            threads=int(_number(node, "torch-threads", 1)),
        )

    @classmethod
    def _from_simulation(cls, node: Mapping[str, Any], run: Mapping[str, Any]) -> NodeConfig:
        if run.get("simulation-data-dir"):
            folder = Path(str(run["simulation-data-dir"]))
        else:  # `flwr run .` with the pyproject defaults: a region generated once, shared by the virtual nodes
            folder = ensure_simulation_region(
                hospitals=int(node.get("num-partitions", 1)),
                days=int(run.get("simulation-days", 730)),
                seed=int(run.get("simulation-region-seed", 0)),
            )
        files = hospital_files(folder)
        partition = int(node["partition-id"])
        if not 0 <= partition < len(files):
            raise NodeConfigError(
                f"virtual node {partition} has no hospital file: {folder} holds {len(files)}; "
                "run as many virtual nodes as hospital files"
            )
        data_path = files[partition]
        hospital = DataSource(str(data_path)).name
        return cls(
            data_path=data_path,
            ledger_path=folder / "ledgers" / f"{hospital}.json",
            epsilon_budget=_number(run, "simulation-epsilon-budget", 1.0),
            delta=_number(run, "simulation-delta", 1e-6),
            max_stay_days=int(_number(run, "simulation-max-stay-days", 14)),
            hospital_id=hospital,
            simulated=True,
        )


def ensure_simulation_region(*, hospitals: int, days: int, seed: int) -> Path:
    """The region folder for a simulation run without ``simulation-data-dir``; generated on first use.

    Every virtual node computes the same path (temp dir, named by hospitals/days/seed); the
    first to arrive generates the region into a private folder and renames it into place, so
    concurrent nodes never see a half-written region.
    """
    import os
    import tempfile

    folder = Path(tempfile.gettempdir()) / f"medalloc-simulation-region-h{hospitals}-d{days}-s{seed}"
    if (folder / "region.json").is_file():
        return folder
    from medalloc_core.synthetic import RegionConfig, generate_region, write_region

    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    write_region(generate_region(RegionConfig(hospitals=hospitals, days=days, seed=seed)), staging / "region")
    try:
        os.rename(staging / "region", folder)
    except OSError:  # another node won the race; its region is identical (same config, same seed)
        pass
    finally:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return folder


def hospital_files(folder: Path) -> list[Path]:
    """The hospitals' data in a region folder, sorted by name (``H000.csv``, ``H001.sqlite``, ``H002.fhir``, ...).

    A file with a data suffix or a FHIR Bundle (``.fhir.json``), or a folder that is an OMOP or
    FHIR export; hidden entries and anything else (``region.json``, ``ledgers/``) are not hospitals.
    """
    if not folder.is_dir():
        raise NodeConfigError(f"simulation-data-dir {folder} is not a folder")

    def is_hospital(p: Path) -> bool:
        if p.name.startswith("."):
            return False
        if p.is_file():
            return p.suffix in DATA_SUFFIXES or p.name.endswith(".fhir.json")
        return p.is_dir() and DataSource(str(p)).kind() != "contract"

    return sorted(p for p in folder.iterdir() if is_hospital(p))


def _number(values: Mapping[str, Any], key: str, default: float | None = None) -> float:
    if key not in values:
        if default is None:
            raise NodeConfigError(f"'{key}' is required")
        return default
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NodeConfigError(f"'{key}' must be a number, got {value!r}")
    return float(value)
