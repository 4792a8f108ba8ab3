"""Every pyproject extra resolves against constraints.txt (issue: `tunesmith[aim]` could not).

Offline and fast: each extra's requirements, followed through the installed packages' own
metadata, must be installed at exactly the version constraints.txt pins and satisfy every
specifier on the way. `make test` installed `.[dev]` with `-c constraints.txt`, so an extra
that passes here is one pip resolved against the pins. The extras `.[dev]` leaves out (CUDA
only) cannot be checked from installed metadata; `make check-extras` (run by .ci/run) has pip
resolve them against the pins in a dry run, and a test here keeps that target naming them all.
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

# Extras `.[dev]` does not install, and why.
NOT_IN_DEV = {"liger": "CUDA only: Liger-Kernel's Triton kernels have no CPU driver"}


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


def dev_extras() -> set[str]:
    return {e for req in EXTRAS["dev"] for e in Requirement(req).extras}


@pytest.mark.parametrize("extra", sorted(set(EXTRAS) - set(NOT_IN_DEV)))
def test_extra_resolves_against_the_pins(extra):
    assert unresolved(extra) == []


def test_dev_installs_every_extra_but_the_cuda_only_ones():
    assert dev_extras() | {"dev"} | set(NOT_IN_DEV) == set(EXTRAS)
    assert not dev_extras() & set(NOT_IN_DEV)


def test_check_extras_dry_runs_every_extra_dev_leaves_out():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("\ncheck-extras:", 1)[1].split("\n\n", 1)[0]
    (named,) = re.findall(r"--dry-run -c constraints.txt \"\.\[([a-z,]+)\]\"", recipe)
    assert set(named.split(",")) == {"dev", *NOT_IN_DEV}
    assert "make check-extras" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
