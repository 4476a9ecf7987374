"""``fada`` run in-process on a test's database, its exit code checked."""

from __future__ import annotations

from typer.testing import CliRunner, Result

from cli.main import app

runner = CliRunner()


def cli(url: str, *args: str, exit_code: int = 0) -> Result:
    result = runner.invoke(app, list(args), env={"FADA_DATABASE_URL": url})
    assert result.exit_code == exit_code, result.output
    return result
