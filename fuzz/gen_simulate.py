"""Generators for ``simulate``: scenario TOML files broken one way each, and the command's paths.

Every case edits the embedded default scenario (``medalloc simulate --show-default``), so the
generators follow the scenario format as it changes on main: an edit sets one key of one
section (adding it when the default lacks it), replaces a section, or damages the bytes. A
case passes only when ``simulate`` refuses it before any simulation starts (the registry's
timeout turns a hang, such as Ray waiting for ``client-cpus = nan`` CPUs, into a failure).
"""

from __future__ import annotations

import random
import re

from .registry import Case, generator

SCENARIO = "scenario.toml"
_ARGS = ("--config", SCENARIO, "--out", "results")


def default_text() -> str:
    from medalloc.simulations.scenario import default_scenario_text

    return default_scenario_text()


def set_key(text: str, section: str, key: str, value: str) -> str:
    """``text`` with ``key = value`` in ``[section]`` (replacing the key's line, else added after the header)."""
    header = re.search(rf"^\[{re.escape(section)}\][^\n]*\n", text, re.M)
    if header is None:
        return text.rstrip("\n") + f"\n\n[{section}]\n{key} = {value}\n"
    start = header.end()
    following = re.search(r"^\[", text[start:], re.M)
    end = start + following.start() if following else len(text)
    body = text[start:end]
    line = re.compile(rf"^{re.escape(key)}\s*=.*$", re.M)
    body = line.sub(lambda _: f"{key} = {value}", body, count=1) if line.search(body) else f"{key} = {value}\n" + body
    return text[:start] + body + text[end:]


def drop_section(text: str, section: str) -> str:
    """``text`` without ``[section]`` and its keys."""
    return re.sub(rf"^\[{re.escape(section)}\][^\n]*\n(?:(?!\[)[^\n]*\n)*", "", text, flags=re.M)


def _case(text: str | bytes, expect: tuple[str, ...], detail: str) -> Case:
    data = text.encode() if isinstance(text, str) else text
    return Case("simulate", _ARGS, {SCENARIO: data}, (SCENARIO, *expect), detail)


# (section, key, values no scenario may hold, what the error must name)
_BAD_KEYS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("simulation", "client-cpus", ("nan", "inf", "0", "-1", "100000", '"1"', "true"), "client-cpus"),
    ("privacy", "epsilon-budget", ("nan", "0", "-1", "inf", "-inf", '"10"', "[]"), "epsilon-budget"),
    ("privacy", "delta", ("nan", "0", "1", "2", "-1e-5", "inf", '"1e-5"'), "delta"),
    ("comparisons", "baselines", ("5", '"seasonal_naive"', '["arima"]', "[1, 2]", "{a = 1}"), "baselines"),
    ("comparisons", "local-only", ('"no"', "1", "nan"), "local-only"),
    ("comparisons", "centralized", ('"yes"', "0"), "centralized"),
    ("output", "forecast-plots", ("-1", "1.5", "nan", '"3"', "100000000"), "forecast-plots"),
    ("federation", "dp-noise-multiplier", ("nan", "inf", "-1", '"1.3"'), "dp-noise-multiplier"),
    ("federation", "dp-max-grad-norm", ("nan", "inf", "0", "-1"), "dp-max-grad-norm"),
    ("federation", "lr", ("nan", "inf", "0", '"fast"'), "lr"),
    ("federation", "num-server-rounds", ("0", "1.5", "inf", "nan", '"5"'), "num-server-rounds"),
    ("federation", "hidden", ("0", "1.5", "inf", "-64"), "hidden"),
    ("federation", "history", ("0", "inf", "nan"), "history"),
    ("federation", "horizon", ("0", "-7", "inf", "nan", "1.5", '"14"'), "horizon"),
    ("federation", "strategy", ('"fedsgd"', "7", '""'), "strategy"),
    ("federation", "no-such-key", ("1",), "no-such-key"),
    ("region", "hospitals", ("0", "100000000", "1.5", '"5"'), "hospitals"),
    ("region", "days", ("0", "27", "100000000"), "days"),
    ("region", "start", ('"9999-12-01"', '"0001-01-01"', '"2023-02-30"', "5"), "start"),
    ("region", "no_such_field", ("1",), "no_such_field"),
    ("region", "data-dir", ("5", '"no-such-folder"', "[]"), "data-dir"),
    ("evaluation", "weeks", ("0", "-1", "1.5", "nan", '"16"', "true", "100000"), "weeks"),
    ("evaluation", "origins", ("0", "-1", "2.5", "inf", '"8"', "100000"), "origins"),
    ("evaluation", "validation-days", ("0", "1", "nan", '"28"'), "validation-days"),
    ("evaluation", "no-such-key", ("1",), "no-such-key"),
)


