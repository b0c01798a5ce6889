"""Secrets in the config: where they come from, and that they can be stripped."""

from __future__ import annotations

import pytest

from affectstream.pipeline.config import (SECRET_FILES, apply_secrets, load_config,
                                          secret_fields, without_secrets, write_secrets_dir)


def test_every_secret_field_has_a_variable_and_a_file_name():
    assert set(secret_fields()) == set(SECRET_FILES)
    assert ("api", "auth_token") in SECRET_FILES and ("redis", "password") in SECRET_FILES


def test_sources_in_order_variable_file_then_directory(tmp_path):
    d = tmp_path / "secrets"
    d.mkdir()
    (d / "api-token").write_text("from-dir\n")
    (d / "redis-password").write_text("pw-dir")
    f = tmp_path / "tok"
    f.write_text("from-file\n")
    env = {"AFFECTSTREAM_SECRETS_DIR": str(d), "AFFECTSTREAM_API_TOKEN_FILE": str(f)}
    out = apply_secrets({}, env)
    assert out == {"api": {"auth_token": "from-file"}, "redis": {"password": "pw-dir"}}
    out = apply_secrets({}, {**env, "AFFECTSTREAM_API_TOKEN": "from-var"})
    assert out["api"]["auth_token"] == "from-var"
    cfg = load_config(env=env)
    assert cfg.api.auth_token == "from-file" and cfg.redis.password == "pw-dir"
    with pytest.raises(FileNotFoundError, match="AFFECTSTREAM_REDIS_PASSWORD_FILE"):
        apply_secrets({}, {"AFFECTSTREAM_REDIS_PASSWORD_FILE": str(tmp_path / "nope")})


def test_without_secrets_and_the_private_directory(tmp_path):
    cfg = load_config(overrides={"api": {"auth_token": "t0k"}, "redis": {"password": "pw"},
                                 "kafka": {"sasl_username": "u", "sasl_password": "kp"}}, env={})
    bare = without_secrets(cfg)
    assert "t0k" not in bare.model_dump_json() and "pw" not in bare.model_dump_json()
    assert bare.kafka.topic == cfg.kafka.topic and bare.digest() == cfg.digest()
    d = tmp_path / "s"
    assert sorted(write_secrets_dir(cfg, d)) == ["api-token", "kafka-password",
                                                 "kafka-username", "redis-password"]
    assert (d.stat().st_mode & 0o777) == 0o700
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in d.iterdir())
    back = load_config(env={"AFFECTSTREAM_SECRETS_DIR": str(d)})
    assert (back.api.auth_token, back.redis.password, back.kafka.sasl_password) == (
        "t0k", "pw", "kp")
