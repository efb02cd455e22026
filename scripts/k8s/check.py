#!/usr/bin/env python3
"""Checks of the Kubernetes deployment: the Helm chart, the kustomize manifests, the Dockerfile — and the real `aisle`
binary started with exactly the arguments and environment the chart gives it. Run by `make k8s-check` (and so by
`make test`); `make k8s-generate` rewrites k8s/ from the chart.

What each check proves is printed as it passes; the last line counts them: "k8s-check: N passed, N failed, N skipped".
Tools that may be missing (kubectl, helm, etcd) make their checks skip with a message, never pass silently — except
the binary readiness test, which needs etcd and installs it (scripts/deps.sh) rather than skipping.

It runs in a venv under .aisle/ with pinned packages (scripts/k8s/requirements.txt), created on first use.
"""

from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # no __pycache__ in the work tree

import base64
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import traceback
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.path.join(ROOT, ".aisle", "k8s-venv")
REQUIREMENTS = os.path.join(ROOT, "scripts", "k8s", "requirements.txt")
CHART = os.path.join(ROOT, "helm", "aisle")
K8S = os.path.join(ROOT, "k8s")
K8S_BASE = os.path.join(K8S, "base")
# The Kubernetes version whose JSON schemas every manifest is validated against (kubernetes-validate's own).
KUBERNETES_VERSION = "1.31.0"
# What k8s/ is rendered as: the chart's defaults, release "aisle" in namespace "aisle".
RELEASE, NAMESPACE = "aisle", "aisle"
GENERATED_HEADER = (
    "# Generated from helm/aisle (its defaults: release \"aisle\", namespace \"aisle\") by `make k8s-generate`:\n"
    "# do not edit — change the chart and regenerate; `make k8s-check` fails when the two differ. The reasons behind\n"
    "# each value are in helm/aisle/values.yaml.\n"
)
# The files of k8s/base generated from the chart's templates (k8s/base/<name> from templates/<name>).
GENERATED = ["configmap.yaml", "etcd.yaml", "hpa.yaml", "pdb.yaml", "serviceaccount.yaml", "services.yaml",
             "statefulset.yaml"]


def ensure_venv() -> None:
    """Re-runs this script inside the venv, creating it (pinned packages) when missing or outdated."""
    if os.environ.get("AISLE_K8S_VENV") == "1":
        return
    py = os.path.join(VENV, "bin", "python")
    stamp = os.path.join(VENV, ".requirements")
    with open(REQUIREMENTS) as f:
        wanted = f.read()
    have = open(stamp).read() if os.path.exists(stamp) else None
    if have != wanted:
        print(f"setting up {os.path.relpath(VENV, ROOT)} (kubernetes-validate and its pinned dependencies)", flush=True)
        shutil.rmtree(VENV, ignore_errors=True)
        base = getattr(sys, "_base_executable", None) or sys.executable
        subprocess.run([base, "-m", "venv", VENV], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", REQUIREMENTS],
                       check=True)
        with open(stamp, "w") as f:
            f.write(wanted)
    env = dict(os.environ, AISLE_K8S_VENV="1")
    os.execve(py, [py, os.path.abspath(__file__), *sys.argv[1:]], env)


# ---------------------------------------------------------------------------------------------------------------
# Reporting.

class Report:
    def __init__(self) -> None:
        self.passed = self.failed = self.skipped = 0

    def run(self, name: str, fn, *args) -> None:
        try:
            detail = fn(*args)
        except Skip as s:
            self.skipped += 1
            print(f"skip: {name}: {s}", flush=True)
        except Exception as e:  # noqa: BLE001 — every failure is reported, and the run goes on
            self.failed += 1
            print(f"FAIL: {name}: {e}", flush=True)
            if os.environ.get("AISLE_K8S_DEBUG"):
                traceback.print_exc()
        else:
            self.passed += 1
            print(f"ok: {name}" + (f" — {detail}" if detail else ""), flush=True)


class Skip(Exception):
    """A check that cannot run here (a tool is missing); it is counted and reported as skipped."""


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


# ---------------------------------------------------------------------------------------------------------------
# Values and the schema.

def load_yaml(path: str):
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def value_sets() -> dict[str, dict]:
    """Name -> override values: the defaults and every file in helm/aisle/ci (as chart-testing uses them)."""
    sets = {"defaults": {}}
    cidir = os.path.join(CHART, "ci")
    for name in sorted(os.listdir(cidir)):
        if name.endswith("-values.yaml"):
            sets[name[: -len("-values.yaml")]] = load_yaml(os.path.join(cidir, name)) or {}
    return sets


def schema_errors(values: dict) -> list[str]:
    import jsonschema

    schema = load_yaml(os.path.join(CHART, "values.schema.json"))
    v = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in v.iter_errors(values)]


