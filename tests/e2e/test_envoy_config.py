"""The shipped Envoy configs, rendered as the tests render them, pass `envoy --mode validate`.
Needs no tollgate binary."""

from __future__ import annotations

import subprocess

import pytest

from envoy_config import render_envoy_config

from processes import REPO, envoy_binary, free_port

CONFIGS = ["local.yaml", "local-fast.yaml", "local-jwt-authn.yaml"]


def _render(name: str, tmp_path):
    text = render_envoy_config(
        REPO / "envoy" / name, listener=free_port(), admin=free_port(), grpc=free_port(), upstream=free_port()
    )
    path = tmp_path / name
    path.write_text(text)
    return path, text


def _validate(path):
    return subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--log-level", "warn", "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates(name, tmp_path):
    path, text = _render(name, tmp_path)
    r = _validate(path)
    assert r.returncode == 0, f"envoy --mode validate {name} failed:\n{r.stdout}\n{r.stderr}"
    assert "OK" in r.stdout + r.stderr


ECS_CONFIGS = ["ecs.yaml", "ecs-fast.yaml"]


@pytest.mark.parametrize("name", ECS_CONFIGS)
def test_ecs_config_validates(name):
    """The ECS configs (provider clusters, remote JWKS, provider keys from the environment; the
    four-phase and the fast attachment, both rendered by terraform/modules/render) are validated
    as shipped: they bind nothing on this machine."""
    r = _validate(REPO / "envoy" / name)
    assert r.returncode == 0, f"envoy --mode validate {name} failed:\n{r.stdout}\n{r.stderr}"
    text = (REPO / "envoy" / name).read_text()
    routes = text.count("auto_host_rewrite: true")
    assert routes >= 2 and text.count('request_headers_to_remove: ["authorization"]') == routes, (
        "the caller's Cognito token never goes upstream, on any provider route"
    )


@pytest.mark.parametrize("name", CONFIGS + ECS_CONFIGS)
def test_config_fails_closed(name):
    text = (REPO / "envoy" / name).read_text()
    assert "failure_mode_allow: false" in text
    assert "message_timeout:" in text, "the 200 ms default message_timeout must be overridden"
    assert "max_requests:" in text, "the ext_proc cluster circuit breaker must be raised for long streams"


def test_validate_rejects_a_broken_config(tmp_path):
    """Negative control: validation really checks the config."""
    path, text = _render("local.yaml", tmp_path)
    path.write_text(text.replace("message_timeout:", "message_timeout_typo:", 1))
    r = _validate(path)
    assert r.returncode != 0


def test_jwt_authn_jwks_path_made_absolute(tmp_path):
    _, text = _render("local-jwt-authn.yaml", tmp_path)
    assert f'filename: "{REPO}/dev/keys/jwks.json"' in text
