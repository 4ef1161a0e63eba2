"""The Kubernetes deployment in deploy/kubernetes, checked without a cluster.

kubectl's built-in kustomize renders the kustomization, alone and with its
optional components (through a throw-away overlay, as an operator would).
Every object is validated against the OpenAPI schemas kubernetes-validate
ships, checkov scans the result with the skips explained in .checkov.yaml,
and each security property docs/kubernetes.md promises is asserted by name,
so a patch that weakens one fails here instead of in someone's cluster.
tests/test_kubernetes_pod.py runs what the manifests describe.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from kubelab import (
    FIREWALL_CONTAINER,
    FIREWALL_RULES,
    HOST_KEY_INSTALLER,
    KUSTOMIZATION,
    NAMESPACE,
    REPOSITORY,
    SERVER_CONTAINER,
    SERVICE_UID,
    SFTP_PORT,
    Manifest,
    Objects,
    all_containers,
    config_text,
    container,
    effective,
    mount_path,
    names,
    only,
    pod_spec,
    render,
    volume,
    volume_named,
    write_overlay,
)
from sftpjail.config import Config, load_config

DOCS = REPOSITORY / "docs" / "kubernetes.md"
# The one capability the firewall init container may add; nobody else adds any.
FIREWALL_CAPABILITIES = {"NET_ADMIN"}
# Created by the operator, never rendered (docs/kubernetes.md, "Worked example").
OPERATOR_SECRETS = {"sftpjail-host-keys", "sftpjail-users"}
# The file names the server reads from state_dir (sftpjail.hostkeys).
HOST_KEY_FILES = ("ssh_host_ed25519_key", "ssh_host_ecdsa_key")
SCHEMA_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl (its built-in kustomize renders the manifests) is missing",
)


# --- rendering ------------------------------------------------------------


@pytest.fixture(scope="module")
def base() -> Objects:
    return render(KUSTOMIZATION)


@pytest.fixture(scope="module")
def with_components(tmp_path_factory: pytest.TempPathFactory) -> Objects:
    overlay = tmp_path_factory.mktemp("overlay")
    write_overlay(overlay)
    return render(overlay)


@pytest.fixture(params=["base", "with_components"])
def rendered(request: pytest.FixtureRequest) -> Objects:
    """Each test that takes this runs on the base and on the full overlay."""

    objects: Objects = request.getfixturevalue(request.param)
    return objects


def _server(spec: Manifest) -> Manifest:
    return container(spec, SERVER_CONTAINER)


def _server_config(objects: Objects, directory: Path) -> Config:
    """The ConfigMap's config.toml, read by the server's own loader."""

    path = directory / "config.toml"
    path.write_text(config_text(objects))
    return load_config(path, environ={})


# --- what is rendered -----------------------------------------------------


def test_base_renders_the_documented_objects(base: Objects) -> None:
    kinds = sorted(item["kind"] for item in base)

    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Namespace",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "Service",
        "ServiceAccount",
    ]


def test_every_object_lives_in_the_sftpjail_namespace(
    rendered: Objects,
) -> None:
    misplaced = [
        f"{item['kind']}/{item['metadata']['name']}"
        for item in rendered
        if item["kind"] != "Namespace"
        and item["metadata"].get("namespace") != NAMESPACE
    ]

    assert misplaced == []
    assert only(rendered, "Namespace")["metadata"]["name"] == NAMESPACE


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_objects_match_the_kubernetes_schema(rendered: Objects, version: str) -> None:
    problems = []
    for item in rendered:
        try:
            kubernetes_validate.validate(item, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = "/".join(str(part) for part in error.absolute_path)
            name = f"{item['kind']}/{item['metadata']['name']}"
            problems.append(f"{name}: {error.message} at {where}")

    assert problems == []


def test_schema_validation_rejects_a_misspelt_field(base: Objects) -> None:
    deployment = copy.deepcopy(only(base, "Deployment"))
    server = _server(deployment["spec"]["template"]["spec"])
    server["securityContext"]["readOnlyRootFS"] = True

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, SCHEMA_VERSIONS[0], strict=True)


# --- policy scanner -------------------------------------------------------


def _checkov(objects: Objects, config: Path, directory: Path) -> Manifest:
    manifest = directory / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(objects))
    command = [sys.executable, "-m", "checkov.main", "--config-file", str(config)]
    result = subprocess.run(
        [*command, "--output", "json", "--file", str(manifest)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # checkov exits 1 when a check fails; anything else is a crash.
    assert result.returncode in (0, 1), f"checkov crashed: {result.stderr}"
    report: Manifest = json.loads(result.stdout)
    return report


def _failed_checks(report: Manifest) -> list[str]:
    failed = report["results"]["failed_checks"]
    return sorted(f"{check['check_id']} {check['resource']}" for check in failed)


def test_checkov_passes_on_the_base(base: Objects, tmp_path: Path) -> None:
    report = _checkov(base, KUSTOMIZATION / ".checkov.yaml", tmp_path)

    assert _failed_checks(report) == []
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 0


def test_checkov_passes_with_the_components(
    with_components: Objects, tmp_path: Path
) -> None:
    config = KUSTOMIZATION / "components" / ".checkov.yaml"
    report = _checkov(with_components, config, tmp_path)

    assert _failed_checks(report) == []
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 0


def test_checkov_flags_a_weakened_server(base: Objects, tmp_path: Path) -> None:
    """The skips in .checkov.yaml must not hide what they do not name."""

    weakened = copy.deepcopy(base)
    server = _server(pod_spec(weakened))
    server["securityContext"]["allowPrivilegeEscalation"] = True
    server["securityContext"]["readOnlyRootFilesystem"] = False

    report = _checkov(weakened, KUSTOMIZATION / ".checkov.yaml", tmp_path)
    failed = {check.split()[0] for check in _failed_checks(report)}

    # CKV_K8S_20: allowPrivilegeEscalation; CKV_K8S_22: read-only root.
    assert {"CKV_K8S_20", "CKV_K8S_22"} <= failed


# --- network --------------------------------------------------------------


def test_network_policy_admits_sftp_from_anywhere(rendered: Objects) -> None:
    policy = only(rendered, "NetworkPolicy")["spec"]

    assert "Ingress" in policy["policyTypes"]
    assert policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": SFTP_PORT}]}]


def test_network_policy_allows_no_egress(rendered: Objects) -> None:
    policy = only(rendered, "NetworkPolicy")["spec"]

    # Egress in policyTypes is what isolates the pod; an empty rule list
    # then allows nothing.  Without Egress listed, egress would be open.
    assert "Egress" in policy["policyTypes"]
    assert policy.get("egress", []) == []


def test_network_policy_selects_the_server_pod(rendered: Objects) -> None:
    selector = only(rendered, "NetworkPolicy")["spec"]["podSelector"]
    pod_labels = only(rendered, "Deployment")["spec"]["template"]["metadata"]
    labels = pod_labels["labels"]

    assert selector["matchLabels"]
    assert selector["matchLabels"].items() <= labels.items()
    assert "matchExpressions" not in selector


def test_service_forwards_port_22_to_the_sftp_port(base: Objects) -> None:
    service = only(base, "Service")["spec"]
    server = _server(pod_spec(base))
    ports_by_name = {port["name"]: port for port in server["ports"]}
    pod_labels = only(base, "Deployment")["spec"]["template"]["metadata"]["labels"]

    assert len(service["ports"]) == 1
    assert service["ports"][0]["port"] == 22
    target = ports_by_name[service["ports"][0]["targetPort"]]
    assert target["containerPort"] == SFTP_PORT
    assert service["selector"].items() <= pod_labels.items()
    # Clients keep their own source address (per-source limits, audit log).
    assert service["externalTrafficPolicy"] == "Local"


# --- pod security ---------------------------------------------------------


def test_every_container_is_locked_down(rendered: Objects) -> None:
    spec = pod_spec(rendered)
    problems = []
    for item in all_containers(spec):
        name = item["name"]
        context = item.get("securityContext", {})
        capabilities = context.get("capabilities", {})
        allowed_additions = (
            FIREWALL_CAPABILITIES if name == FIREWALL_CONTAINER else set()
        )
        seccomp = effective(spec, item, "seccompProfile") or {}

        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: root filesystem is writable")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: privilege escalation is allowed")
        if context.get("privileged", False) is not False:
            problems.append(f"{name}: privileged")
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities are not dropped")
        if not set(capabilities.get("add", [])) <= allowed_additions:
            problems.append(f"{name}: adds {capabilities['add']}")
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: no seccomp profile")
        if name != FIREWALL_CONTAINER and not effective(spec, item, "runAsNonRoot"):
            problems.append(f"{name}: may run as root")

    assert problems == []


def test_pod_runs_as_the_service_user(rendered: Objects) -> None:
    spec = pod_spec(rendered)
    server = _server(spec)

    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["fsGroup"] == SERVICE_UID
    assert effective(spec, server, "runAsUser") == SERVICE_UID
    assert effective(spec, server, "runAsGroup") == SERVICE_UID


def test_pod_shares_nothing_with_the_node(rendered: Objects) -> None:
    spec = pod_spec(rendered)
    volume_sources = {key for source in spec["volumes"] for key in source}

    for field in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"):
        assert spec.get(field, False) is False, field
    assert "hostPath" not in volume_sources
    assert all("hostPort" not in port for port in _server(spec)["ports"])


def test_no_service_account_token_is_mounted(rendered: Objects) -> None:
    spec = pod_spec(rendered)
    account = only(rendered, "ServiceAccount")

    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False


def test_namespace_enforces_the_restricted_standard(base: Objects) -> None:
    labels = only(base, "Namespace")["metadata"]["labels"]

    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("probe", ["readinessProbe", "livenessProbe"])
def test_server_is_probed(rendered: Objects, probe: str) -> None:
    server = _server(pod_spec(rendered))
    port_names = {port["name"] for port in server["ports"]}
    handler = server[probe]

    if "exec" in handler:
        assert handler["exec"]["command"] == ["sftpjail", "healthcheck"]
    else:
        assert handler["tcpSocket"]["port"] in port_names | {SFTP_PORT}
    assert handler["timeoutSeconds"] >= 1


def test_server_has_resource_limits(rendered: Objects) -> None:
    for item in all_containers(pod_spec(rendered)):
        resources = item["resources"]

        assert {"cpu", "memory"} <= resources["requests"].keys(), item["name"]
        assert {"cpu", "memory"} <= resources["limits"].keys(), item["name"]


# --- the server's view of the pod -----------------------------------------


def test_config_map_is_a_valid_server_config(base: Objects, tmp_path: Path) -> None:
    spec = pod_spec(base)
    server = _server(spec)
    config = _server_config(base, tmp_path)
    config_volume = volume_named(spec, name=names(base, "ConfigMap").pop())
    config_path = mount_path(server, config_volume)

    assert server["command"] == ["sftpjail"]
    assert server["args"] == ["serve", "--config", config_path]
    assert [address.port for address in config.listen] == [SFTP_PORT]
    data_volume = volume_named(spec, claimName="sftpjail-data")
    assert str(config.data_dir) == mount_path(server, data_volume)
    assert str(config.state_dir) == mount_path(server, "state")
    users_volume = volume_named(spec, secretName="sftpjail-users")
    assert str(config.users_file.parent) == mount_path(server, users_volume)


def test_grace_period_outlasts_the_server_drain(base: Objects, tmp_path: Path) -> None:
    config = _server_config(base, tmp_path)
    grace = pod_spec(base)["terminationGracePeriodSeconds"]

    assert grace > config.limits.shutdown_grace_time


def test_host_keys_reach_state_dir_owner_only(base: Objects) -> None:
    spec = pod_spec(base)
    installer = container(spec, HOST_KEY_INSTALLER)
    secret_volume = volume_named(spec, secretName="sftpjail-host-keys")
    secret_path = mount_path(installer, secret_volume)
    secret_items = volume(spec, secret_volume)["secret"]["items"]

    assert [item["key"] for item in secret_items] == list(HOST_KEY_FILES)
    assert installer["command"] == [
        "install",
        "-m",
        "0600",
        *(f"{secret_path}/{name}" for name in HOST_KEY_FILES),
        mount_path(installer, "state") + "/",
    ]
    assert volume(spec, "state")["emptyDir"]["medium"] == "Memory"
    assert effective(spec, installer, "runAsUser") == SERVICE_UID


def test_every_volume_refers_to_something_that_exists(rendered: Objects) -> None:
    config_maps = names(rendered, "ConfigMap")
    claims = names(rendered, "PersistentVolumeClaim")
    dangling = []
    for source in pod_spec(rendered)["volumes"]:
        config_map = source.get("configMap", {}).get("name")
        secret = source.get("secret", {}).get("secretName")
        claim = source.get("persistentVolumeClaim", {}).get("claimName")
        if config_map is not None and config_map not in config_maps:
            dangling.append(source["name"])
        if secret is not None and secret not in OPERATOR_SECRETS:
            dangling.append(source["name"])
        if claim is not None and claim not in claims:
            dangling.append(source["name"])

    assert dangling == []


def test_docs_tell_how_to_create_each_secret(base: Objects) -> None:
    docs = DOCS.read_text()
    secrets = {
        source["secret"]["secretName"]
        for source in pod_spec(base)["volumes"]
        if "secret" in source
    }

    assert secrets == OPERATOR_SECRETS
    for name in sorted(secrets):
        assert f"kubectl create secret generic {name}" in docs, name
    for key in HOST_KEY_FILES:
        assert f"--from-file={key}" in docs, key


def test_single_replica_on_a_read_write_once_volume(base: Objects) -> None:
    deployment = only(base, "Deployment")["spec"]
    claim = only(base, "PersistentVolumeClaim")["spec"]

    assert deployment["replicas"] == 1
    assert deployment["strategy"]["type"] == "Recreate"
    assert claim["accessModes"] == ["ReadWriteOnce"]


# --- optional components --------------------------------------------------


def test_seccomp_component_confines_the_server(
    with_components: Objects,
) -> None:
    spec = pod_spec(with_components)
    seccomp = effective(spec, _server(spec), "seccompProfile")

    assert seccomp == {
        "type": "Localhost",
        "localhostProfile": "profiles/sftpjail.json",
    }


def test_firewall_component_loads_the_shipped_table(
    with_components: Objects,
) -> None:
    spec = pod_spec(with_components)
    firewall = container(spec, FIREWALL_CONTAINER)
    config_map = next(
        item
        for item in with_components
        if item["kind"] == "ConfigMap" and "egress.nft" in item.get("data", {})
    )
    rules_volume = volume_named(spec, name=config_map["metadata"]["name"])

    assert firewall["command"] == [
        "nft",
        "-f",
        mount_path(firewall, rules_volume) + "/egress.nft",
    ]
    assert config_map["data"]["egress.nft"] == FIREWALL_RULES.read_text()


# --- replicas (components/replicas, docs/scale-out.md) ---------------------

REPLICAS_COMPONENT = KUSTOMIZATION / "components" / "replicas"
SCALE_OUT_DOCS = REPOSITORY / "docs" / "scale-out.md"
DATABASE_SECRET = "sftpjail-database"
SCHEMA_CONTAINER = "database-schema"


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Objects:
    """The base with the replicas component, from an operator's overlay."""

    overlay = tmp_path_factory.mktemp("replicas")
    base_path = os.path.relpath(KUSTOMIZATION, overlay)
    component_path = os.path.relpath(REPLICAS_COMPONENT, overlay)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [base_path],
                "components": [component_path],
            }
        )
    )
    return render(overlay)


