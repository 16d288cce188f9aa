"""Helpers for testing the CLI in process (imported by the CLI test modules)."""

from __future__ import annotations

from typer.testing import CliRunner

from transferkit.cli.main import app

runner = CliRunner()


def run(*args: object):
    """Invoke ``transferkit ARGS...`` in process; arguments are turned into strings."""
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> None:
    """Exit code 2, exactly one ``error: ...`` line on stderr containing every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    err = result.stderr.strip().splitlines()
    assert len(err) == 1, result.stderr
    assert err[0].startswith("error: ")
    assert "Traceback" not in result.output
    for frag in fragments:
        assert frag in err[0], err[0]