def check_schema() -> str:
    import jsonschema

    from chart import load, merge

    schema = load_yaml(os.path.join(CHART, "values.schema.json"))
    jsonschema.Draft7Validator.check_schema(schema)

    # Every object in the schema closes its keys (maps of user data declare what their values must be instead).
    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                check(node.get("additionalProperties") is False, f"schema {path}: additionalProperties must be false")
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")

    walk(schema, "")
    chart = load(CHART)
    for name, over in value_sets().items():
        errs = schema_errors(merge(chart.values, over))
        check(not errs, f"{name} values do not validate: {errs}")
    # Every key of values.yaml is documented: a comment just above it, or inside a block whose key has a "# --"
    # comment and whose content is a Kubernetes object (resources, securityContext, ...) or a group of settings.
    text = open(os.path.join(CHART, "values.yaml")).read().splitlines()
    undocumented = []
    blocks: list[tuple[int, bool]] = []  # (indent, documented with "# --")
    for i, line in enumerate(text):
        m = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9_.-]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while blocks and blocks[-1][0] >= indent:
            blocks.pop()
        j = i - 1
        while j >= 0 and text[j].strip() == "":
            j -= 1
        commented = j >= 0 and text[j].strip().startswith("#")
        # The first line of the comment block above says whether it documents a whole block ("# --").
        k = j
        while commented and k - 1 >= 0 and text[k - 1].strip().startswith("#"):
            k -= 1
        doc = commented and text[k].strip().startswith("# --")
        is_block = line.rstrip().endswith(":")
        if not commented and not any(d for _, d in blocks) and not is_block:
            undocumented.append(f"{i + 1}:{m.group(2)}")
        if is_block:
            blocks.append((indent, doc))
    check(not undocumented, f"values.yaml keys without a comment: {undocumented}")
    return f"values.yaml and {len(value_sets()) - 1} ci value files validate; every object is closed; every key documented"


# Wrong values the schema must refuse, each with why.
NEGATIVE_VALUES = [
    ({"replicaCount": "3"}, "replicaCount as a string"),
    ({"replicaCount": 0}, "no nodes"),
    ({"ports": {"grpc": "50051"}}, "a port as a string"),
    ({"ports": {"grpc": 70000}}, "a port out of range"),
    ({"replicaCont": 3}, "an unknown top-level key"),
    ({"etcd": {"bundled": {"replica": 3}}}, "an unknown nested key"),
    ({"etcd": {"bundled": {"replicas": 2}}}, "an even etcd member count"),
    ({"cluster": {"mode": "gossip"}}, "an unknown cluster mode"),
    ({"cluster": {"leaseTtlSeconds": "5s"}}, "a lease TTL as a string"),
    ({"cluster": {"leaseTtlSeconds": 1}}, "a lease TTL the node refuses (below 2 s)"),
    ({"cluster": {"name": "eu/west"}}, "a cluster name with a '/' (the etcd key prefix)"),
    ({"config": {"decide_budget_ms": "50"}}, "a config number as a string"),
    ({"config": {"node_id": "x"}}, "a config key the chart sets itself"),
    ({"config": {"decide_budget_msx": 50}}, "an unknown config key"),
    ({"image": {"pullPolicy": "Sometimes"}}, "an unknown pull policy"),
    ({"resources": {"requests": {"memory": "lots"}}}, "a malformed quantity"),
    ({"securityContext": {"runAsUser": "nobody"}}, "a user name instead of a uid"),
    ({"bundles": {"inline": {"model.bin": "x"}}}, "a binary bundle inline"),
    ({"etcd": {"externalEndpoints": "http://etcd:2379"}}, "endpoints as a string, not a list"),
    ({"autoscaling": {"enabled": "yes"}}, "a boolean as a string"),
]


def check_schema_negative() -> str:
    from chart import load, merge

    chart = load(CHART)
    accepted = [why for over, why in NEGATIVE_VALUES if not schema_errors(merge(chart.values, over))]
    check(not accepted, f"the schema accepts: {accepted}")
    return f"{len(NEGATIVE_VALUES)} wrong values refused (wrong types, unknown keys, out of range)"


# ---------------------------------------------------------------------------------------------------------------
# The renderer itself: Helm's meaning on the constructs the chart uses, and refusals outside them.

RENDERER_CASES = [
    # (template, values, expected output, or None when the renderer must refuse it)
    ("a {{- \" b\" -}} \n c", {}, "a bc"),
    ("{{/* a comment */}}x", {}, "x"),
    ("{{ .Values.n }} {{ int .Values.n }} {{ .Values.p }} {{ .Values.f }}", {"n": 1000000, "p": 50051, "f": 0.25},
     "1e+06 1000000 50051 0.25"),
    ("{{ .Values.n | toString | quote }} {{ toJson .Values.m }}", {"n": 2, "m": {"b": 1800000, "a": "x<y"}},
     '"2" {"a":"x\\u003cy","b":1800000}'),
    ("{{ range $i, $v := .Values.l }}{{ $i }}={{ $v }};{{ end }}", {"l": ["a", "b"]}, "0=a;1=b;"),
    ("{{ range $k, $v := .Values.m }}{{ $k }}={{ $v }};{{ end }}", {"m": {"z": 1, "a": 2}}, "a=2;z=1;"),
    ("{{ range .Values.l }}x{{ else }}empty{{ end }}", {"l": []}, "empty"),
    ("{{ with .Values.e }}x{{ else }}y{{ end }}{{ with .Values.m }}{{ .k }}{{ end }}", {"e": {}, "m": {"k": "v"}}, "yv"),
    ("{{ if .Values.a }}1{{ else if .Values.b }}2{{ else }}3{{ end }}", {"a": 0, "b": "x"}, "2"),
    ("{{ $x := 1 }}{{ if true }}{{ $x = add1 $x }}{{ end }}{{ $x }}", {}, "2"),
    ("{{ default \"d\" .Values.s }}|{{ default \"d\" .Values.t }}", {"s": "", "t": "t"}, "d|t"),
    ("{{ printf \"%s-%d\" \"a\" (int .Values.n) | trunc 3 | trimSuffix \"-\" }}", {"n": 7}, "a-7"),
    ("{{ toYaml .Values.m | nindent 2 }}", {"m": {"b": [1, 2], "a": True}}, "\n  a: true\n  b:\n  - 1\n  - 2"),
    ("{{ join \",\" (append (list \"a\") \"b\") }} {{ until 3 }}", {}, None),  # printing a list: refused
    ("{{ join \",\" (append (list \"a\") \"b\") }}", {}, "a,b"),
    ("{{ .Values.missing }}", {}, None),
    ("{{ lookup \"v1\" \"Secret\" \"\" \"\" }}", {}, None),
    ("{{ eq .Values.n 1 }}", {"n": 1}, None),  # float64 against int: an error in Go
    ("{{ template \"x\" . }}", {}, None),
]


