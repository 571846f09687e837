"""The Helm chart lints clean, renders valid Kubernetes objects for every example values
file, and keeps the promises docs/deploy.md makes: hardened non-root pods, real probe
paths, migrations as a hook, secrets only by reference, never SQLite with several
processes. Rendering uses Helm's own engine (helm-python-sdk); no cluster, no database.
"""

from __future__ import annotations

import copy
import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from broker.settings import Settings
from broker.system.routes import healthz, readyz

ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = ROOT / "helm" / "pii-key-broker"
CI_DIR = CHART_DIR / "ci"
# A Kubernetes version kubernetes-validate ships strict schemas for, and the chart supports.
KUBE_VERSION = "1.33.0"
RELEASE, NAMESPACE = "rel", "pii"
FULLNAME = f"{RELEASE}-pii-key-broker"
UID = 10001

# Settings that are secrets: the chart may only ever set them from a Secret reference.
SECRET_SETTINGS = {
    "BROKER_DATABASE_URL",
    "BROKER_KEK",
    "BROKER_PEPPER",
    "BROKER_VAULT_TOKEN",
    "BROKER_VAULT_ROLE_ID",
    "BROKER_VAULT_SECRET_ID",
    "BROKER_ALERT_WEBHOOK_SECRET",
    "BROKER_OIDC_CLIENT_SECRET",
}

SERVER_KINDS = {"ConfigMap", "Deployment", "Service", "ServiceAccount"}
EXPECTED_KINDS = {
    "chart-defaults": SERVER_KINDS | {"PersistentVolumeClaim"},
    "default": SERVER_KINDS | {"PersistentVolumeClaim"},
    "ha": SERVER_KINDS
    | {
        "Job",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
    },
    "vault": SERVER_KINDS | {"Job", "PodDisruptionBudget", "NetworkPolicy"},
}

# A minimal PostgreSQL setup that satisfies every rule, for tests that vary one thing.
POSTGRES: dict[str, Any] = {
    "database": {"type": "postgresql", "existingSecret": "db"},
    "pepper": {"existingSecret": "keys"},
    "kek": {"existingSecret": "keys"},
}


def values_of(name: str) -> dict[str, Any] | None:
    """The values a named example stands for; ``chart-defaults`` is the bare chart."""
    if name == "chart-defaults":
        return None
    loaded: dict[str, Any] = yaml.safe_load((CI_DIR / f"{name}-values.yaml").read_text())
    return loaded


def merged(base: dict[str, Any] | None, patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base or {})
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every object the chart renders (NOTES.txt left out)."""
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    objects: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def kinds(objects: list[dict[str, Any]]) -> set[str]:
    return {o["kind"] for o in objects}


def pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in {"Deployment", "Job"}]


def broker_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec = only(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


EXAMPLES = ["chart-defaults", "default", "ha", "vault"]


@pytest.mark.parametrize("example", EXAMPLES)
def test_chart_lints_clean(example: str) -> None:
    report = helm.lint(CHART_DIR, values_of(example), strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []
    assert report["errors"] == []


def check_service_monitor(monitor: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    """ServiceMonitor is a CRD kubernetes-validate has no schema for; check what matters:
    it selects the broker's Service and scrapes the port and path that serve metrics."""
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = only(objects, "Service")
    labels = service["metadata"]["labels"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    # The public page, or every series with an operator token taken from a Secret.
    if "authorization" in endpoint:
        assert endpoint["path"] == "/v1/admin/metrics"
        assert endpoint["authorization"]["type"] == "Bearer"
        assert set(endpoint["authorization"]["credentials"]) == {"name", "key"}
    else:
        assert endpoint["path"] == "/metrics"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}


