"""The image build, checked by reading its inputs (no Docker engine here): the Dockerfile
runs the broker as the chart's non-root uid from pinned bases, installs only hash-checked
dependencies, and the runtime lock agrees with the development lock the tests ran on.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
CHART_VALUES = ROOT / "helm" / "pii-key-broker" / "values.yaml"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """Instructions grouped by build stage (one list per FROM), continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    stages: list[list[Instruction]] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, "an instruction comes before the first FROM"
        stages[-1].append(instruction)
    return stages


@pytest.fixture(scope="module")
def stages() -> list[list[Instruction]]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def chart_values() -> dict[str, object]:
    loaded: dict[str, object] = yaml.safe_load(CHART_VALUES.read_text())
    return loaded


def args_of(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.args for i in stage if i.keyword == keyword]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in args_of(stage, "ENV"):
        env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


def test_parser_reads_stages_and_continuations() -> None:
    parsed = parse_dockerfile("# c\nFROM a:1 AS one\nRUN x \\\n  && y\n\nFROM b:2\n# mid\nUSER 5\n")
    assert parsed == [
        [Instruction("FROM", "a:1 AS one"), Instruction("RUN", "x && y")],
        [Instruction("FROM", "b:2"), Instruction("USER", "5")],
    ]


def test_bases_are_pinned_python_311_slim(stages: list[list[Instruction]]) -> None:
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    for stage in stages:
        image = stage[0].args.split()[0]
        name, _, tag = image.partition(":")
        assert name == "python"
        assert tag, f"{image} has no tag"
        assert tag != "latest"
        assert tag.startswith("3.11-slim")


def test_runtime_runs_as_the_charts_non_root_uid(
    stages: list[list[Instruction]], chart_values: dict[str, object]
) -> None:
    runtime = stages[-1]
    pod = chart_values["podSecurityContext"]
    assert isinstance(pod, dict)
    (user,) = args_of(runtime, "USER")
    # Numeric, so that Kubernetes can verify runAsNonRoot without reading /etc/passwd.
    assert user == f"{pod['runAsUser']}:{pod['runAsGroup']}"
    assert pod["runAsUser"] != 0
    created = " ".join(args_of(runtime, "RUN"))
    assert f"--uid {pod['runAsUser']}" in created
    assert f"--gid {pod['runAsGroup']}" in created
    # The USER line comes before what the container runs.
    keywords = [i.keyword for i in runtime]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")


def test_runtime_has_no_build_tools_and_only_the_built_venv(
    stages: list[list[Instruction]],
) -> None:
    runtime = stages[-1]
    runs = " ".join(args_of(runtime, "RUN"))
    assert "pip" not in runs
    assert "apt-get" not in runs
    copies = args_of(runtime, "COPY")
    assert copies == ["--from=builder /opt/venv /opt/venv"]


def test_dependencies_are_installed_only_with_hashes(stages: list[list[Instruction]]) -> None:
    builder = stages[0]
    commands = [c.strip() for r in args_of(builder, "RUN") for c in r.split("&&")]
    installs = [c for c in commands if re.search(r"\bpip install\b", c)]
    from_locks = [c for c in installs if " -r " in c]
    locks = {lock for c in from_locks for lock in re.findall(r" -r (\S+)", c)}
    assert locks == {"requirements.lock", "requirements-build.lock"}
    for command in from_locks:
        assert "--require-hashes" in command
        assert "--only-binary=:all:" in command
    # The broker's own wheel goes in without an index: nothing unpinned can slip in.
    (own,) = [c for c in installs if c not in from_locks]
    assert "--no-index" in own
    assert "--no-deps" in own
    assert "/wheels/pii_key_broker-" in own
    for lock in ("requirements.lock", "requirements-build.lock"):
        assert (ROOT / lock).is_file()


def test_entrypoint_serves_on_the_charts_port(
    stages: list[list[Instruction]], chart_values: dict[str, object]
) -> None:
    runtime = stages[-1]
    assert [json.loads(a) for a in args_of(runtime, "ENTRYPOINT")] == [["broker"]]
    assert [json.loads(a) for a in args_of(runtime, "CMD")] == [["serve"]]
    broker = chart_values["broker"]
    assert isinstance(broker, dict)
    assert args_of(runtime, "EXPOSE") == [str(broker["port"])]
    env = env_of(runtime)
    assert env["BROKER_PORT"] == str(broker["port"])
    assert env["BROKER_HOST"] == "0.0.0.0"  # noqa: S104 - a container listens on all
    # The read-only root filesystem: data under BROKER_HOME (the chart's volume), no .pyc.
    assert env["BROKER_HOME"] == broker["home"]
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert "/opt/venv/bin" in env["PATH"]


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule for the build context: the last matching pattern wins."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.removeprefix("!").rstrip("/")
        target = path if "/" in body else path.split("/")[0]
        if fnmatch.fnmatch(target, body.removeprefix("**/")) or fnmatch.fnmatch(path, body):
            excluded = not negate
    return excluded


def test_build_context_holds_what_the_build_copies_and_no_secrets(
    stages: list[list[Instruction]],
) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        src
        for args in args_of(stages[0], "COPY")
        if not args.startswith("--from")
        for src in args.split()[:-1]
    ]
    assert copied
    for src in copied:
        assert not dockerignore_excludes(patterns, src), src
    for private in (".broker", ".venv", ".git", ".env", "tests", "helm", "bench"):
        assert dockerignore_excludes(patterns, private), private


LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def read_lock(path: Path) -> dict[str, str]:
    """Package -> pinned version; every pin must carry at least one sha256 hash."""
    pins: dict[str, str] = {}
    hashes: dict[str, int] = {}
    current = ""
    for line in path.read_text().splitlines():
        match = LOCK_LINE.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            pins[current] = match.group(2)
            hashes[current] = 0
        hashes[current] = hashes.get(current, 0) + line.count("--hash=sha256:")
    unhashed = sorted(name for name, count in hashes.items() if name and count == 0)
    assert unhashed == [], f"{path.name}: pins without hashes: {unhashed}"
    return pins


def test_runtime_lock_matches_the_development_lock() -> None:
    runtime = read_lock(ROOT / "requirements.lock")
    dev = read_lock(ROOT / "requirements-dev.lock")
    build = read_lock(ROOT / "requirements-build.lock")
    assert len(runtime) > 20
    for lock in (runtime, build):
        differing = {
            name: (version, dev[name])
            for name, version in lock.items()
            if name in dev and dev[name] != version
        }
        assert differing == {}
    # The image runs on exactly what the tests ran on: runtime pins are a subset.
    assert runtime.keys() <= dev.keys()


def test_runtime_lock_is_the_projects_runtime_set() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runtime = read_lock(ROOT / "requirements.lock")
    for spec in project["project"]["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in runtime, f"{name} is missing from requirements.lock"
        assert requirement.specifier.contains(runtime[name]), name
    dev_only = {
        canonicalize_name(Requirement(s).name)
        for s in project["project"]["optional-dependencies"]["dev"]
    }
    assert not dev_only & runtime.keys(), "development tools in the runtime image"
    build = read_lock(ROOT / "requirements-build.lock")
    for spec in project["build-system"]["requires"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert requirement.specifier.contains(build[name]), name
