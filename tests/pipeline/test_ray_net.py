"""Ray network policy: token auth wherever a cluster is not loopback-only."""

from __future__ import annotations

import pytest

from affectstream.pipeline.runtime.ray_net import RayAuthError, check_cluster_auth


@pytest.mark.parametrize("address", ["10.0.0.5:6379", "ray://head.svc:10001", "auto",
                                     "head:6379"])
def test_remote_cluster_with_auth_disabled_is_refused(address):
    with pytest.raises(RayAuthError, match="needs token auth"):
        check_cluster_auth(address, {"RAY_AUTH_MODE": "disabled"})
    check_cluster_auth(address, {"RAY_AUTH_MODE": "token"})
    check_cluster_auth(address, {})  # init_ray then sets token


@pytest.mark.parametrize("address", ["127.0.0.1:6379", "ray://localhost:10001"])
def test_loopback_cluster_may_run_without_auth(address):
    check_cluster_auth(address, {"RAY_AUTH_MODE": "disabled"})


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1:6392", True), ("localhost:6392", True), ("ray://127.0.0.1:10001", True),
    ("10.0.0.5:6379", False), ("head:6379", False), ("auto", False)])
def test_loopback_address(address, loopback):
    from affectstream.pipeline.runtime.ray_net import loopback_address

    assert loopback_address(address) is loopback