@generator("simulate", "key")
def _bad_key(rng: random.Random) -> Case:
    """One key of one section set to a value it cannot hold (NaN, infinite, zero, wrong type, unknown)."""
    section, key, values, named = rng.choice(_BAD_KEYS)
    value = rng.choice(values)
    return _case(set_key(default_text(), section, key, value), (named,), f"[{section}] {key} = {value}")


@generator("simulate", "shape")
def _bad_shape(rng: random.Random) -> Case:
    """A section that is not a table (``region = 3``), an unknown section, a bad name."""
    text = default_text()
    kind = rng.randrange(4)
    if kind == 0:
        section = rng.choice(["region", "federation", "privacy", "comparisons", "evaluation", "output", "simulation"])
        value = rng.choice(["3", '"x"', "[1, 2]", "true"])
        # A top-level key must come before the first table header.
        edited = f"{section} = {value}\n" + drop_section(text, section)
        return _case(edited, (f"[{section}]",), f"{section} = {value}")
    if kind == 1:
        name = rng.choice(["federaton", "privacy.extra", "results"])
        return _case(text.rstrip("\n") + f"\n\n[{name}]\nx = 1\n", (name.split(".")[0],), f"section [{name}]")
    if kind == 2:
        value = rng.choice(["3", "[1]", "{a = 1}", "true"])
        edited = re.sub(r"^name\s*=.*$", f"name = {value}", text, count=1, flags=re.M)
        if edited == text:
            edited = f"name = {value}\n" + text
        return _case(edited, ("name",), f"name = {value}")
    return _case(text.replace("[federation]", "[federation]\nlr = 0.1\nlr = 0.2", 1), ("TOML",), "a key twice")


@generator("simulate", "bytes")
def _bad_bytes(rng: random.Random) -> Case:
    """Not UTF-8, not TOML, truncated mid-table, nested past the parser."""
    text = default_text()
    kind = rng.randrange(5)
    if kind == 0:
        latin = text.replace("# The default", "# Défault", 1).encode("latin-1", errors="replace")
        return _case(latin + b"\n# \xe9t\xe9\n", ("UTF-8",), "Latin-1 text")
    if kind == 1:
        return _case(b"\xff\xfe" + text.encode("utf-16-le"), ("UTF-8",), "UTF-16")
    if kind == 2:
        cut = text.index("[federation]") + len("[federa")
        return _case(text[:cut], ("TOML",), "cut inside a header")
    if kind == 3:
        return _case("x = " + "[" * 100_000, ("TOML",), "deep nesting")
    return _case(text.replace("=", ":", 1), ("TOML",), "':' for '='")


@generator("simulate", "paths")
def _bad_paths(rng: random.Random) -> Case:
    kind = rng.randrange(3)
    if kind == 0:
        return Case("simulate", ("--config", "missing.toml", "--out", "r"), {}, ("missing.toml",), "no file")
    if kind == 1:
        return Case("simulate", ("--config", "folder", "--out", "r"), {"folder/.keep": b""}, ("folder",), "folder")
    files = {SCENARIO: default_text().encode(), "results/summary.json": b"{}"}
    return Case("simulate", _ARGS, files, ("results", "--force"), "results folder not empty")
