"""The deployment files: the compose file against the compose specification and the settings,
the Dockerfile's promises, and the sample Orthanc configuration in a real Orthanc.

No Docker engine runs here: the compose file is validated with check-jsonschema's
copy of the compose specification, and what the services are told is checked
against the node's own settings object.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from packaging.specifiers import SpecifierSet
from ruamel.yaml import YAML

from libra_node import logs
from libra_node.config import CONFIG_ENV_VAR, ENV_PREFIX, Settings, load_settings
from libra_node.local_orthanc import LocalOrthanc, orthanc_available

REPOSITORY = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPOSITORY / "docker-compose.yml"
DOCKERFILE = REPOSITORY / "Dockerfile"
ORTHANC_SAMPLE = REPOSITORY / "orthanc" / "orthanc.json"
# LIBRA_* variables the node reads that are not settings.
NON_SETTING_VARIABLES = {CONFIG_ENV_VAR, logs._HASH_KEY_ENV}
LOOPBACK_BY_DEFAULT = "${PUBLISH_ADDRESS:-127.0.0.1}:"


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    return YAML(typ="safe").load(path.read_text())


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    checker = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=60,
    )


def setting_variables() -> set[str]:
    """LIBRA_<SECTION>__<KEY> for every field of every section of the settings object."""
    return {
        f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
        for section, field in Settings.model_fields.items()
        for key in field.annotation.model_fields  # type: ignore[union-attr]
    }


def unknown_variables(compose: dict[str, Any]) -> dict[str, list[str]]:
    """Per service, the LIBRA_* variables it sets that the node does not know."""
    known = setting_variables() | NON_SETTING_VARIABLES
    found: dict[str, list[str]] = {}
    for name, service in compose["services"].items():
        unknown = [v for v in service.get("environment", {}) if v.startswith(ENV_PREFIX)
                   and v not in known]
        if unknown:
            found[name] = unknown
    return found


def interpolated(value: str) -> str:
    """A compose value with ${VAR:-default} as its default and other variables as a sample."""
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))
    return re.sub(r"\$\{[A-Z_]+(:\?[^}]*)?\}", "secret", value)


# --- the compose file -------------------------------------------------------------------------


def test_the_compose_file_follows_the_compose_specification(tmp_path):
    result = validate(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr

    broken = load_compose()
    broken["services"]["redis"]["healthcheck"]["retries"] = "many"
    broken["services"]["node"]["ports"] = "11112"
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(json.dumps(broken))
    assert validate(copy).returncode != 0  # the validator does catch mistakes


def test_every_libra_variable_is_a_setting_and_the_values_load(monkeypatch):
    compose = load_compose()
    assert unknown_variables(compose) == {}
    doctored = load_compose()
    doctored["services"]["node"]["environment"]["LIBRA_PACS__HOSTNAME"] = "pacs"
    assert unknown_variables(doctored) == {"node": ["LIBRA_PACS__HOSTNAME"]}

    for name, service in compose["services"].items():
        for variable in [v for v in os.environ if v.startswith(ENV_PREFIX)]:
            monkeypatch.delenv(variable)
        for variable, value in service.get("environment", {}).items():
            if variable.startswith(ENV_PREFIX) and variable not in NON_SETTING_VARIABLES:
                monkeypatch.setenv(variable, interpolated(value))
        load_settings(None)  # raises with the offending key if a value does not fit


def test_the_services_the_issue_asks_for_are_there():
    services = load_compose()["services"]
    assert set(services) == {"redis", "orthanc", "node", "io-worker", "gpu-worker", "flower"}
    assert services["node"]["command"] == ["libra-node", "serve"]
    assert services["io-worker"]["command"] == ["libra-node", "worker", "--queues", "io"]
    assert services["gpu-worker"]["command"] == ["libra-node", "worker", "--queues", "gpu"]
    assert services["flower"]["command"][:4] == ["celery", "-A", "workers.app", "flower"]
    assert services["orthanc"]["build"]["target"] == "orthanc"
    assert {services[s]["build"]["target"] for s in ("node", "io-worker", "gpu-worker",
                                                     "flower")} == {"node"}


def test_published_ports_listen_on_loopback_unless_configured():
    services = load_compose()["services"]
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published and all(port.startswith(LOOPBACK_BY_DEFAULT) for port in published)


def test_redis_persists_and_requires_the_password_the_broker_url_carries():
    services = load_compose()["services"]
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    password = command[command.index("--requirepass") + 1]
    assert password.startswith("${REDIS_PASSWORD")
    for name in ("node", "io-worker", "gpu-worker", "flower", "orthanc"):
        url = services[name]["environment"]["LIBRA_BROKER__URL"]
        assert url == f"redis://:{password}@${{REDIS_HOST:-redis}}:6379/0", name
    assert "/data" in services["redis"]["volumes"][0]


def test_the_gpu_worker_reserves_an_nvidia_gpu_and_reads_the_model_read_only():
    gpu = load_compose()["services"]["gpu-worker"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    (model,) = gpu["volumes"]
    assert model["read_only"] is True and model["target"] == gpu["environment"]["LIBRA_MODEL__PATH"]


def test_state_is_in_named_volumes_shared_only_where_needed():
    compose = load_compose()
    services = compose["services"]
    assert set(compose["volumes"]) == {"node-state", "orthanc-db", "redis-data"}
    sharing = {name for name, service in services.items()
               if any(str(v).startswith("node-state:") for v in service.get("volumes", []))}
    assert sharing == {"node", "io-worker", "orthanc"}
    state_dir = services["node"]["environment"]["LIBRA_NODE__STATE_DIR"]
    for name in sharing:
        assert f"node-state:{state_dir}" in services[name]["volumes"]
        assert services[name]["environment"]["LIBRA_NODE__STATE_DIR"] == state_dir


def test_health_checks_ask_each_service_the_right_question():
    services = load_compose()["services"]
    checks = {name: " ".join(service["healthcheck"]["test"]) for name, service in services.items()}
    assert "http://127.0.0.1:9464/health" in checks["node"]
    assert services["node"]["environment"]["LIBRA_METRICS__PORT"] == "9464"
    assert "redis-cli ping" in checks["redis"]
    assert "http://127.0.0.1:8042/system" in checks["orthanc"]
    assert "127.0.0.1:5555" in checks["flower"] and "--port=5555" in services["flower"]["command"]


# --- the Dockerfile -----------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = match.group(1)
        if current and line.strip() and not line.lstrip().startswith("#"):
            stages.setdefault(current, []).append(line.strip())
    return stages


def test_the_dockerfile_pins_torch_within_the_projects_range_and_runs_as_a_user():
    text = DOCKERFILE.read_text()
    pinned = re.search(r"ARG TORCH_VERSION=(\S+)", text).group(1)
    pyproject = (REPOSITORY / "pyproject.toml").read_text()
    allowed = re.search(r'"torch([^"]+)"', pyproject).group(1)
    assert pinned in SpecifierSet(allowed)
    assert 'pip install "torch==${TORCH_VERSION}"' in text
    stages = dockerfile_stages()
    assert set(stages) == {"node", "orthanc"}
    for name, lines in stages.items():
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert users and users[-1] not in ("root", "0"), name


def test_the_orthanc_image_finds_the_plugin_and_the_nodes_packages():
    text = DOCKERFILE.read_text()
    sample = json.loads(ORTHANC_SAMPLE.read_text())
    assert "COPY orthanc ./orthanc" in text and "WORKDIR /opt/libra-node" in text
    assert sample["PythonScript"] == "/opt/libra-node/orthanc/libra_plugin.py"
    assert "ENV PYTHONPATH=/opt/libra-node/venv/lib/python3.11/site-packages" in text
    assert "ENV LIBRA_NODE__STATE_DIR=" in text and "LIBRA_NODE__STATE_DIR" in setting_variables()


# --- the sample Orthanc configuration ----------------------------------------------------------


def test_the_sample_orthanc_configuration_runs_the_plugin_in_a_real_orthanc(tmp_path):
    assert orthanc_available(), "Orthanc and its DICOMweb plugin (Debian packages) are required"
    sample = json.loads(ORTHANC_SAMPLE.read_text())
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nstate_dir = "{tmp_path / "state"}"\n'
                      '[broker]\nurl = "redis://127.0.0.1:9/0"\n')
    orthanc = LocalOrthanc(tmp_path / "orthanc", environment={
        "PYTHONPATH": f"{sysconfig.get_paths()['purelib']}:{REPOSITORY}",
        "LIBRA_CONFIG": str(config),
    })
    orthanc.environment["ORTHANC_PASSWORD"] = orthanc.password
    # Everything from the sample except where things live on this machine.
    local = {key: value for key, value in sample.items()
             if key not in ("StorageDirectory", "IndexDirectory", "HttpPort", "DicomPort",
                            "RemoteAccessAllowed", "PythonScript")}
    local["PythonScript"] = str(REPOSITORY / "orthanc" / "libra_plugin.py")
    orthanc.extra_config = local

    with orthanc:  # the password reaches Orthanc through ${ORTHANC_PASSWORD}
        assert {"dicom-web", "python"} <= set(orthanc.rest("GET", "/plugins").json())
    log = orthanc.log_path.read_text(errors="replace")
    assert "libra plugin: following Orthanc's stable studies" in log
    assert "libra plugin: disabled" not in log
