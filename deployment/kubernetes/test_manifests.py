# Checks of the Kubernetes manifests in this folder, without a cluster:
#   - every object (and every object Hive renders into rendered/, once that folder exists)
#     against the Kubernetes OpenAPI schema, with the kubernetes-validate package in strict
#     mode (unknown fields are errors), for Kubernetes 1.33 or the newest it knows;
#   - the rules the deployment rests on: Hive's Role grants exactly the verbs its backend
#     uses, no cluster-wide RBAC, Sol has no Kubernetes credentials, one Hive with the
#     Recreate strategy, every container under the restricted Pod Security profile;
#   - kustomization.yaml lists every other manifest here.
# Run: python -m pytest deployment/kubernetes -q   (needs pyyaml and pytest;
#      pip install kubernetes-validate for the schema tests, which skip without it)
import copy
import json
import re
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
RENDERED = HERE / "rendered"
NAMESPACE = "hive"
# The Kubernetes version whose schema the manifests must match; an older
# kubernetes-validate that does not know it is used at its newest.
WANTED_VERSION = (1, 33)

# Exactly what Hive's Kubernetes backend needs: (API group, resource) -> verbs.
EXPECTED_RULES = {
    ("", "pods"): {"list", "watch", "create", "delete"},
    ("", "pods/log"): {"get"},
    ("", "secrets"): {"get", "create"},
    ("", "services"): {"get", "create", "delete"},
    ("", "persistentvolumeclaims"): {"get", "list", "create", "delete"},
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
}

DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def _expand(obj):
    """One object, or the items of a List (kubectl's `-o yaml` of many objects)."""
    if isinstance(obj, list):
        return [o for item in obj for o in _expand(item)]
    if isinstance(obj, dict) and str(obj.get("kind", "")).endswith("List") and "items" in obj:
        return [o for item in obj["items"] or [] for o in _expand(item)]
    return [obj]


def _load(path):
    text = path.read_text()
    if path.suffix == ".json":
        docs = [json.loads(text)]
    else:
        docs = list(yaml.safe_load_all(text))
    return [o for doc in docs if doc is not None for o in _expand(doc)]


def _own_files():
    return sorted(
        p for p in HERE.iterdir()
        if p.suffix in (".yaml", ".yml") and p.name not in ("kustomization.yaml", "kustomization.yml")
    )


def _rendered_files():
    if not RENDERED.is_dir():
        return []
    return sorted(p for p in RENDERED.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml", ".json"))


def _documents(files):
    out = []
    for path in files:
        for i, obj in enumerate(_load(path)):
            name = (obj.get("metadata") or {}).get("name", "?") if isinstance(obj, dict) else "?"
            kind = obj.get("kind", "?") if isinstance(obj, dict) else "?"
            rel = path.relative_to(HERE)
            out.append(pytest.param(obj, id=f"{rel}#{i}:{kind}/{name}"))
    return out


OWN = [p.values[0] for p in _documents(_own_files())]
ALL_DOCUMENTS = _documents(_own_files()) + _documents(_rendered_files())


def _find(kind, name=None, objects=None):
    return [
        o for o in (OWN if objects is None else objects)
        if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)
    ]


def _one(kind, name):
    found = _find(kind, name)
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def _pod_spec(obj):
    kind = obj.get("kind")
    if kind == "Pod":
        return obj["spec"]
    if kind in POD_TEMPLATE_KINDS:
        return obj["spec"]["template"]["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


# --- (a) the Kubernetes schema -------------------------------------------------------


@pytest.fixture(scope="session")
def kv():
    """kubernetes_validate, imported only here, so the other tests run without it."""
    try:
        import kubernetes_validate
    except ImportError:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate): "
                    "the manifests are not checked against the Kubernetes schema")
    return kubernetes_validate


@pytest.fixture(scope="session")
def k8s_version(kv):
    """'1.33' if the package has that schema, else the newest it has."""
    latest = kv.latest_version()  # e.g. '1.37.0'
    latest_mm = tuple(int(x) for x in latest.split(".")[:2])
    wanted = min(WANTED_VERSION, latest_mm)
    return f"{wanted[0]}.{wanted[1]}"