def check_renderer() -> str:
    from chart import Chart, RenderError, render as render_chart

    wrong = []
    for tpl, values, want in RENDERER_CASES:
        chart = Chart("", {"name": "t", "version": "0.0.0", "appVersion": "0"}, values, {"t.yaml": tpl})
        try:
            got = render_chart(chart)["t.yaml"]
        except RenderError as e:
            got = None
            if want is not None:
                wrong.append(f"{tpl!r}: refused ({e}), expected {want!r}")
            continue
        if got != want:
            wrong.append(f"{tpl!r}: rendered {got!r}, expected {want if want is not None else 'a refusal'!r}")
    check(not wrong, "; ".join(wrong))
    return (f"{len(RENDERER_CASES)} cases of Helm's template semantics (trim markers, Go number printing, range, "
            "with, variables, functions) and refusals (missing values, unknown functions and actions, mixed-type "
            "comparisons)")


# ---------------------------------------------------------------------------------------------------------------
# Rendering and validating the chart.

def render(over: dict, namespace: str = NAMESPACE, release: str = RELEASE) -> tuple[dict, list[dict]]:
    from chart import load, manifests, render as render_chart

    out = render_chart(load(CHART), over, release, namespace)
    return out, manifests(out)


# A ServiceMonitor is a CRD: no Kubernetes schema knows it. The fields the chart uses, strictly.
SERVICE_MONITOR_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "additionalProperties": False, "required": ["name"],
                     "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                                    "labels": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "endpoints"], "properties": {
            "selector": {"type": "object", "additionalProperties": False, "properties": {
                "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["port"], "properties": {
                    "port": {"type": "string"}, "path": {"type": "string"},
                    "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                    "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}}}}}},
    },
}


def validate_objects(docs: list[dict], where: str) -> list[str]:
    import jsonschema
    import kubernetes_validate

    errors = []
    for d in docs:
        name = f"{where}: {d.get('kind')}/{(d.get('metadata') or {}).get('name')}"
        if d.get("kind") == "ServiceMonitor":
            errs = list(jsonschema.Draft7Validator(SERVICE_MONITOR_SCHEMA).iter_errors(d))
            errors += [f"{name}: {e.message}" for e in errs]
            continue
        try:
            kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{name}: {e.message} at {'.'.join(map(str, e.path))}")
        except Exception as e:  # noqa: BLE001 — unknown kinds are an error too
            errors.append(f"{name}: {type(e).__name__} {e}")
    return errors


def check_chart_renders_and_validates() -> str:
    counts = []
    for name, over in value_sets().items():
        _, docs = render(over)
        errs = validate_objects(docs, name)
        check(not errs, "; ".join(errs))
        check_consistency(docs, name)
        counts.append(f"{name} ({len(docs)})")
    return (f"every manifest of {', '.join(counts)} is valid against the Kubernetes {KUBERNETES_VERSION} schemas "
            "(strict: unknown fields fail) and consistent (names, ports, selectors, probes, security)")


