"""`affectstream serve`: clear one-line errors before anything starts (the running service is
tested in tests/pipeline/test_service.py and tests/e2e/test_service_crash.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from affectstream.pipeline.cli.kafka import kafka_cli
from tests.conftest import free_port


def _serve(*args: str):
    return CliRunner().invoke(kafka_cli, ["serve", *args])


def _one_clear_line(res, code: int, text: str) -> None:
    assert res.exit_code == code, res.output
    assert text in res.output and "Traceback" not in res.output


@pytest.mark.integration
def test_unreachable_broker(redis_url):
    res = _serve("--bootstrap", f"127.0.0.1:{free_port()}", "--redis-url", redis_url,
                 "--connect-timeout", "1")
    _one_clear_line(res, 3, "no Kafka broker answered")


def test_unreachable_redis():
    res = _serve("--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    _one_clear_line(res, 1, "does not answer")


@pytest.mark.parametrize("yaml_text, message", [
    ("kafka:\n  consumer: 2\n", "consumer"),                       # typo: unknown key
    ("kafka:\n  consumers: 0\n", "consumers"),                     # out of range
    ("api:\n  host: 0.0.0.0\n", "without an auth token"),           # exposed without a token
])
def test_bad_configuration(tmp_path, yaml_text, message):
    f = tmp_path / "service.yaml"
    f.write_text(yaml_text)
    _one_clear_line(_serve("--config", str(f)), 2, message)


def test_missing_config_file(tmp_path):
    _one_clear_line(_serve("--config", str(tmp_path / "nope.yaml")), 2, "not found")


def test_serve_is_a_command_of_the_main_cli():
    import typer.main

    from affectstream.pipeline.cli.main import app

    cmd = typer.main.get_command(app).commands["serve"]
    assert {p.name for p in cmd.params} >= {"config", "bootstrap", "redis_url", "port"}
