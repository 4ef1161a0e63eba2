"""The Kubernetes manifests of deploy/kubernetes, rendered and looked into.

`render` runs the kustomize built into kubectl, the same code `kubectl
apply -k` runs, on the base or on an overlay that `write_overlay` makes the
way an operator would.  The other helpers read the rendered objects as the
kubelet would: a container's security setting falls back to the pod's, a
mount is found by volume name.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]
Objects = list[Manifest]

REPOSITORY = Path(__file__).resolve().parents[1]
KUSTOMIZATION = REPOSITORY / "deploy" / "kubernetes"
COMPONENTS = ("pod-firewall", "seccomp-localhost")
FIREWALL_RULES = KUSTOMIZATION / "components" / "pod-firewall" / "egress.nft"

NAMESPACE = "sftpjail"
SERVICE_UID = 10001
SFTP_PORT = 2222
SERVER_CONTAINER = "sftpjail"
FIREWALL_CONTAINER = "pod-firewall"
HOST_KEY_INSTALLER = "install-host-keys"


def render(directory: Path) -> Objects:
    """Every object `kubectl apply -k DIRECTORY` would send."""

    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"kubectl kustomize failed: {result.stderr}"
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def write_overlay(directory: Path) -> None:
    """An operator's overlay that adds every optional component to the base.

    kustomize refuses absolute paths, so the overlay names the base and the
    components relative to wherever it is written.
    """

    def relative(path: Path) -> str:
        return os.path.relpath(path, directory)

    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [relative(KUSTOMIZATION)],
        "components": [
            relative(KUSTOMIZATION / "components" / name) for name in COMPONENTS
        ],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(overlay))


def only(objects: Objects, kind: str) -> Manifest:
    """The one object of this kind; fails if there are none or several."""

    matches = [item for item in objects if item["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def names(objects: Objects, kind: str) -> set[str]:
    """Names of every object of this kind."""

    return {item["metadata"]["name"] for item in objects if item["kind"] == kind}


def pod_spec(objects: Objects) -> Manifest:
    """The Deployment's pod template spec."""

    spec: Manifest = only(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def all_containers(spec: Manifest) -> list[Manifest]:
    """Init containers first, as the kubelet starts them, then the rest."""

    init_containers: list[Manifest] = spec.get("initContainers", [])
    containers: list[Manifest] = spec["containers"]
    return init_containers + containers


def container(spec: Manifest, name: str) -> Manifest:
    """The container (init or not) with this name."""

    for candidate in all_containers(spec):
        if candidate["name"] == name:
            return candidate
    raise AssertionError(f"no container named {name}")


def effective(spec: Manifest, item: Manifest, field: str) -> Any:
    """A securityContext field as the kubelet applies it: container first."""

    container_context = item.get("securityContext", {})
    if field in container_context:
        return container_context[field]
    return spec.get("securityContext", {}).get(field)


def mount_path(item: Manifest, volume: str) -> str:
    """Where this container mounts the named volume."""

    for mount in item.get("volumeMounts", []):
        if mount["name"] == volume:
            path: str = mount["mountPath"]
            return path
    raise AssertionError(f"{item['name']} does not mount {volume}")


def volume(spec: Manifest, name: str) -> Manifest:
    """The pod volume with this name."""

    for candidate in spec["volumes"]:
        if candidate["name"] == name:
            found: Manifest = candidate
            return found
    raise AssertionError(f"no volume named {name}")


def volume_named(spec: Manifest, **source: str) -> str:
    """Name of the volume whose source has these fields (secretName=...)."""

    for candidate in spec["volumes"]:
        for kind in ("configMap", "secret", "persistentVolumeClaim"):
            fields = candidate.get(kind, {})
            if all(fields.get(key) == value for key, value in source.items()):
                name: str = candidate["name"]
                return name
    raise AssertionError(f"no volume with {source}")


def config_text(objects: Objects) -> str:
    """The server's config.toml as the ConfigMap carries it."""

    texts = [
        item["data"]["config.toml"]
        for item in objects
        if item["kind"] == "ConfigMap" and "config.toml" in item.get("data", {})
    ]
    assert len(texts) == 1, "expected one ConfigMap holding config.toml"
    text: str = texts[0]
    return text
