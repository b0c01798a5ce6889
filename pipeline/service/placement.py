"""Where the service's deployments run on a multi-node Ray cluster, and how Inference autoscales
(the ``cluster`` section and ``inference.autoscaling`` of :class:`pipeline.config.PipelineConfig`).

One file describes both sides of a placement:

* the **node groups** (``cluster.groups``): what each kind of Ray node offers — CPUs, custom
  resources, labels. ``k8s/local-cluster.sh`` starts one ``ray start`` per node from them, and
  the KubeRay RayService declares the same groups (``headGroupSpec`` / ``workerGroupSpecs``:
  ``labels``, ``resources``, ``rayStartParams.num-cpus``; ``tests/k8s`` checks they agree);
* the **deployment placements** (``cluster.api``, ``cluster.ingest``, ``cluster.inference``):
  what each Serve deployment's replicas ask for — CPUs, custom resources, a Ray label selector
  (a hard constraint) and fallback selectors tried in order when no alive node matching the
  selector has room (Ray's ``fallback_strategy``), so a replica lost with its node is placed on
  another group instead of waiting for a node like it.

Every field defaults to empty: without a ``cluster`` section the service places its replicas as
before (Serve's default spread over the nodes that have room).

Ray labels: keys and values follow the Kubernetes label syntax (``affectstream.io/pool``);
selector values may be ``v``, ``!v``, ``in(a,b)`` or ``!in(a,b)``
(https://docs.ray.io/en/latest/ray-core/scheduling/labels.html).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeGroup(_Frozen):
    """One kind of Ray node (``ray start`` flags; a KubeRay head or worker group)."""

    nodes: int = Field(1, ge=1, le=16, description="Nodes of this group that the local cluster "
                       "starts (k8s/local-cluster.sh); on Kubernetes the group's `replicas`. "
                       "The group named `head` is the head node and has exactly one.")
    num_cpus: float | None = Field(
        None, ge=0, description="Logical CPUs each node offers Ray (`--num-cpus`); None = the "
        "machine's (local) or the pod's CPU limit (KubeRay).")
    num_gpus: int | None = Field(None, ge=0, description="GPUs each node offers (`--num-gpus`).")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom resources of each node (`--resources`; "
        "KubeRay group `resources`), e.g. {affectstream_ingest: 1}.")
    labels: dict[str, str] = Field(
        default_factory=dict, description="Ray node labels (`--labels`; KubeRay group "
        "`labels`), e.g. {affectstream.io/pool: ingest}. Keys under ray.io/ are Ray's.")

    @model_validator(mode="after")
    def _no_ray_labels(self) -> NodeGroup:
        bad = sorted(k for k in self.labels if k.split("/")[0].endswith("ray.io"))
        if bad:
            raise ValueError(f"labels {bad}: the ray.io/ prefix is reserved for Ray's own labels")
        return self


class DeploymentPlacement(_Frozen):
    """What each replica of one Serve deployment asks of the node it runs on."""

    num_cpus: float | None = Field(
        None, ge=0, description="Logical CPUs reserved per replica; None = the deployment's "
        "default (QueryAPI 0.25, KafkaIngest 0, Inference 0).")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per replica; None = 0.")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom resources per replica (from the groups' "
        "`resources`).")
    label_selector: dict[str, str] = Field(
        default_factory=dict, description="Ray label selector (hard): only nodes whose labels "
        "match. Empty = any node with room.")
    fallback: list[dict[str, str]] = Field(
        default_factory=list, description="Label selectors tried in order when no alive node "
        "matching `label_selector` has room (Ray `fallback_strategy`): where a replica goes when "
        "its preferred group is gone.")

    @model_validator(mode="after")
    def _fallback_needs_selector(self) -> DeploymentPlacement:
        if self.fallback and not self.label_selector:
            raise ValueError("fallback selectors need a label_selector to fall back from")
        return self

    def actor_options(self, default_cpus: float) -> dict[str, Any]:
        """Ray actor options of a replica (Serve ``ray_actor_options``): ``num_cpus`` always,
        the other keys only when set."""
        out: dict[str, Any] = {"num_cpus": default_cpus if self.num_cpus is None
                               else self.num_cpus}
        if self.num_gpus:
            out["num_gpus"] = self.num_gpus
        if self.resources:
            out["resources"] = dict(self.resources)
        if self.label_selector:
            out["label_selector"] = dict(self.label_selector)
        if self.fallback:
            out["fallback_strategy"] = [{"label_selector": dict(s)} for s in self.fallback]
        return out


class ClusterConfig(_Frozen):
    """Node groups of the cluster and the placement of each deployment of the service."""

    groups: dict[str, NodeGroup] = Field(
        default_factory=dict, description="Node groups by name; `head` is the head node. Used "
        "by k8s/local-cluster.sh and checked against the RayService's groups (tests/k8s).")
    api: DeploymentPlacement = Field(DeploymentPlacement(), description="QueryAPI replicas.")
    ingest: DeploymentPlacement = Field(DeploymentPlacement(),
                                        description="KafkaIngest (consumer) replicas.")
    inference: DeploymentPlacement = Field(DeploymentPlacement(),
                                           description="Inference replicas.")

    @model_validator(mode="after")
    def _one_head(self) -> ClusterConfig:
        head = self.groups.get("head")
        if head is not None and head.nodes != 1:
            raise ValueError(f"cluster.groups.head.nodes must be 1, got {head.nodes}")
        if self.groups and head is None:
            raise ValueError("cluster.groups needs a `head` group")
        return self


class AutoscalingConfig(_Frozen):
    """Serve autoscaling of the Inference deployment, used when ``inference.num_replicas`` is
    ``auto`` (Ray Serve ``autoscaling_config``; defaults are Serve's except the bounds)."""

    min_replicas: int = Field(1, ge=1, description="Fewest replicas, even when idle.")
    initial_replicas: int | None = Field(None, ge=1, description="Replicas at deploy time; "
                                         "None = min_replicas.")
    max_replicas: int = Field(2, ge=1, description="Most replicas (each needs room on a node).")
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="Frames in flight per replica that Serve steers towards: it adds "
        "replicas while the mean is above, removes them while below.")
    upscale_delay_s: float = Field(30.0, ge=0, description="How long the load must stay above "
                                   "target before a replica is added, seconds.")
    downscale_delay_s: float = Field(600.0, ge=0, description="How long it must stay below "
                                     "before one is removed, seconds.")
    look_back_period_s: float = Field(30.0, gt=10, description="Window the in-flight count is "
                                      "averaged over, seconds (more than Serve's 10 s metrics "
                                      "interval).")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        init = self.initial_replicas or self.min_replicas
        if not self.min_replicas <= init <= self.max_replicas:
            raise ValueError(f"autoscaling needs min_replicas <= initial_replicas <= "
                             f"max_replicas, got {self.min_replicas}, {init}, "
                             f"{self.max_replicas}")
        return self

    def serve_config(self) -> dict[str, Any]:
        """The Serve ``autoscaling_config`` mapping (``initial_replicas`` only when set)."""
        out = self.model_dump(exclude_none=True)
        return out


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a node with ``labels`` satisfies a Ray label ``selector`` (every key: ``v``
    equals, ``!v`` differs or is absent, ``in(a,b)`` one of, ``!in(a,b)`` none of)."""
    for key, want in selector.items():
        neg = want.startswith("!")
        want = want[1:] if neg else want
        if want.startswith("in(") and want.endswith(")"):
            values = {v.strip() for v in want[3:-1].split(",")}
        else:
            values = {want}
        if (labels.get(key) in values) == neg:
            return False
    return True