def check_chart_refuses_contradictions() -> str:
    from chart import ChartFail

    bad = [
        ({"bundles": {"inline": {"rules.json": "{}"}, "existingClaim": "models"}}, "two bundle sources"),
        ({"cluster": {"mode": "static"}}, "static mode with 3 nodes and autoscaling"),
        ({"etcd": {"bundled": {"enabled": False}}}, "etcd mode without any etcd"),
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}, "minReplicas above maxReplicas"),
    ]
    rendered = []
    for over, why in bad:
        try:
            render(over)
            rendered.append(why)
        except ChartFail:
            pass
    check(not rendered, f"the chart renders contradictory values: {rendered}")
    return f"{len(bad)} contradictory value sets refused with a message"


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    check(len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def node_statefulset(docs: list[dict]) -> dict:
    sts = [d for d in by_kind(docs, "StatefulSet")
           if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "node"]
    check(len(sts) == 1, "expected one node StatefulSet")
    return sts[0]


def container(sts: dict, name: str) -> dict:
    cs = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    check(len(cs) == 1, f"no container {name}")
    return cs[0]


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def check_consistency(docs: list[dict], where: str) -> None:
    """Cross-object facts a schema cannot see, on one rendering."""
    sts = node_statefulset(docs)
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    c = container(sts, "aisle")
    env = env_of(c)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    w = f"{where}: "
    check(selects(spec["selector"]["matchLabels"], labels), w + "StatefulSet selector does not select its pods")
    check(spec["podManagementPolicy"] == "Parallel", w + "podManagementPolicy must be Parallel")
    check("command" not in c, w + "the container must run the image's entrypoint (aisle)")
    check(c["args"][0] == "serve", w + "the node runs `aisle serve`")
    # Node id = pod name.
    check(env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", w + "POD_NAME from the pod name")
    check(env["AISLE_NODE_ID"]["value"] == "$(POD_NAME)", w + "the node id is the pod name")
    check(env["AISLE_GRPC_ADDR"]["value"] == f"0.0.0.0:{ports['grpc']}", w + "gRPC listens on the grpc containerPort")
    check(env["AISLE_HTTP_ADDR"]["value"] == f"0.0.0.0:{ports['http']}", w + "HTTP listens on the http containerPort")
    # Probes on the HTTP port.
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        check(c[probe]["httpGet"] == {"path": path, "port": "http"}, w + f"{probe} must GET {path} on http")
    # Termination: preStop sleep, then hand-off (≤ 2 s) and drain (≤ 10 s) must fit in the grace period.
    sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    check(pod["terminationGracePeriodSeconds"] >= sleep + 2 + 10 + 3,
          w + "terminationGracePeriodSeconds too short for preStop + hand-off + drain")
    # Security.
    sc, psc = c["securityContext"], pod["securityContext"]
    check(psc.get("runAsNonRoot") and sc.get("runAsNonRoot"), w + "runAsNonRoot")
    check(sc.get("readOnlyRootFilesystem") is True, w + "readOnlyRootFilesystem")
    check(sc.get("allowPrivilegeEscalation") is False, w + "allowPrivilegeEscalation false")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], w + "drop ALL capabilities")
    check(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", w + "seccomp RuntimeDefault")
    check(pod.get("automountServiceAccountToken") is False, w + "no service account token")
    # Config file and bundles come from the mounted volumes.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    cfg_dir = os.path.dirname(env["AISLE_CONFIG"]["value"])
    check(cfg_dir in mounts, w + "AISLE_CONFIG is not on a mounted volume")
    cfg_cm = volumes[mounts[cfg_dir]]["configMap"]["name"]
    cm = one(docs, "ConfigMap", cfg_cm)
    check(os.path.basename(env["AISLE_CONFIG"]["value"]) in cm["data"], w + "the config ConfigMap lacks the file")
    check(env["AISLE_DATA_DIR"]["value"] in mounts, w + "AISLE_DATA_DIR is not a mounted volume")
    # Services select the pods and target named container ports.
    for svc in by_kind(docs, "Service"):
        sel = svc["spec"].get("selector", {})
        if sel.get("app.kubernetes.io/component") != "node":
            continue
        check(selects(sel, labels), w + f"Service {svc['metadata']['name']} does not select the nodes")
        for p in svc["spec"]["ports"]:
            check(p["targetPort"] in ports, w + f"Service {svc['metadata']['name']} targets unknown port")
    grpc_svcs = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == sts["metadata"]["name"]]
    check(len(grpc_svcs) == 1 and grpc_svcs[0]["spec"]["ports"][0].get("appProtocol") == "grpc",
          w + "client Service with appProtocol grpc")
    # The headless Service of the peers is the StatefulSet's, publishes not-ready pods, and carries gRPC.
    peers = one(docs, "Service", spec["serviceName"])
    check(peers["spec"].get("clusterIP") == "None", w + "peers Service must be headless")
    check(peers["spec"].get("publishNotReadyAddresses") is True, w + "peers Service must publish not-ready pods")
    check(any(p["targetPort"] == "grpc" for p in peers["spec"]["ports"]), w + "peers Service must carry gRPC")
    domain = None
    if env["AISLE_CLUSTER"]["value"] == "etcd":
        adv = env["AISLE_ADVERTISE_ADDR"]["value"]
        m = re.fullmatch(r"\$\(POD_NAME\)\.([^.]+)\.\$\(POD_NAMESPACE\)\.svc\.(.+):(\d+)", adv)
        check(m is not None, w + f"advertise address {adv} is not <pod>.<peers>.<ns>.svc.<domain>:<port>")
        check(m.group(1) == spec["serviceName"], w + "advertise address is not through the peers Service")
        check(int(m.group(3)) == ports["grpc"], w + "advertise address is not the grpc port")
        domain = m.group(2)
        check(int(env["AISLE_LEASE_TTL_SECS"]["value"]) >= 1, w + "lease TTL")
        check(env["AISLE_CLUSTER_NAME"]["value"], w + "cluster name")
        endpoints = env["AISLE_ETCD_ENDPOINTS"]["value"].split(",")
        etcd_sts = [d for d in by_kind(docs, "StatefulSet") if d is not sts]
        if etcd_sts:
            e = etcd_sts[0]
            ec = e["spec"]["template"]["spec"]["containers"][0]
            client = [p["containerPort"] for p in ec["ports"] if p["name"] == "client"][0]
            want = [f"http://{e['metadata']['name']}-{i}.{e['spec']['serviceName']}.$(POD_NAMESPACE).svc.{domain}:{client}"
                    for i in range(e["spec"]["replicas"])]
            check(endpoints == want, w + f"etcd endpoints {endpoints} are not the bundled members {want}")
            esvc = one(docs, "Service", e["spec"]["serviceName"])
            check(esvc["spec"].get("clusterIP") == "None", w + "etcd Service must be headless")
            check(selects(esvc["spec"]["selector"], e["spec"]["template"]["metadata"]["labels"]),
                  w + "etcd Service does not select the members")
            eenv = env_of(ec)
            peer_urls = eenv["ETCD_INITIAL_CLUSTER"]["value"].split(",")
            check(len(peer_urls) == e["spec"]["replicas"], w + "ETCD_INITIAL_CLUSTER must list every member")
            check(any(p["metadata"]["name"] == e["metadata"]["name"] for p in by_kind(docs, "PodDisruptionBudget")),
                  w + "the bundled etcd needs its PodDisruptionBudget")
            check(e["spec"].get("volumeClaimTemplates"), w + "the bundled etcd needs persistent volumes")
        else:
            check(all(u.startswith(("http://", "https://")) for u in endpoints), w + "external etcd endpoints")
    else:
        for k in ("AISLE_ETCD_ENDPOINTS", "AISLE_ADVERTISE_ADDR"):
            check(k not in env, w + f"{k} in static mode")
        check(spec.get("replicas") == 1, w + "static mode runs one node")
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        check(ref["kind"] == "StatefulSet" and ref["name"] == sts["metadata"]["name"], w + "HPA targets the nodes")
        check("replicas" not in spec, w + "with an HPA, the StatefulSet must not set replicas")
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"]
        check(any(selects(sel, s["spec"]["template"]["metadata"]["labels"]) for s in by_kind(docs, "StatefulSet")),
              w + f"PDB {pdb['metadata']['name']} selects no pods")


