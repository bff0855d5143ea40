"""Settings from TOML and LIBRA_* variables; `libra-node config check`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from libra_node.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for variable in [v for v in os.environ if v.startswith("LIBRA_")]:
        monkeypatch.delenv(variable)


def test_defaults_are_local_and_safe(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    settings = load_settings()
    assert settings.listener.host == "127.0.0.1"
    assert settings.listener.port == 11112
    assert settings.listener.ae_title == "LIBRA"
    assert settings.metrics.host == "127.0.0.1"
    assert settings.broker.url == ""
    assert settings.pacs.transport == "none"
    assert settings.model.path is None
    assert settings.ledger_url == f"sqlite:///{tmp_path / 'libra-node' / 'ledger.sqlite3'}"
    assert settings.spool_dir == tmp_path / "libra-node" / "spool"


def test_toml_file_then_environment_override(tmp_path, monkeypatch):
    config = tmp_path / "node.toml"
    config.write_text('[listener]\nport = 104\nae_title = "FROM_FILE"\nallowed_callers = ["A"]\n')
    monkeypatch.setenv("LIBRA_LISTENER__PORT", "2104")
    monkeypatch.setenv("LIBRA_LISTENER__ALLOWED_HOSTS", "10.0.0.1, 10.0.0.2")

    settings = load_settings(config)

    assert settings.listener.port == 2104
    assert settings.listener.ae_title == "FROM_FILE"
    assert settings.listener.allowed_callers == ["A"]
    assert settings.listener.allowed_hosts == ["10.0.0.1", "10.0.0.2"]


def test_config_file_named_by_environment(tmp_path, monkeypatch):
    config = tmp_path / "node.toml"
    config.write_text('[pacs]\ntransport = "dicomweb"\nurl = "https://pacs.example/dicom-web"\n')
    monkeypatch.setenv("LIBRA_CONFIG", str(config))
    assert load_settings().pacs.transport == "dicomweb"


def test_json_list_in_environment(monkeypatch):
    monkeypatch.setenv("LIBRA_LISTENER__ALLOWED_CALLERS", '["PACS1", "CR2"]')
    assert load_settings().listener.allowed_callers == ["PACS1", "CR2"]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[listener]\nport = 70000\n", "listener.port (env LIBRA_LISTENER__PORT)"),
        ("[listener]\nae_title = \"MUCH_TOO_LONG_AE_TITLE\"\n", "listener.ae_title"),
        ("[listener]\nprot = 104\n", "listener.prot"),
        ("[pacs]\ntransport = \"carrier pigeon\"\n", "pacs.transport"),
        ("[listener]\ntls_cert = \"a.crt\"\n", "tls_cert and tls_key must be given together"),
        ("[listener]\nquiet_seconds = 10\nstable_seconds = 5\n", "stable_seconds"),
        ("[listener\n", "cannot read configuration"),
    ],
)
def test_invalid_configuration_says_which_key(tmp_path, toml, message):
    config = tmp_path / "node.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as error:
        load_settings(config)
    assert message in str(error.value)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LIBRA_")}
    return subprocess.run(
        [sys.executable, "-m", "libra_node", *args],
        capture_output=True, text=True, timeout=60, env={**base, **(env or {})},
    )


def test_config_check_passes_on_a_usable_configuration(tmp_path):
    config = tmp_path / "node.toml"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config.write_text(f'[node]\nstate_dir = "{tmp_path / "state"}"\n[listener]\nport = {port}\n'
                      "min_free_bytes = 0\n")
    result = run_cli("config", "check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration is usable" in result.stdout
    assert "note     model folder: model.path is not set" in result.stdout


def test_config_check_names_each_problem(tmp_path):
    config = tmp_path / "node.toml"
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    config.write_text(
        f'[node]\nstate_dir = "{tmp_path / "state"}"\n'
        f"[listener]\nport = {port}\nmin_free_bytes = {1 << 60}\n"
        f'tls_cert = "{tmp_path / "missing.crt"}"\ntls_key = "{tmp_path / "missing.key"}"\n'
    )
    result = run_cli("config", "check", "--config", str(config))
    busy.close()
    assert result.returncode == 1
    assert "PROBLEM  spool free space" in result.stdout
    assert "PROBLEM  listener port" in result.stdout
    assert "PROBLEM  listener TLS: listener.tls_cert" in result.stdout


def test_config_check_reports_invalid_values_in_plain_words(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text("[listener]\nport = \"eleven\"\n")
    result = run_cli("config", "check", "--config", str(config))
    assert result.returncode == 2
    assert "listener.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("serve", "config"):
        assert command in result.stdout


def test_config_check_tests_pacs_broker_and_model_folder(tmp_path):
    from dicom_tools import free_port
    from libra_node.model.tiny import write_tiny_checkpoint

    model = tmp_path / "model"
    write_tiny_checkpoint(model)
    import shutil

    shutil.rmtree(model / "rad-dino")
    dead = free_port()  # nothing listens there
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nstate_dir = "{tmp_path / "state"}"\n'
        f"[listener]\nport = {free_port()}\nmin_free_bytes = 0\n"
        f'[pacs]\ntransport = "dimse"\nport = {dead}\ntimeout_seconds = 2\n'
        f'[broker]\nurl = "redis://127.0.0.1:{dead}/0"\n'
        f'[model]\npath = "{model}"\n'
    )
    result = run_cli("config", "check", "--config", str(config))
    assert result.returncode == 1
    assert f"PROBLEM  PACS: C-ECHO with" in result.stdout and str(dead) in result.stdout
    assert "PROBLEM  broker: broker redis://127.0.0.1" in result.stdout
    assert "PROBLEM  model folder: no local RAD-DINO folder" in result.stdout


def test_config_check_passes_with_a_reachable_pacs_and_a_good_model(tmp_path):
    from dicom_tools import free_port
    from libra_node.model.tiny import write_tiny_checkpoint
    from libra_node.local_orthanc import LocalOrthanc, Modality

    model = tmp_path / "model"
    write_tiny_checkpoint(model)
    orthanc = LocalOrthanc(tmp_path / "orthanc", modalities=[Modality("LIBRA", "LIBRA", "127.0.0.1", 104)])
    orthanc.start()
    try:
        config = tmp_path / "node.toml"
        config.write_text(
            f'[node]\nstate_dir = "{tmp_path / "state"}"\n'
            f"[listener]\nport = {free_port()}\nmin_free_bytes = 0\n"
            f'[pacs]\ntransport = "dimse"\nport = {orthanc.dicom_port}\nae_title = "{orthanc.ae_title}"\n'
            f'[model]\npath = "{model}"\n'
        )
        result = run_cli("config", "check", "--config", str(config))
    finally:
        orthanc.stop()
    assert result.returncode == 0, result.stdout
    for name in ("PACS", "broker", "model folder"):
        assert f"ok       {name}" in result.stdout