def _environment(item: Manifest) -> dict[str, str]:
    return {entry["name"]: entry["value"] for entry in item.get("env", [])}


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_replicas_render_valid_objects_in_the_namespace(
    replicated: Objects, version: str
) -> None:
    for item in replicated:
        kubernetes_validate.validate(item, version, strict=True)
        if item["kind"] != "Namespace":
            assert item["metadata"]["namespace"] == NAMESPACE, item["kind"]


def test_checkov_passes_with_replicas(replicated: Objects, tmp_path: Path) -> None:
    report = _checkov(replicated, KUSTOMIZATION / ".checkov.yaml", tmp_path)

    assert _failed_checks(report) == []
    assert report["summary"]["parsing_errors"] == 0


def test_replicas_share_one_volume_and_roll_one_at_a_time(
    replicated: Objects,
) -> None:
    deployment = only(replicated, "Deployment")["spec"]
    claim = only(replicated, "PersistentVolumeClaim")["spec"]
    budget = only(replicated, "PodDisruptionBudget")["spec"]
    pod_labels = deployment["template"]["metadata"]["labels"]

    assert deployment["replicas"] >= 2
    assert deployment["strategy"]["type"] == "RollingUpdate"
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 1
    assert claim["accessModes"] == ["ReadWriteMany"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()


def test_replica_egress_is_the_database_and_nothing_else(
    replicated: Objects,
) -> None:
    policy = only(replicated, "NetworkPolicy")["spec"]

    assert "Egress" in policy["policyTypes"]
    assert len(policy["egress"]) == 1
    rule = policy["egress"][0]
    assert [port["protocol"] for port in rule["ports"]] == ["TCP"]
    assert len(rule["to"]) == 1
    cidr = rule["to"][0]["ipBlock"]["cidr"]
    assert cidr.endswith("/32") or cidr.endswith("/128")
    assert "except" not in rule["to"][0]["ipBlock"]
    assert policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": SFTP_PORT}]}]


def test_replicas_read_the_database_from_a_secret_and_refuse_new_keys(
    replicated: Objects, tmp_path: Path
) -> None:
    spec = pod_spec(replicated)
    server = _server(spec)
    schema_step = container(spec, SCHEMA_CONTAINER)
    secret_volume = volume_named(spec, secretName=DATABASE_SECRET)
    environment = _environment(server)
    url_file = environment["SFTPJAIL_DATABASE_URL_FILE"]

    assert url_file.startswith(mount_path(server, secret_volume) + "/")
    assert _environment(schema_step)["SFTPJAIL_DATABASE_URL_FILE"] == url_file
    assert url_file.startswith(mount_path(schema_step, secret_volume) + "/")
    assert schema_step["args"][:3] == ["db", "migrate", "--create"]
    assert volume(spec, "users")["secret"]["optional"] is True

    # The server's own loader, with the pod's environment and a stand-in
    # for the mounted Secret.
    secret = tmp_path / "url"
    secret.write_text("postgresql://sftpjail:example@192.0.2.10:5432/sftpjail\n")
    path = tmp_path / "config.toml"
    path.write_text(config_text(replicated))
    environment["SFTPJAIL_DATABASE_URL_FILE"] = str(secret)
    config = load_config(path, environ=environment)
    assert config.replica is True
    assert config.database.url is not None
    assert config.database.url.endswith("@192.0.2.10:5432/sftpjail")


def test_replicas_drain_transfers_before_they_are_killed(
    replicated: Objects, tmp_path: Path
) -> None:
    spec = pod_spec(replicated)
    server = _server(spec)
    path = tmp_path / "config.toml"
    path.write_text(config_text(replicated))
    environment = _environment(server)
    del environment["SFTPJAIL_DATABASE_URL_FILE"]  # a Secret only the pod has
    config = load_config(path, environ=environment)
    pause = server["lifecycle"]["preStop"]["sleep"]["seconds"]

    assert config.limits.shutdown_grace_time >= 300
    assert spec["terminationGracePeriodSeconds"] > (
        pause + config.limits.shutdown_grace_time
    )


def test_scale_out_docs_tell_how_to_create_the_database_secret() -> None:
    docs = SCALE_OUT_DOCS.read_text()

    assert f"kubectl create secret generic {DATABASE_SECRET}" in docs
    assert "components/replicas" in docs