# ---------------------------------------------------------------------------------------------------------------
# k8s/: generated from the chart, and the dev overlay equal to the chart with ci/dev-values.yaml.

def plain(text: str) -> str:
    """A chart rendering as plain manifests: no Helm labels, managed by kustomize."""
    out = []
    for line in text.splitlines():
        if re.match(r"^\s*helm\.sh/chart:", line):
            continue
        out.append(line.replace("app.kubernetes.io/managed-by: Helm", "app.kubernetes.io/managed-by: kustomize"))
    return "\n".join(out).strip() + "\n"


def generated_files() -> dict[str, str]:
    rendered, _ = render({})
    files = {}
    for name in GENERATED:
        text = rendered[name]
        check(text.strip(), f"templates/{name} renders nothing with the defaults")
        files[name] = GENERATED_HEADER + plain(text)
    return files


def generate() -> None:
    for name, text in generated_files().items():
        with open(os.path.join(K8S_BASE, name), "w") as f:
            f.write(text)
        print(f"wrote k8s/base/{name}")


def check_k8s_generated() -> str:
    stale = []
    for name, text in generated_files().items():
        path = os.path.join(K8S_BASE, name)
        if not os.path.exists(path) or open(path).read() != text:
            stale.append(name)
    check(not stale, f"k8s/base differs from the chart's defaults in {stale}: run `make k8s-generate`")
    return f"k8s/base holds exactly the chart's default rendering ({len(GENERATED)} files)"


def normalise(docs: list[dict], namespace: str | None) -> dict:
    """Objects by (kind, name), with Helm's labels removed and the namespace kustomize sets added."""
    out = {}
    for d in docs:
        d = copy.deepcopy(d)

        def strip(obj):
            if isinstance(obj, dict):
                for k, v in list(obj.items()):
                    if k == "labels" and isinstance(v, dict):
                        v.pop("helm.sh/chart", None)
                        if v.get("app.kubernetes.io/managed-by") in ("Helm", "kustomize"):
                            v["app.kubernetes.io/managed-by"] = "-"
                    strip(v)
            elif isinstance(obj, list):
                for v in obj:
                    strip(v)

        strip(d)
        if namespace and d["kind"] != "Namespace":
            d["metadata"]["namespace"] = namespace
        out[(d["kind"], d["metadata"]["name"])] = d
    return out


def kustomize(path: str) -> list[dict]:
    import yaml

    kubectl = shutil.which("kubectl")
    if not kubectl:
        raise Skip("kubectl is not installed (install it to render k8s/ with kustomize)")
    p = subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True, timeout=120)
    check(p.returncode == 0, f"kubectl kustomize {os.path.relpath(path, ROOT)}: {p.stderr.strip()}")
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def diff_objects(a: dict, b: dict) -> list[str]:
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key not in a:
            diffs.append(f"{key} only in the chart")
        elif key not in b:
            diffs.append(f"{key} only in k8s/")
        elif a[key] != b[key]:
            diffs.append(f"{key} differs:\n{first_difference(a[key], b[key])}")
    return diffs


def first_difference(x, y, path="") -> str:
    if isinstance(x, dict) and isinstance(y, dict):
        for k in sorted(set(x) | set(y), key=str):
            if x.get(k) != y.get(k):
                return first_difference(x.get(k), y.get(k), f"{path}.{k}")
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        for i, (p, q) in enumerate(zip(x, y)):
            if p != q:
                return first_difference(p, q, f"{path}[{i}]")
    return f"  at {path}: k8s/ has {json.dumps(x)[:300]}, the chart {json.dumps(y)[:300]}"


def check_kustomize(overlay: str, values_name: str) -> str:
    path = os.path.join(K8S, overlay) if overlay else K8S
    docs = kustomize(path)
    errs = validate_objects(docs, f"kustomize {overlay or 'base'}")
    check(not errs, "; ".join(errs))
    check(any(d["kind"] == "Namespace" for d in docs), "the kustomization must create its namespace")
    ns = next(d["metadata"]["name"] for d in docs if d["kind"] == "Namespace")
    _, chart_docs = render(value_sets()[values_name])
    # Helm's test hooks (`helm test`) are not part of an installation.
    chart_docs = [d for d in chart_docs if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})]
    chart_docs = chart_docs + [d for d in docs if d["kind"] == "Namespace"]
    diffs = diff_objects(normalise(docs, None), normalise(chart_docs, ns))
    check(not diffs, f"k8s/{overlay} differs from the chart with {values_name} values:\n" + "\n".join(diffs))
    check_consistency(docs, f"kustomize {overlay or 'base'}")
    return (f"`kubectl kustomize k8s/{overlay}` renders {len(docs)} objects, valid (strict) and equal to the chart "
            f"with its {values_name} values")