def _schema_check(kv, version, obj):
    """kubernetes_validate.validate in strict mode; the failure says where and why."""
    problem = None
    try:
        used = kv.validate(obj, version, strict=True)
    except kv.ValidationError as e:
        where = ".".join(str(p) for p in e.path) or "(top level)"
        problem = f"not valid for Kubernetes {e.version}: {where}: {e.message}"
    except kv.SchemaNotFoundError as e:
        problem = e.message
    if problem:  # failed outside the except, so the report is this line alone
        pytest.fail(problem, pytrace=False)
    # validate answers the major.minor of the schema it used.
    assert used == version, f"validated against Kubernetes {used}, not {version}"


@pytest.mark.parametrize("obj", ALL_DOCUMENTS)
def test_object_matches_kubernetes_schema(kv, k8s_version, obj):
    assert isinstance(obj, dict) and "apiVersion" in obj and "kind" in obj, obj
    _schema_check(kv, k8s_version, obj)


def test_schema_check_rejects_broken_objects(kv, k8s_version):
    """The validator is not a no-op: an unknown field and a wrong type are refused."""
    deployment = _one("Deployment", "agent-api")
    _schema_check(kv, k8s_version, deployment)

    unknown_field = copy.deepcopy(deployment)
    unknown_field["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "one"
    unknown_top = copy.deepcopy(_one("Role", "hive"))
    unknown_top["rule"] = unknown_top.pop("rules")
    for broken in (unknown_field, wrong_type, unknown_top):
        with pytest.raises(kv.ValidationError):
            kv.validate(broken, k8s_version, strict=True)


def test_the_folder_has_the_expected_objects():
    kinds = {(o["kind"], o["metadata"]["name"]) for o in OWN}
    for want in [
        ("Namespace", "hive"), ("ServiceAccount", "hive"), ("ServiceAccount", "sol"),
        ("Role", "hive"), ("RoleBinding", "hive"), ("PersistentVolumeClaim", "hive-data"),
        ("ConfigMap", "hive-manifests"), ("Deployment", "agent-api"), ("Service", "agent-api"),
        ("Deployment", "sol"),
    ]:
        assert want in kinds, f"missing {want[0]}/{want[1]}"
    assert _find("NetworkPolicy"), "no NetworkPolicy"


def test_names_are_dns_subdomains():
    # The schema does not check names; the API server does (RFC 1123 subdomain).
    for o in OWN:
        name = o["metadata"]["name"]
        assert len(name) <= 253 and DNS_SUBDOMAIN.fullmatch(name), f"{o['kind']}/{name}"


def test_namespaced_objects_are_in_the_hive_namespace():
    for o in OWN:
        if o["kind"] == "Namespace":
            continue
        assert o["metadata"].get("namespace") == NAMESPACE, f"{o['kind']}/{o['metadata']['name']}"


def test_namespace_enforces_restricted_pod_security():
    labels = _one("Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


# --- (b) the rules the deployment rests on ------------------------------------------


def test_hive_role_grants_exactly_what_the_backend_needs():
    role = _one("Role", "hive")
    granted = {}
    for rule in role["rules"]:
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource) and "*" not in rule["verbs"], rule
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == EXPECTED_RULES


def test_hive_role_is_bound_to_hive_alone():
    binding = _one("RoleBinding", "hive")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "hive"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hive", "namespace": NAMESPACE}]
    assert len(_find("Role")) == 1 and len(_find("RoleBinding")) == 1


def test_no_cluster_wide_rbac():
    everything = [p.values[0] for p in ALL_DOCUMENTS]
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        found = _find(kind, objects=everything)
        assert not found, f"{kind} found: {[o['metadata']['name'] for o in found]}"


def test_sol_has_no_kubernetes_credentials():
    account = _one("ServiceAccount", "sol")
    assert account.get("automountServiceAccountToken") is False
    pod = _pod_spec(_one("Deployment", "sol"))
    assert pod["serviceAccountName"] == "sol"
    assert pod.get("automountServiceAccountToken") is False
    everything = [p.values[0] for p in ALL_DOCUMENTS]
    for binding in _find("RoleBinding", objects=everything) + _find("ClusterRoleBinding", objects=everything):
        for subject in binding.get("subjects") or []:
            assert not (subject.get("kind") == "ServiceAccount" and subject.get("name") == "sol"), binding


def test_agents_default_service_account_has_no_token_and_no_binding():
    account = _one("ServiceAccount", "default")
    assert account.get("automountServiceAccountToken") is False
    for binding in _find("RoleBinding"):
        for subject in binding.get("subjects") or []:
            assert subject.get("name") != "default", binding


def test_one_hive_recreated_not_rolled():
    deployment = _one("Deployment", "agent-api")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = _pod_spec(deployment)
    assert pod["serviceAccountName"] == "hive"
    container = pod["containers"][0]
    assert "--backend=kubernetes" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["HIVE_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # The admin key only here, as a file; no key in its environment.
    assert "AGENT_API_KEY" not in env
    assert "--api-key-file=/run/hive/admin.key" in container["args"]
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"hive-admin-key", "hive-keys"}, secrets


def test_sol_holds_only_its_own_key():
    pod = _pod_spec(_one("Deployment", "sol"))
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
        for c in pod["containers"] for e in c.get("env") or []
        if "secretKeyRef" in (e.get("valueFrom") or {})
    }
    assert refs["AGENT_API_KEY"] == refs["NANOBOT_AGENT_API_KEY"] == "sol-api-key", refs
    assert "hive-admin-key" not in json.dumps(pod) and "hive-keys" not in json.dumps(pod)
    for name, pod in [(d["metadata"]["name"], _pod_spec(d)) for d in _find("Deployment")]:
        if name != "agent-api":
            assert "hive-admin-key" not in json.dumps(pod), name


