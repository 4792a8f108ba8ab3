"""Every pyproject extra resolves against constraints.txt (issue: `tunesmith[aim]` could not).

Offline and fast: each extra's requirements, followed through the installed packages' own
metadata, must be installed at exactly the version constraints.txt pins and satisfy every
specifier on the way. `make test` installed `.[dev]` with `-c constraints.txt`, so an extra
that passes here is one pip resolved against the pins. The two trackers whose libraries need
versions that conflict with the pins are named in ISOLATED, with the conflict, and checked to
stay out of `dev`.
"""

from __future__ import annotations

import importlib.metadata as md
import re

import pytest
import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
EXTRAS = PYPROJECT["project"]["optional-dependencies"]

# Extras that cannot resolve against the pins (checked with `pip install --dry-run -c
# constraints.txt`); docs/tracking.md says how to install them in their own environment.
ISOLATED = {
    "aim": "aim 3.29.1 needs filelock<4 (pinned 4.2.11) and fails to build against it",
    "trackio": "trackio >= 0.2 needs pillow<13 (pinned 13.0.0); older ones need gradio 3",
}


# Present in every virtual environment, deliberately not pinned (only their specifiers count).
INSTALLER_TOOLS = {"pip", "setuptools", "wheel"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            out[canonical(name)] = version.strip()
    return out


def requirements_of(extra: str) -> list[Requirement]:
    """The extra's requirements, `tunesmith[a,b]` self-references expanded."""
    out = []
    for text in EXTRAS[extra]:
        req = Requirement(text)
        if canonical(req.name) == "tunesmith":
            for sub in req.extras:
                out += requirements_of(sub)
        else:
            out.append(req)
    return out


def unresolved(extra: str) -> list[str]:
    """Problems of one extra: not installed, not pinned, pinned elsewhere, or out of a specifier."""
    pinned, problems, seen = pins(), [], set()
    todo = [(req, extra) for req in requirements_of(extra)]
    while todo:
        req, via = todo.pop()
        env = {**default_environment(), "extra": ""}
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonical(req.name)
        try:
            installed = md.version(req.name)
        except md.PackageNotFoundError:
            problems.append(f"{req} (from {via}) is not installed")
            continue
        public = Version(installed).public  # torch's local "+cpu" build is the pinned release
        if name not in INSTALLER_TOOLS and pinned.get(name) != public:
            problems.append(f"{name} {installed} is not pinned as such in constraints.txt")
        if not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{name} {installed} does not satisfy {req} (from {via})")
        if name in seen:
            continue
        seen.add(name)
        for text in md.requires(req.name) or []:
            sub = Requirement(text)
            for wanted in req.extras or {""}:
                env = {**default_environment(), "extra": wanted}
                if sub.marker is None or sub.marker.evaluate(env):
                    todo.append((sub, name))
                    break
    return problems


@pytest.mark.parametrize("extra", sorted(set(EXTRAS) - set(ISOLATED)))
def test_extra_resolves_against_the_pins(extra):
    assert unresolved(extra) == []


def test_isolated_extras_stay_out_of_dev():
    dev = {e for req in EXTRAS["dev"] for e in Requirement(req).extras}
    assert set(ISOLATED) <= set(EXTRAS) and not set(ISOLATED) & dev