def test_service_monitor_scrapes_detection_series_only_with_a_token(chart: helm.Chart) -> None:
    """/metrics is public and holds no detection series; the ServiceMonitor reads the full
    page only with an auditor token from a Secret, never a token written in the values."""
    base = merged(POSTGRES, {"metrics": {"serviceMonitor": {"enabled": True}}})
    (plain,) = only(render(chart, base), "ServiceMonitor")["spec"]["endpoints"]
    assert plain["path"] == "/metrics"
    assert "authorization" not in plain
    with_token = merged(
        base, {"metrics": {"serviceMonitor": {"bearerTokenSecret": {"name": "m", "key": "t"}}}}
    )
    (scrape,) = only(render(chart, with_token), "ServiceMonitor")["spec"]["endpoints"]
    assert scrape["path"] == "/v1/admin/metrics"
    assert scrape["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "m", "key": "t"},
    }
    inline = merged(base, {"metrics": {"serviceMonitor": {"bearerToken": "pkbo_x"}}})
    with pytest.raises(Exception, match="bearerToken"):
        render(chart, inline)


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_rendered_manifest_is_valid_kubernetes(chart: helm.Chart, example: str) -> None:
    objects = render(chart, values_of(example))
    assert kinds(objects) == EXPECTED_KINDS[example]
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            check_service_monitor(obj, objects)
            continue
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        assert obj["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("example", EXAMPLES)
def test_pods_run_hardened_and_non_root(chart: helm.Chart, example: str) -> None:
    objects = render(chart, values_of(example))
    specs = pod_specs(objects)
    assert specs
    for spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["runAsUser"] == UID
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False
        (container,) = spec["containers"]
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["runAsUser"] == UID
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
        # The root filesystem is read-only: /tmp is a writable emptyDir.
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]  # noqa: S108 - the pod's own /tmp
    account = only(objects, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    deployment = only(objects, "Deployment")["spec"]["template"]["spec"]
    assert deployment["serviceAccountName"] == account["metadata"]["name"]


@pytest.mark.parametrize("example", EXAMPLES)
def test_probes_hit_the_broker_health_routes(chart: helm.Chart, example: str) -> None:
    objects = render(chart, values_of(example))
    container = broker_container(objects)
    assert container["command"] == ["broker"]
    assert container["args"][0] == "serve"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = only(objects, "ConfigMap")["data"]
    assert ports == {"http": int(config["BROKER_PORT"])}
    probes = {
        name: container[name]["httpGet"]
        for name in ("livenessProbe", "readinessProbe", "startupProbe")
    }
    assert probes["livenessProbe"]["path"] in healthz.paths
    assert probes["startupProbe"]["path"] in healthz.paths
    assert probes["readinessProbe"]["path"] in readyz.paths
    assert {p["port"] for p in probes.values()} == {"http"}
    # Graceful drain: a preStop pause, and a grace period that outlasts it.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = only(objects, "Deployment")["spec"]["template"]["spec"]
    assert grace["terminationGracePeriodSeconds"] > int(pre_stop[1])


@pytest.mark.parametrize("example", ["ha", "vault"])
def test_postgresql_migrates_in_a_pre_install_pre_upgrade_hook(
    chart: helm.Chart, example: str
) -> None:
    objects = render(chart, values_of(example))
    job = only(objects, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert set(annotations["helm.sh/hook-delete-policy"].split(",")) == {
        "before-hook-creation",
        "hook-succeeded",
    }
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    assert [*migrate["command"], *migrate["args"]] == ["broker", "db", "upgrade"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    url = env_of(migrate)["BROKER_DATABASE_URL"]
    assert (
        url["valueFrom"]["secretKeyRef"]["name"] == values_of(example)["database"]["existingSecret"]
    )
    # The hook runs before the release's ConfigMap exists: the Job must not need it.
    assert "envFrom" not in migrate
    # The pods leave the migrations to the hook.
    assert broker_container(objects)["args"] == ["serve", "--no-migrate"]


def test_sqlite_has_no_hook_and_serve_migrates_itself(chart: helm.Chart) -> None:
    objects = render(chart, None)
    assert "Job" not in kinds(objects)
    assert broker_container(objects)["args"] == ["serve"]
    disabled = render(chart, merged(POSTGRES, {"migrations": {"enabled": False}}))
    assert "Job" not in kinds(disabled)
    assert broker_container(disabled)["args"] == ["serve"]


def test_default_is_one_sqlite_replica_on_a_kept_volume(chart: helm.Chart) -> None:
    objects = render(chart, None)
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    # Never two pods on one SQLite file, not even during a rollout.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    claim = only(objects, "PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    pod = deployment["spec"]["template"]["spec"]
    config = only(objects, "ConfigMap")["data"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    data = volumes[mounts[config["BROKER_HOME"]]]
    assert data["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert "BROKER_DATABASE_URL" not in env_of(container)

    ephemeral = render(chart, {"persistence": {"enabled": False}})
    assert "PersistentVolumeClaim" not in kinds(ephemeral)
    pod = only(ephemeral, "Deployment")["spec"]["template"]["spec"]
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}["data"]


def test_postgresql_rolls_without_losing_capacity(chart: helm.Chart) -> None:
    deployment = only(render(chart, POSTGRES), "Deployment")
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }


def test_hpa_and_pdb_render_only_when_enabled(chart: helm.Chart) -> None:
    plain = render(chart, merged(POSTGRES, {"replicaCount": 2}))
    assert not {"HorizontalPodAutoscaler", "PodDisruptionBudget"} & kinds(plain)
    assert only(plain, "Deployment")["spec"]["replicas"] == 2

    objects = render(chart, values_of("ha"))
    deployment = only(objects, "Deployment")
    # The autoscaler owns the replica count; a fixed one would fight it on every upgrade.
    assert "replicas" not in deployment["spec"]
    hpa = only(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    pdb = only(objects, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_ha_pods_spread_over_nodes_and_zones(chart: helm.Chart) -> None:
    objects = render(chart, values_of("ha"))
    pod = only(objects, "Deployment")["spec"]["template"]
    spread = pod["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    for constraint in spread:
        assert (
            constraint["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        )
    assert "podAntiAffinity" in pod["spec"]["affinity"]


@pytest.mark.parametrize("example", EXAMPLES)
def test_secrets_are_only_ever_referenced(chart: helm.Chart, example: str) -> None:
    objects = render(chart, values_of(example))
    assert "Secret" not in kinds(objects)
    config = only(objects, "ConfigMap")["data"]
    assert not SECRET_SETTINGS & config.keys()
    for spec in pod_specs(objects):
        for container in spec["containers"]:
            for name, var in env_of(container).items():
                if name in SECRET_SETTINGS:
                    assert "value" not in var, name
                    assert set(var["valueFrom"]) == {"secretKeyRef"}, name
    if "BROKER_KEK_FILE" in config:
        spec = only(objects, "Deployment")["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        mount = next(
            m
            for m in container["volumeMounts"]
            if config["BROKER_KEK_FILE"].startswith(m["mountPath"] + "/")
        )
        assert mount["readOnly"] is True
        kek = {v["name"]: v for v in spec["volumes"]}[mount["name"]]["secret"]
        assert kek["secretName"] == values_of(example)["kek"]["existingSecret"]
        assert kek["defaultMode"] == 0o440
        file_name = config["BROKER_KEK_FILE"].removeprefix(mount["mountPath"] + "/")
        assert kek["items"] == [{"key": values_of(example)["kek"]["key"], "path": file_name}]


def test_extra_env_cannot_carry_a_secret_inline(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="extraEnv BROKER_DATABASE_URL is a secret"):
        render(
            chart,
            merged(POSTGRES, {"extraEnv": [{"name": "BROKER_DATABASE_URL", "value": "x"}]}),
        )
    objects = render(
        chart,
        merged(
            POSTGRES,
            {
                "extraEnv": [
                    {
                        "name": "BROKER_ALERT_WEBHOOK_SECRET",
                        "valueFrom": {"secretKeyRef": {"name": "hooks", "key": "secret"}},
                    }
                ]
            },
        ),
    )
    env = env_of(broker_container(objects))
    assert env["BROKER_ALERT_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "hooks"


@pytest.mark.parametrize("example", EXAMPLES)
def test_config_map_holds_real_broker_settings(chart: helm.Chart, example: str) -> None:
    """Every BROKER_* name the chart sets is a setting the broker reads, and the ConfigMap
    parses as broker settings (a misspelt name would be silently ignored by the broker)."""
    objects = render(chart, values_of(example))
    config = only(objects, "ConfigMap")["data"]
    env = env_of(broker_container(objects))
    names = set(config) | {n for n in env if n.startswith("BROKER_")}
    fields = {n.removeprefix("BROKER_").lower() for n in names}
    assert fields <= Settings.model_fields.keys()
    settings = Settings(**{k.removeprefix("BROKER_").lower(): v for k, v in config.items()})
    assert settings.host == "0.0.0.0"  # noqa: S104 - the pod's listen address, by design
    assert settings.issuer.startswith(("https://", "http://"))
    if example == "chart-defaults":
        assert settings.issuer == f"http://{FULLNAME}.{NAMESPACE}.svc:8080"


def test_vault_backend_gets_approle_or_token_from_a_secret(chart: helm.Chart) -> None:
    objects = render(chart, values_of("vault"))
    config = only(objects, "ConfigMap")["data"]
    assert config["BROKER_KEY_BACKEND"] == "vault"
    assert config["BROKER_VAULT_ADDR"] == "https://vault.vault.svc:8200"
    assert "BROKER_KEK_FILE" not in config
    env = env_of(broker_container(objects))
    refs = {n: v["valueFrom"]["secretKeyRef"] for n, v in env.items() if "valueFrom" in v}
    assert refs["BROKER_VAULT_ROLE_ID"] == {"name": "pii-key-broker-vault", "key": "role-id"}
    assert refs["BROKER_VAULT_SECRET_ID"] == {"name": "pii-key-broker-vault", "key": "secret-id"}
    assert "BROKER_VAULT_TOKEN" not in env
    # Vault's CA comes from a mounted Secret, read by the broker's HTTP client.
    bundle = env["REQUESTS_CA_BUNDLE"]["value"]
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "vault-ca")
    ca = {v["name"]: v for v in pod["volumes"]}["vault-ca"]["secret"]
    assert ca["secretName"] == "vault-ca"
    assert f"{mount['mountPath']}/{ca['items'][0]['path']}" == bundle

    token = render(chart, merged(values_of("vault"), {"vault": {"auth": {"method": "token"}}}))
    env = env_of(broker_container(token))
    assert env["BROKER_VAULT_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    assert not {"BROKER_VAULT_ROLE_ID", "BROKER_VAULT_SECRET_ID"} & env.keys()


def egress_ports(policy: dict[str, Any]) -> set[tuple[int, str]]:
    return {(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}


def test_network_policy_opens_the_port_and_only_the_needed_egress(chart: helm.Chart) -> None:
    objects = render(chart, values_of("ha"))
    policy = only(objects, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert len(ingress["from"]) == 2
    # The OpenID Provider, which the ha example signs people in through.
    assert egress_ports(policy) == {(53, "UDP"), (53, "TCP"), (5432, "TCP"), (443, "TCP")}
    # It covers the server pods and the migration Job's pods alike.
    selector = policy["spec"]["podSelector"]["matchLabels"].items()
    for obj in objects:
        if obj["kind"] in {"Deployment", "Job"}:
            assert selector <= obj["spec"]["template"]["metadata"]["labels"].items()

    vault = only(render(chart, values_of("vault")), "NetworkPolicy")
    assert egress_ports(vault) == {(53, "UDP"), (53, "TCP"), (5432, "TCP"), (8200, "TCP")}
    assert "NetworkPolicy" not in kinds(render(chart, None))


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        pytest.param({"replicaCount": 0}, "/replicaCount", id="zero-replicas"),
        pytest.param({"replicaCount": "3"}, "/replicaCount", id="replicas-as-string"),
        pytest.param({"resources": "big"}, "/resources", id="resources-as-string"),
        pytest.param(
            {"resources": {"limits": {"memory": "lots"}}},
            "/resources/limits/memory",
            id="bad-quantity",
        ),
        pytest.param({"image": {"tag": "latest"}}, "/image/tag", id="latest-tag"),
        pytest.param({"broker": {"keyBackend": "kms"}}, "/broker/keyBackend", id="backend"),
        pytest.param({"broker": {"workers": 0}}, "/broker/workers", id="zero-workers"),
        pytest.param({"replicas": 3}, "properties 'replicas' not allowed", id="misspelt-key"),
        pytest.param(
            {"broker": {"extraConfig": {"BROKER_PEPPER": "inline"}}},
            "invalid propertyName 'BROKER_PEPPER'",
            id="inline-secret",
        ),
        pytest.param(
            {"broker": {"extraConfig": {"BROKER_OIDC_CLIENT_SECRET": "inline"}}},
            "invalid propertyName 'BROKER_OIDC_CLIENT_SECRET'",
            id="inline-client-secret",
        ),
        pytest.param({"sso": {"roleMap": "ops=boss"}}, "/sso/roleMap", id="unknown-sso-role"),
        pytest.param({"sso": {"scopes": "profile"}}, "/sso/scopes", id="sso-without-openid"),
        pytest.param(
            {"broker": {"extraConfig": {"rotation_period": "7d"}}},
            "invalid propertyName 'rotation_period'",
            id="not-a-broker-setting",
        ),
        pytest.param(
            {"securityContext": {"allowPrivilegeEscalation": True}},
            "/securityContext/allowPrivilegeEscalation",
            id="privilege-escalation",
        ),
        pytest.param({"replicaCount": 3}, "/database/type", id="sqlite-3-replicas"),
        pytest.param({"autoscaling": {"enabled": True}}, "/database/type", id="sqlite-autoscaling"),
        pytest.param({"broker": {"workers": 4}}, "/database/type", id="sqlite-4-workers"),
        pytest.param(
            {"database": {"type": "postgresql"}},
            "/database/existingSecret",
            id="postgresql-without-secret",
        ),
    ],
)
def test_schema_rejects_bad_values(chart: helm.Chart, patch: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match="pii-key-broker") as caught:
        render(chart, patch)
    assert where in str(caught.value)


@pytest.fixture(scope="module")
def chart_without_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helm.Chart]:
    """The chart as `helm install --skip-schema-validation` sees it."""
    copy_dir = tmp_path_factory.mktemp("chart") / "pii-key-broker"
    shutil.copytree(CHART_DIR, copy_dir)
    (copy_dir / "values.schema.json").unlink()
    with helm.Chart.load(copy_dir) as loaded:
        assert loaded.schema is None
        yield loaded


@pytest.mark.parametrize(
    "patch",
    [
        pytest.param({"replicaCount": 3}, id="replicas"),
        pytest.param({"autoscaling": {"enabled": True}}, id="autoscaling"),
        pytest.param({"broker": {"workers": 2}}, id="workers"),
    ],
)
def test_templates_refuse_sqlite_with_several_processes_without_the_schema(
    chart_without_schema: helm.Chart, patch: dict[str, Any]
) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape("needs database.type=postgresql")):
        render(chart_without_schema, patch)
    # The same values on PostgreSQL render.
    assert render(chart_without_schema, merged(POSTGRES, patch))


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        pytest.param(
            {"pepper": {"existingSecret": ""}},
            "needs pepper.existingSecret",
            id="postgresql-without-pepper",
        ),
        pytest.param(
            {"kek": {"existingSecret": ""}}, "needs kek.existingSecret", id="local-without-kek"
        ),
        pytest.param(
            {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
            "minReplicas=5 is above autoscaling.maxReplicas=2",
            id="hpa-min-above-max",
        ),
        pytest.param(
            {
                "replicaCount": 2,
                "podDisruptionBudget": {"enabled": True, "minAvailable": 2, "maxUnavailable": None},
            },
            "no node could ever be drained",
            id="pdb-blocks-drains",
        ),
        pytest.param(
            {"podDisruptionBudget": {"enabled": True, "minAvailable": 1}},
            "not both",
            id="pdb-both-bounds",
        ),
        pytest.param(
            {"broker": {"keyBackend": "vault"}, "vault": {"addr": "https://vault:8200"}},
            "needs vault.auth.existingSecret",
            id="vault-without-credentials",
        ),
        pytest.param(
            {"broker": {"keyBackend": "vault"}, "vault": {"auth": {"existingSecret": "v"}}},
            "needs vault.addr",
            id="vault-without-address",
        ),
        pytest.param(
            {"alerts": {"webhookUrl": "https://hooks.example/alert"}},
            "needs alerts.existingSecret",
            id="unsigned-alerts",
        ),
        pytest.param(
            {"broker": {"extraConfig": {"BROKER_PORT": "9000"}}},
            "is set by the chart",
            id="extra-config-duplicates-chart-setting",
        ),
    ],
)
def test_templates_refuse_what_the_schema_cannot_express(
    chart: helm.Chart, patch: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(chart, merged(POSTGRES, patch))


def test_single_sign_on_settings_reach_the_broker(chart: helm.Chart) -> None:
    """The ha example's provider: its settings in the ConfigMap (parsed as the broker parses
    them), the client secret only from the Secret, and refusals when a part is missing."""
    objects = render(chart, values_of("ha"))
    config = only(objects, "ConfigMap")["data"]
    settings = Settings(**{k.removeprefix("BROKER_").lower(): v for k, v in config.items()})
    assert settings.oidc_issuer == "https://login.example.internal/realms/company"
    assert settings.oidc_roles["pii-ci"] == "proposer"
    assert settings.oidc_display_name == "Company SSO"
    secret = env_of(broker_container(objects))["BROKER_OIDC_CLIENT_SECRET"]
    assert secret["valueFrom"]["secretKeyRef"] == {
        "name": "pii-key-broker-sso",
        "key": "client-secret",
    }
    bare = only(render(chart, POSTGRES), "ConfigMap")["data"]
    assert not {k for k in bare if k.startswith("BROKER_OIDC_")}
    with pytest.raises(helm.HelmRenderError, match=re.escape("sso.issuer needs sso.roleMap")):
        render(
            chart,
            merged(
                POSTGRES,
                {"sso": {"issuer": "https://idp.example", "clientId": "b"}},
            ),
        )
    with pytest.raises(helm.HelmRenderError, match=re.escape("sso.issuer needs sso.clientId")):
        render(
            chart,
            merged(
                POSTGRES,
                {"sso": {"issuer": "https://idp.example", "roleMap": "a=admin"}},
            ),
        )


def test_chart_deploys_the_package_version(chart: helm.Chart) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart.metadata["apiVersion"] == "v2"
    assert chart.metadata["appVersion"] == project["version"]
    container = broker_container(render(chart, None))
    assert container["image"] == f"pii-key-broker:{project['version']}"
    digest = "sha256:" + "ab" * 32
    pinned = broker_container(render(chart, {"image": {"digest": digest}}))
    assert pinned["image"] == f"pii-key-broker@{digest}"


def test_notes_tell_what_was_installed(chart: helm.Chart) -> None:
    def notes(values: dict[str, Any] | None) -> str:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE)
        return next(t for p, t in rendered.items() if p.endswith("NOTES.txt"))

    default = notes(None)
    assert "WARNING: embedded SQLite, one replica" in default
    assert f"logs deploy/{FULLNAME}" in default
    ha = notes(values_of("ha"))
    assert "WARNING" not in ha
    assert f"{FULLNAME}-migrate Job" in ha