def test_the_policy_is_the_compose_deployments():
    configmap = _one("ConfigMap", "hive-policy")
    assert configmap["data"]["policy.yaml"] == (HERE.parent / "policy.yaml").read_text()


def _pod_specs(objects):
    specs = [(o, _pod_spec(o)) for o in objects]
    return [(o, s) for o, s in specs if s is not None]


def test_every_container_runs_restricted():
    everything = [p.values[0] for p in ALL_DOCUMENTS]
    specs = _pod_specs(everything)
    assert len(specs) >= 2, "expected at least agent-api's and Sol's pod templates"
    for obj, spec in specs:
        pod_sc = spec.get("securityContext") or {}
        containers = (spec.get("initContainers") or []) + spec["containers"] + (spec.get("ephemeralContainers") or [])
        for c in containers:
            where = f"{obj['kind']}/{obj['metadata']['name']} container {c['name']}"
            sc = c.get("securityContext") or {}
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in ((sc.get("capabilities") or {}).get("drop") or []), where
            # The restricted Pod Security Standard lets only NET_BIND_SERVICE be added back.
            assert set((sc.get("capabilities") or {}).get("add") or []) <= {"NET_BIND_SERVICE"}, where
            assert sc.get("privileged") is not True, where
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_sc.get("runAsUser")) != 0, where
            seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}
            assert seccomp.get("type") == "RuntimeDefault", where
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(flag), f"{obj['kind']}/{obj['metadata']['name']} {flag}"


def test_images_and_users():
    expected = {"agent-api": ("hive:latest", 10001), "sol": ("sol:latest", 10002)}
    for name, (image, uid) in expected.items():
        spec = _pod_spec(_one("Deployment", name))
        for c in spec["containers"]:
            assert c["image"] == image and c["imagePullPolicy"] == "IfNotPresent", c["name"]
            assert c["securityContext"]["runAsUser"] == uid, c["name"]
        assert spec["securityContext"]["runAsUser"] == uid


# --- (c) the kustomization ----------------------------------------------------------


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((HERE / "kustomization.yaml").read_text())
    listed = kustomization.get("resources") or []
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    assert set(listed) == {p.name for p in _own_files()}


def test_every_file_starts_with_a_comment():
    for path in _own_files() + [HERE / "kustomization.yaml"]:
        assert path.read_text().startswith("# "), path.name