# ---------------------------------------------------------------------------------------------------------------
# The Dockerfile's essentials.

def dockerfile() -> dict:
    text = open(os.path.join(ROOT, "Dockerfile")).read()
    text = re.sub(r"\\\n", " ", text)
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    args, stages = {}, []
    for l in lines:
        word, _, rest = l.partition(" ")
        word = word.upper()
        if word == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip()
        elif word == "FROM":
            stages.append({"from": rest.split()[0], "as": rest.split()[2] if " AS " in rest.upper() else None,
                           "lines": []})
        elif stages:
            stages[-1]["lines"].append((word, rest))
    return {"args": args, "stages": stages}


def check_dockerfile() -> str:
    d = dockerfile()
    stages = d["stages"]
    check(len(stages) >= 2, "multi-stage: a builder and a runtime stage")
    cargo_toml = open(os.path.join(ROOT, "Cargo.toml")).read()
    rust_version = re.search(r'rust-version\s*=\s*"([^"]+)"', cargo_toml).group(1)
    for st in stages:
        m = re.fullmatch(r"\$\{?([A-Z_]+)\}?", st["from"])
        check(m is not None, f"FROM {st['from']}: base images must be build arguments")
        default = d["args"].get(m.group(1))
        check(default, f"ARG {m.group(1)} needs a default before the first FROM")
        digest = "@sha256:" in default
        tag = default.rsplit("/", 1)[-1].partition(":")[2]
        check(digest or (tag and tag != "latest"), f"{m.group(1)}={default}: pin a tag (not latest) or a digest")
    builder, runtime = stages[0], stages[-1]
    b_default = d["args"][re.fullmatch(r"\$\{?([A-Z_]+)\}?", builder["from"]).group(1)]
    b_tag = b_default.rsplit("/", 1)[-1].partition(":")[2]
    check("@sha256:" in b_default or b_tag.startswith(rust_version),
          f"builder {b_default} must pin the workspace's rust-version {rust_version}")
    build = " ".join(rest for w, rest in builder["lines"] if w == "RUN")
    check("protobuf-compiler" in build and "libprotobuf-dev" in build,
          "the builder installs protobuf-compiler and libprotobuf-dev (etcd-client's protos import well-known types)")
    check(re.search(r"cargo build .*--release.*--locked.*--workspace.*--bins", build) is not None,
          "the builder builds every binary of the workspace (--release --locked --workspace --bins)")
    for b in ("aisle", "aisle-train", "aisle-loadtest"):
        check(re.search(rf"\b{b}\b", build), f"the image ships {b}")
    rl = runtime["lines"]
    check(not any(w == "RUN" for w, _ in rl), "the runtime stage runs nothing (no shell needed)")
    check(any(w == "COPY" and "--from=" in r for w, r in rl), "the runtime copies the binaries from the builder")
    users = [r for w, r in rl if w == "USER"]
    check(users and re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", users[-1]), "USER must be a numeric non-root uid[:gid]")
    uid = int(users[-1].split(":")[0])
    for w in ("ENTRYPOINT", "CMD"):
        v = [r for x, r in rl if x == w]
        check(v and v[-1].startswith("["), f"{w} in exec form (no shell)")
    entry = json.loads([r for x, r in rl if x == "ENTRYPOINT"][-1])
    check(entry == ["/usr/local/bin/aisle"], "ENTRYPOINT runs aisle (the chart passes only its arguments)")
    labels = " ".join(r for w, r in rl if w == "LABEL")
    for l in ("org.opencontainers.image.source", "org.opencontainers.image.version"):
        check(l in labels, f"label {l}")
    # The chart runs the image as its user.
    from chart import load

    vals = load(CHART).values
    check(vals["securityContext"]["runAsUser"] == uid == vals["podSecurityContext"]["runAsUser"],
          f"the chart's runAsUser must be the image's USER {uid}")
    ignore = open(os.path.join(ROOT, ".dockerignore")).read().split()
    check("target" in ignore and ".git" in ignore, ".dockerignore leaves out target/ and .git")
    return (f"multi-stage, bases pinned by build arguments, USER {users[-1]} (= the chart's runAsUser), exec-form "
            "entrypoint, no RUN at run time, OCI labels")


def dockerfile_image_env() -> dict[str, str]:
    env = {}
    for w, rest in dockerfile()["stages"][-1]["lines"]:
        if w == "ENV":
            for k, v in re.findall(r'([A-Z_][A-Z0-9_]*)=("[^"]*"|\S+)', rest):
                env[k] = v.strip('"')
    return env


# ---------------------------------------------------------------------------------------------------------------
# helm, where it exists.

def check_helm() -> str:
    import yaml

    helm = shutil.which("helm")
    if not helm:
        raise Skip("no helm binary: `helm lint` and `helm template` not run (the chart was rendered by "
                   "scripts/k8s/chart.py instead); they run wherever helm is installed")
    p = subprocess.run([helm, "lint", "--strict", CHART], capture_output=True, text=True)
    check(p.returncode == 0, f"helm lint: {p.stdout}{p.stderr}")
    for name, over in value_sets().items():
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(over, f)
        try:
            p = subprocess.run([helm, "template", RELEASE, CHART, "-n", NAMESPACE, "-f", f.name],
                               capture_output=True, text=True)
        finally:
            os.unlink(f.name)
        check(p.returncode == 0, f"helm template ({name}): {p.stderr}")
        helm_docs = [d for d in yaml.safe_load_all(p.stdout) if d]
        _, ours = render(over)
        diffs = diff_objects(normalise(ours, None), normalise(helm_docs, None))
        check(not diffs, f"helm and scripts/k8s/chart.py render {name} differently:\n" + "\n".join(diffs))
    return "helm lint --strict passes; helm template equals scripts/k8s/chart.py for every value set"


# ---------------------------------------------------------------------------------------------------------------
# The real binary, run as the chart runs it, against a real etcd.

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def etcd_keys(client_url: str) -> dict[str, str]:
    """Every key in etcd (v3 JSON gateway): {key: value}."""
    body = json.dumps({"key": base64.b64encode(b"\0").decode(), "range_end": base64.b64encode(b"\0").decode()})
    req = urllib.request.Request(f"{client_url}/v3/kv/range", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        kvs = json.loads(r.read()).get("kvs", [])
    return {base64.b64decode(kv["key"]).decode(errors="replace"): base64.b64decode(kv.get("value", "")).decode(
        errors="replace") for kv in kvs}


def aisle_binary() -> str:
    if os.environ.get("AISLE_BIN"):
        return os.environ["AISLE_BIN"]
    cargo = shutil.which(os.environ.get("CARGO") or "cargo")
    check(cargo is not None, "cargo is needed to build the aisle binary")
    p = subprocess.run([cargo, "build", "-p", "aisle-node", "--bin", "aisle", "--message-format=json"], cwd=ROOT,
                       capture_output=True, text=True)
    check(p.returncode == 0, f"cargo build: {p.stderr[-2000:]}")
    for line in p.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["name"] == "aisle":
            return msg["executable"]
    raise AssertionError("cargo did not report the aisle executable")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of an env value over the variables defined before it ($$ escapes)."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, value)


class Processes:
    """Processes this check started, stopped and waited for at the end whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, *a, **kw) -> subprocess.Popen:
        p = subprocess.Popen(*a, **kw)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def start_etcd(procs: Processes, tmp: str) -> str:
    etcd = shutil.which("etcd")
    if not etcd:
        subprocess.run([os.path.join(ROOT, "scripts", "deps.sh")], check=True)
        etcd = shutil.which("etcd")
    check(etcd is not None, "etcd is needed (scripts/deps.sh installs Debian's etcd-server)")
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    log = open(os.path.join(tmp, "etcd.log"), "w")
    procs.start([etcd, "--name", "k8s-check", "--data-dir", os.path.join(tmp, "etcd"),
                 "--listen-client-urls", url, "--advertise-client-urls", url,
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", f"k8s-check=http://127.0.0.1:{peer}"],
                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if http_get(f"{url}/health")[0] == 200:
                return url
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("etcd did not become healthy within 30 s: " + open(os.path.join(tmp, "etcd.log")).read()[-2000:])


def pod_process(docs: list[dict], pod_name: str, namespace: str, root: str, etcd_url: str | None):
    """The command line and environment the kubelet gives the node container, with the pod's volumes as directories
    under `root` (ConfigMaps written out) and the downward API answered with `pod_name` and `namespace`."""
    sts = node_statefulset(docs)
    pod = sts["spec"]["template"]["spec"]
    c = container(sts, "aisle")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {}
    for m in c["volumeMounts"]:
        d = os.path.join(root, m["name"])
        os.makedirs(d, exist_ok=True)
        v = volumes[m["name"]]
        if "configMap" in v:
            cm = one(docs, "ConfigMap", v["configMap"]["name"])
            for k, text in (cm.get("data") or {}).items():
                with open(os.path.join(d, k), "w") as f:
                    f.write(text)
        else:
            check("emptyDir" in v, f"the test maps ConfigMap and emptyDir volumes only, not {v}")
        mounts[m["mountPath"]] = d
    env = dict(dockerfile_image_env())
    env["HOSTNAME"] = pod_name  # as the kubelet sets it
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    defined: dict[str, str] = {}
    for e in c["env"]:
        if "valueFrom" in e:
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            value = {"metadata.name": pod_name, "metadata.namespace": namespace}[path]
        else:
            value = expand(e.get("value", ""), defined)
        defined[e["name"]] = value
    for k, v in defined.items():
        # A path in the pod becomes the same path under its volume's directory (the deepest mount wins, once).
        for mount_path in sorted(mounts, key=len, reverse=True):
            if v == mount_path or v.startswith(mount_path + "/"):
                v = mounts[mount_path] + v[len(mount_path):]
                break
        env[k] = v
    if etcd_url is not None:
        env["AISLE_ETCD_ENDPOINTS"] = etcd_url
    args = [expand(a, defined) for a in c["args"]]
    return args, env, c


def check_binary_ready(values_name: str, cluster: bool) -> str:
    """Starts the real `aisle` with the chart's arguments and environment and waits for /readyz."""
    binary = aisle_binary()
    grpc, http = free_port(), free_port()
    over = copy.deepcopy(value_sets()[values_name])
    over.setdefault("ports", {}).update({"grpc": grpc, "http": http})
    namespace, pod_name = "k8s-check", f"{RELEASE}-0"
    _, docs = render(over, namespace=namespace)
    procs = Processes()
    tmp = tempfile.mkdtemp(prefix="aisle-k8s-check-")
    try:
        etcd_url = start_etcd(procs, tmp) if cluster else None
        args, env, c = pod_process(docs, pod_name, namespace, os.path.join(tmp, "pod"), etcd_url)
        shown = {k: v for k, v in env.items() if k.startswith("AISLE_")}
        if cluster:
            check(env["AISLE_CLUSTER"] == "etcd", "the defaults run in etcd mode")
        log_path = os.path.join(tmp, "aisle.log")
        log = open(log_path, "w")
        started = time.time()
        node = procs.start([binary, *args], env=env, stdout=log, stderr=subprocess.STDOUT)

        def tail() -> str:
            return f"\nnode ran as: aisle {' '.join(args)} with {shown}\nlog:\n" + open(log_path).read()[-3000:]

        status, body = 0, ""
        grace = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        deadline = time.time() + 90
        while time.time() < deadline:
            check(node.poll() is None, f"the node exited with {node.returncode}" + tail())
            try:
                status, body = http_get(f"http://127.0.0.1:{http}/readyz")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        check(status == 200, f"/readyz is {status} {body.strip()!r} after 90 s" + tail())
        ready_after = time.time() - started
        status, health = http_get(f"http://127.0.0.1:{http}/healthz")
        check(status == 200, f"/healthz is {status}")
        _, metrics = http_get(f"http://127.0.0.1:{http}/metrics")
        check("aisle_" in metrics, "/metrics serves aisle_ metrics")
        facts = [f"ready in {ready_after:.1f} s"]
        # A decision through the gRPC port the chart opens, answered by the node named after the pod.
        p = subprocess.run([binary, "decide", "--addr", f"http://127.0.0.1:{grpc}", "--shopper", "k8s-check-shopper",
                            "--json"], capture_output=True, text=True, timeout=30, env={"PATH": env["PATH"]})
        check(p.returncode == 0, f"aisle decide failed: {p.stderr}" + tail())
        served_by = json.loads(p.stdout).get("served_by")
        check(served_by == pod_name, f"served_by is {served_by!r}, not the pod name {pod_name!r}")
        facts.append(f"Decide served_by {served_by}")
        if cluster:
            advertise = env["AISLE_ADVERTISE_ADDR"]
            check(advertise == f"{pod_name}.{RELEASE}-peers.{namespace}.svc.cluster.local:{grpc}",
                  f"advertise address {advertise}")
            keys = etcd_keys(etcd_url)
            member = [k for k, v in keys.items() if pod_name in k and advertise in v]
            check(member, f"no membership key for node {pod_name} advertising {advertise} in etcd: {keys}" + tail())
            m = re.search(r"^aisle_cluster_members(?:\{[^}]*\})? (\S+)$", metrics, re.M)
            check(m is not None and float(m.group(1)) == 1.0,
                  f"aisle_cluster_members should be 1, /metrics has {m.group(0) if m else 'none'}")
            facts.append(f"joined etcd as {pod_name} ({member[0]} -> {advertise}), aisle_cluster_members 1")
        # Termination as the kubelet does it: (preStop sleep), SIGTERM, exit 0 within the grace period.
        node.send_signal(signal.SIGTERM)
        limit = node_statefulset(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        try:
            code = node.wait(timeout=limit - grace)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the node did not exit within {limit - grace} s of SIGTERM" + tail()) from None
        check(code == 0, f"the node exited with {code} on SIGTERM" + tail())
        facts.append("SIGTERM: exit 0")
        if "AISLE_DECISION_LOG" in env:
            with open(env["AISLE_DECISION_LOG"]) as f:
                records = [json.loads(line) for line in f if line.strip()]
            check(records, "the decision log on the chart's log volume is empty after a Decide")
            facts.append(f"decision log written ({len(records)} record)")
        if cluster:
            left = [k for k in etcd_keys(etcd_url) if pod_name in k]
            check(not left, f"the node's membership key outlived it (lease not revoked): {left}")
            facts.append("lease revoked")
        return "; ".join(facts)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    ensure_venv()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if argv[:1] == ["generate"]:
        generate()
        return 0
    quick = "--no-binary" in argv
    r = Report()
    r.run("the chart renderer (scripts/k8s/chart.py) keeps Helm's semantics", check_renderer)
    r.run("values.schema.json accepts the values", check_schema)
    r.run("values.schema.json refuses wrong values", check_schema_negative)
    r.run("chart renders, every manifest validates", check_chart_renders_and_validates)
    r.run("chart refuses contradictory values", check_chart_refuses_contradictions)
    r.run("k8s/ is the chart's default rendering", check_k8s_generated)
    r.run("kustomize base (k8s/)", check_kustomize, "", "defaults")
    r.run("kustomize dev overlay (k8s/overlays/dev)", check_kustomize, "overlays/dev", "dev")
    r.run("Dockerfile essentials", check_dockerfile)
    r.run("helm lint and helm template", check_helm)
    if quick:
        r.skipped += 2
        print("skip: the binary readiness tests (--no-binary)")
    else:
        r.run("aisle runs as the chart's StatefulSet runs it (etcd mode, defaults) and becomes ready",
              check_binary_ready, "defaults", True)
        r.run("aisle runs as the chart runs it with every config key set (static mode) and becomes ready",
              check_binary_ready, "config", False)
    print(f"k8s-check: {r.passed} passed, {r.failed} failed, {r.skipped} skipped")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
