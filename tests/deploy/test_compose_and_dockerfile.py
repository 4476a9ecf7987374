"""docker-compose.yml and the Dockerfile checked against the code, as far as a machine without
a Docker daemon can: every FADA_* variable they set is a setting (or one the code reads by
name) and its value validates; every `fada ...` command line parses with the real CLI; the
healthcheck's path is a route of the gateway; the Dockerfile copies every package the
project installs, and its PostgreSQL client is the compose server's major version. A renamed
setting, option or command fails here, not at a site's first `docker compose up`."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from cryptography.fernet import Fernet
from typer.testing import CliRunner

from cli.main import app as cli_app
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
READ_BY_NAME = {"FADA_MIGRATIONS_DIR"}  # read with os.environ, not through Settings (shared/db/migrate.py)
FADA_SERVICES = ("migrate", "api", "worker")


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # resolves the <<: merges
    assert isinstance(loaded, dict)
    return loaded


def _value(raw: object) -> object:
    """A compose value as the container sees it, with the shell variables unset: ``${X:-d}``
    gives ``d``; ``${X:?message}`` (required) a valid stand-in; passthrough entries stay None."""
    if not isinstance(raw, str):
        return raw
    if re.fullmatch(r"\$\{FADA_SECRETS_KEY:\?[^}]*\}", raw):
        return Fernet.generate_key().decode()
    default = re.fullmatch(r"\$\{[A-Z0-9_]+:-([^}]*)\}", raw)
    if default:
        return default.group(1)
    assert "${" not in raw, f"an interpolation this test does not know: {raw}"
    return raw


def _env(service: str) -> dict[str, object]:
    env = _compose()["services"][service].get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping, so the anchors merge"
    return {name: _value(raw) for name, raw in env.items()}


def _setting_names() -> set[str]:
    return {f"FADA_{name.upper()}" for name in Settings.model_fields}


@pytest.mark.parametrize("service", FADA_SERVICES)
def test_every_fada_variable_a_service_gets_is_a_setting_and_its_value_validates(service: str) -> None:
    env = _env(service)
    fada = {name: value for name, value in env.items() if name.startswith("FADA_")}
    assert set(fada) - _setting_names() - READ_BY_NAME == set()
    assert {"FADA_DATABASE_URL", "FADA_BROKER_URL", "FADA_SECRETS_KEY"} <= set(fada)  # the shared anchor
    values = {name.removeprefix("FADA_").lower(): value for name, value in fada.items()
              if value is not None and name not in READ_BY_NAME}
    settings = Settings.model_validate(values)  # strings, as the environment gives them
    assert settings.database_url.startswith("postgresql+psycopg://") and settings.broker_url.startswith("redis://")
    if service == "worker":  # the ${...:-16} defaults, as integers the worker accepts
        assert (settings.batch_size, settings.decode_rows) == (16, 16)


def test_the_dockerfile_s_variables_are_settings_and_it_copies_every_installed_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    variables = set(re.findall(r"\b(FADA_[A-Z0-9_]+)=", dockerfile))
    assert variables and variables - _setting_names() - READ_BY_NAME == set()
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")}
    for source in copied:
        assert (ROOT / source).exists(), source
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, "a package the install finds but the image does not copy"
    assert (ROOT / "migrations").is_dir() and "migrations" in copied  # FADA_MIGRATIONS_DIR points there
    assert re.search(r'^CMD \["fada", ', dockerfile, re.M)


def test_the_image_s_postgresql_client_is_the_compose_server_s_major_version() -> None:
    """`fada backup` runs the image's pg_dump against compose's server: an older pg_dump refuses
    a newer server, and a newer one's dump is not promised to load into an older server."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    client = re.search(r"^ARG PG_MAJOR=(\d+)$", dockerfile, re.M)
    assert client is not None and '"postgresql-client-${PG_MAJOR}"' in dockerfile
    server = re.fullmatch(r"postgres:(\d+)(?:[.-].*)?", _compose()["services"]["postgres"]["image"])
    assert server is not None, "the postgres image names its major version"
    assert client.group(1) == server.group(1)
    # The client comes from the base image's Debian release, so that release must be named.
    assert re.search(r"^FROM python:[\d.]+-slim-(trixie|forky)$", dockerfile, re.M)


def _fada_commands() -> list[list[str]]:
    compose = _compose()
    lines = [compose["services"][name]["command"] for name in FADA_SERVICES]
    cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.M)
    assert cmd is not None
    lines.append(yaml.safe_load(cmd.group(1)))
    for doc in ("docker-compose.yml", "README.md"):  # the commands they tell an operator to run
        told = re.findall(r"docker compose exec \w+ (fada [^#\n]+)", (ROOT / doc).read_text())
        lines += [shlex.split(line) for line in told]
    return [list(line) for line in dict.fromkeys(tuple(map(str, line)) for line in lines)]


@pytest.mark.parametrize("argv", _fada_commands(), ids=" ".join)
def test_every_fada_command_line_parses_with_the_real_cli(argv: list[str]) -> None:
    """With --help added, the CLI parses the whole line (an unknown command or option is an
    error) and stops before running anything."""
    assert argv[0] == "fada"
    result = CliRunner().invoke(cli_app, [*argv[1:], "--help"], prog_name="fada")
    assert result.exit_code == 0, result.output
    path = " ".join(_command_path(argv))
    assert f"Usage: {path} [OPTIONS]" in " ".join(result.output.split())  # that command's help, not a group's


def _command_path(argv: list[str]) -> list[str]:
    """``fada`` and the words of ``argv`` that name its commands (not their arguments)."""
    command = typer.main.get_command(cli_app)
    path = [argv[0]]
    for word in argv[1:]:
        subcommands = getattr(command, "commands", {})  # a group's (typer has its own click classes)
        if word not in subcommands:
            break
        command = subcommands[word]
        path.append(word)
    return path


def test_the_api_healthcheck_asks_a_route_the_gateway_has(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app

    test = _compose()["services"]["api"]["healthcheck"]["test"]
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", " ".join(test))
    assert url is not None
    assert url.group(1) == "8000" and "8000:8000" in _compose()["services"]["api"]["ports"]
    with TestClient(create_app(Settings(data_dir=tmp_path))) as client:
        assert client.get(url.group(2)).status_code == 200
