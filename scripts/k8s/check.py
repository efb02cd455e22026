#!/usr/bin/env python3
"""Checks of the Kubernetes deployment: the Helm chart, the kustomize manifests, the Dockerfile — and the real `aisle`
binary started with exactly the arguments and environment the chart gives it. Run by `make k8s-check` (and so by
`make test`); `make k8s-generate` rewrites k8s/ from the chart.

What each check proves is printed as it passes; the last line counts them: "k8s-check: N passed, N failed, N skipped".
Tools that may be missing (kubectl, helm) make their checks skip with a message, never pass silently — except the
binary tests, which need etcd, etcdctl and openssl and install them (scripts/deps.sh) rather than skipping. The binary
run with TLS and tokens skips (with its reason) only while the binary does not know `serve --tls-cert` yet; the
decision trail the binary runs write is checked with `aisle audit verify` where the binary has that command (the
result line says when it did not).

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
# What k8s/ is rendered as: the chart's defaults with the Secret names of ci/base-values.yaml (the defaults alone
# refuse to render: no TLS, no tokens), release "aisle" in namespace "aisle".
RELEASE, NAMESPACE = "aisle", "aisle"
BASE_VALUES = "base"
GENERATED_HEADER = (
    "# Generated from helm/aisle (its defaults with the Secret names of ci/base-values.yaml: release \"aisle\",\n"
    "# namespace \"aisle\") by `make k8s-generate`: do not edit — change the chart and regenerate; `make k8s-check`\n"
    "# fails when the two differ. The reasons behind each value are in helm/aisle/values.yaml.\n"
)
# The files of k8s/base generated from the chart's templates (k8s/base/<name> from templates/<name>).
GENERATED = ["configmap.yaml", "etcd.yaml", "hpa.yaml", "networkpolicy.yaml", "pdb.yaml", "serviceaccount.yaml",
             "services.yaml", "statefulset.yaml"]

# The node's environment the chart may set: the names `aisle serve` reads (docs/operations.md and the security
# contract of issue 11). A name outside this list is a typo the node would silently ignore.
NODE_ENV = {
    "AISLE_NODE_ID", "AISLE_GRPC_ADDR", "AISLE_ADMIN_ADDR", "AISLE_PEER_ADDR", "AISLE_HTTP_ADDR", "AISLE_CONFIG",
    "AISLE_DATA_DIR", "AISLE_LOG_FORMAT", "AISLE_LOG", "AISLE_MAX_INFLIGHT_REQUESTS", "AISLE_DECISION_LOG",
    "AISLE_EVENT_LOG", "AISLE_CLUSTER", "AISLE_CLUSTER_NAME", "AISLE_ETCD_ENDPOINTS", "AISLE_ADVERTISE_ADDR",
    "AISLE_LEASE_TTL_SECS", "AISLE_INSECURE", "AISLE_TLS_CERT", "AISLE_TLS_KEY", "AISLE_TLS_CLIENT_CA",
    "AISLE_AUTH_TOKENS", "AISLE_PEER_TLS_CERT", "AISLE_PEER_TLS_KEY", "AISLE_PEER_TLS_CA", "AISLE_ETCD_CA",
    "AISLE_ETCD_CERT", "AISLE_ETCD_KEY", "AISLE_ETCD_USER", "AISLE_ETCD_PASSWORD_FILE", "AISLE_PSEUDONYM_KEY",
    "AISLE_LOG_SEGMENT_BYTES", "AISLE_LOG_SEGMENT_SECS", "AISLE_LOG_RETENTION_HOURS", "AISLE_LOG_MAX_BYTES",
    "AISLE_LOG_SYNC_MS", "AISLE_TOMBSTONE_TTL_SECS", "AISLE_OUTBOX_DIR",
}
# The settings of the node's logs the chart gives with each log (auditTrail.*), and where the logs live: the node's
# own volume claim, mounted here.
LOG_SETTINGS_ENV = ["AISLE_LOG_SEGMENT_BYTES", "AISLE_LOG_SEGMENT_SECS", "AISLE_LOG_RETENTION_HOURS",
                    "AISLE_LOG_MAX_BYTES", "AISLE_LOG_SYNC_MS"]
LOG_DIR = "/var/lib/aisle/logs"
# Environment variables naming a file the node re-reads (credentials): each must be a key of a Secret volume mounted
# read-only without subPath (a subPath mount never sees an updated Secret), under the file name given here.
SECRET_FILE_ENV = {
    "AISLE_TLS_CERT": "tls.crt", "AISLE_TLS_KEY": "tls.key", "AISLE_TLS_CLIENT_CA": "ca.crt",
    "AISLE_AUTH_TOKENS": None,  # the key is auth.key
    "AISLE_PEER_TLS_CERT": "tls.crt", "AISLE_PEER_TLS_KEY": "tls.key", "AISLE_PEER_TLS_CA": "ca.crt",
    "AISLE_ETCD_CA": "ca.crt", "AISLE_ETCD_CERT": "tls.crt", "AISLE_ETCD_KEY": "tls.key",
    "AISLE_ETCD_PASSWORD_FILE": None,
    "AISLE_PSEUDONYM_KEY": None,  # the key is privacy.pseudonymKey.key
}


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
    """Name -> override values: every file in helm/aisle/ci (as chart-testing uses them), and the defaults with
    insecure: true (the defaults alone refuse to render)."""
    sets = {"insecure": {"insecure": True}}
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
    ({"ports": {"admin": "50053"}}, "the admin port as a string"),
    ({"ports": {"peer": 0}}, "a peer port out of range"),
    ({"insecure": "true"}, "insecure as a string"),
    ({"tls": {"client": {"secretName": "Aisle_TLS"}}}, "a Secret name that is not a DNS name"),
    ({"tls": {"client": {"existingSecret": "aisle-tls"}}}, "an unknown TLS key"),
    ({"auth": {"secretName": 3}}, "a token Secret name as a number"),
    ({"certManager": {"issuerRef": {"kind": "Vault"}}}, "an unknown issuer kind"),
    ({"certManager": {"duration": "90 days"}}, "a malformed certificate duration"),
    ({"etcd": {"client": {"user": "a:b"}}}, "an etcd user with a ':'"),
    ({"etcd": {"bundled": {"tls": {"server": "x"}}}}, "an unknown etcd TLS key"),
    ({"networkPolicy": {"grpcFrom": []}}, "the old networkPolicy.grpcFrom (now clientFrom)"),
    ({"networkPolicy": {"adminNamespace": "Ops"}}, "an admin namespace that is not a namespace name"),
    ({"config": {"tls_cert": "/x"}}, "a TLS key in config (the chart sets it)"),
    ({"config": {"auth_tokens": "/x"}}, "the token file in config (the chart sets it)"),
    ({"config": {"insecure": True}}, "insecure in config (the chart's insecure value sets it)"),
    ({"config": {"credential_reload_secs": 0}}, "a credential reload period of 0"),
    ({"privacy": {"pseudonymKey": {"secretName": "Aisle_Pseudonym"}}}, "a pseudonym Secret name that is not a DNS name"),
    ({"privacy": {"pseudonymKey": {"secretName": "k", "file": "x"}}}, "an unknown pseudonym key setting"),
    ({"privacy": {"pseudonymKey": {"key": "a/b"}}}, "a pseudonym Secret key with a '/'"),
    ({"config": {"pseudonym_key": "/x"}}, "the pseudonym key file in config (the chart sets it)"),
    ({"config": {"decision_log": "/x"}}, "the decision trail in config (the chart sets it)"),
    ({"config": {"log_max_bytes": 1}}, "a log setting in config (auditTrail sets it)"),
    ({"config": {"tombstone_ttl_secs": 0}}, "a tombstone TTL of 0"),
    ({"logFiles": {"decisions": True}}, "the old logFiles (now auditTrail and eventLog)"),
    ({"auditTrail": {"enabled": "true"}}, "auditTrail.enabled as a string"),
    ({"auditTrail": {"size": "10 GB"}}, "a malformed log volume size"),
    ({"auditTrail": {"maxBytes": "4Gi"}}, "the per-log cap as a quantity (it is bytes)"),
    ({"auditTrail": {"maxBytes": -1}}, "a negative per-log cap"),
    ({"auditTrail": {"segmentBytes": 1024}}, "a segment below 4096 bytes (the node refuses it)"),
    ({"auditTrail": {"retentionHours": 0}}, "a retention of 0 hours (the node refuses it)"),
    ({"auditTrail": {"syncMs": 0}}, "a sync period of 0 (the node refuses it)"),
    ({"auditTrail": {"sizeLimit": "2Gi"}}, "an emptyDir-style sizeLimit on the log volume"),
    ({"eventLog": {"enabled": 1}}, "eventLog.enabled as a number"),
    ({"extraContainers": [{"name": "ship"}]}, "an extra container without an image"),
    ({"extraContainers": [{"name": "ship", "image": "x", "volumeMount": []}]}, "an unknown container field"),
    ({"extraContainers": {"name": "ship", "image": "x"}}, "extraContainers as an object, not a list"),
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
    ("{{ required \"need s\" .Values.s }}", {"s": "x"}, "x"),
    ("{{ required \"need s\" .Values.s }}", {"s": ""}, None),
    ("{{ hasPrefix \"https://\" .Values.u }} {{ hasPrefix \"https://\" .Values.v }}",
     {"u": "https://e:2379", "v": "http://e:2379"}, "true false"),
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


# A PrometheusRule is a CRD too: the fields the chart uses, strictly.
PROMETHEUS_RULE_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
        "metadata": SERVICE_MONITOR_SCHEMA["properties"]["metadata"],
        "spec": {"type": "object", "additionalProperties": False, "required": ["groups"], "properties": {
            "groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "rules"], "properties": {
                    "name": {"type": "string"},
                    "rules": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": False, "required": ["expr"],
                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                        "properties": {
                            "alert": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9]*$"},
                            "record": {"type": "string", "pattern": "^[a-z_:][a-z0-9_:]*$"},
                            "expr": {"type": "string", "minLength": 1},
                            "for": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}}}}}}}}},
    },
}


def validate_objects(docs: list[dict], where: str) -> list[str]:
    import jsonschema
    import kubernetes_validate

    errors = []
    for d in docs:
        name = f"{where}: {d.get('kind')}/{(d.get('metadata') or {}).get('name')}"
        if d.get("kind") in ("ServiceMonitor", "Certificate", "PrometheusRule"):
            schema = {"ServiceMonitor": SERVICE_MONITOR_SCHEMA, "Certificate": CERTIFICATE_SCHEMA,
                      "PrometheusRule": PROMETHEUS_RULE_SCHEMA}[d["kind"]]
            errs = list(jsonschema.Draft7Validator(schema).iter_errors(d))
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
        # Another namespace than k8s/'s, so names that must follow the release namespace are seen to.
        ns = "shop" if name == "full" else NAMESPACE
        _, docs = render(over, namespace=ns)
        errs = validate_objects(docs, name)
        check(not errs, "; ".join(errs))
        check_consistency(docs, name, ns, frozenset(e["name"] for e in over.get("extraEnv", [])))
        counts.append(f"{name} ({len(docs)})")
    return (f"every manifest of {', '.join(counts)} is valid against the Kubernetes {KUBERNETES_VERSION} schemas "
            "(strict: unknown fields fail; cert-manager Certificates, ServiceMonitors and PrometheusRules against the "
            "fields the chart "
            "uses) and consistent: the client, admin, peer and HTTP ports and their Services, the environment the "
            "node reads, credentials from Secret volumes without subPath, TLS and tokens unless insecure, the "
            "NetworkPolicies port by port, etcd's TLS and auth bootstrap, the Certificates' names and usages")


def check_chart_refuses_contradictions() -> str:
    from chart import ChartFail

    from chart import merge

    base = value_sets()[BASE_VALUES]
    ext = {"etcd": {"bundled": {"enabled": False}, "externalEndpoints": ["https://etcd:2379"]}}
    bad = [
        ({}, "the defaults: no TLS and no token Secret (secure by default)"),
        ({"tls": {"client": {"secretName": "t"}}}, "TLS without the token Secret"),
        ({"auth": {"secretName": "a"}}, "tokens without TLS"),
        (merge(base, {"tls": {"peer": {"secretName": ""}}}), "etcd mode without the peer TLS Secret"),
        (merge(base, {"etcd": {"bundled": {"tls": {"serverSecretName": ""}}}}), "the bundled etcd without TLS"),
        (merge(base, {"etcd": {"bundled": {"tls": {"rootSecretName": ""}}}}), "etcd TLS without the root Secret"),
        (merge(base, {"etcd": {"client": {"secretName": ""}}}), "etcd TLS without the nodes' etcd credentials"),
        (merge(base, merge(ext, {"etcd": {"externalEndpoints": ["http://etcd:2379"]}})), "a plaintext external etcd"),
        (merge(base, {"etcd": {"client": {"user": "u", "passwordSecret": {"name": "p"}}}}),
         "a password for the bundled etcd (it maps the certificate's CN)"),
        (merge(base, merge(ext, {"etcd": {"client": {"user": "u"}}})), "an etcd user without a password Secret"),
        ({"insecure": True, "service": {"type": "LoadBalancer"}}, "a plaintext LoadBalancer (insecure)"),
        ({"insecure": True, "etcd": {"client": {"secretName": "c"}}}, "etcd client TLS against a plaintext etcd"),
        ({"insecure": True, "tls": {"client": {"clientCA": {"enabled": True}}}}, "client CA without TLS"),
        ({"certManager": {"enabled": True}, "auth": {"secretName": "a"}}, "cert-manager without an issuer"),
        (merge(base, {"ports": {"admin": 50051}}), "the admin port equal to the client port"),
        ({"insecure": True, "bundles": {"inline": {"rules.json": "{}"}, "existingClaim": "models"}},
         "two bundle sources"),
        ({"insecure": True, "cluster": {"mode": "static"}}, "static mode with 3 nodes and autoscaling"),
        ({"insecure": True, "etcd": {"bundled": {"enabled": False}}}, "etcd mode without any etcd"),
        ({"insecure": True, "autoscaling": {"minReplicas": 5, "maxReplicas": 3}}, "minReplicas above maxReplicas"),
        (merge(base, {"privacy": {"pseudonymKey": {"secretName": ""}}}), "no pseudonym key Secret (secure)"),
        ({"insecure": True, "auditTrail": {"enabled": False}, "eventLog": {"enabled": True}},
         "the event log without the log volume (auditTrail.enabled false)"),
    ]
    rendered, messages = [], []
    for over, why in bad:
        try:
            render(over)
            rendered.append(why)
        except ChartFail as e:
            messages.append(str(e))
    check(not rendered, f"the chart renders contradictory or insecure values: {rendered}")
    # The refusal of the defaults says what to set.
    try:
        render({})
    except ChartFail as e:
        check("tls.client.secretName" in str(e) and "insecure: true" in str(e),
              f"the refusal of the defaults does not name the values to set: {e}")
    return (f"{len(bad)} contradictory or insecure value sets refused with a message (the defaults alone: "
            f"{messages[0].split(': ', 1)[1][:90]}...)")


def pseudonym_refusal(key: str = "pseudonym.key") -> list[str]:
    """What the chart's refusal without a pseudonym key must say: the value to set, and how to make the Secret."""
    return ["privacy.pseudonymKey.secretName", "kubectl create secret generic NAME",
            f"--from-literal={key}=$(openssl rand -hex 32)", "insecure: true"]


def check_pseudonym_key_required() -> str:
    """Every secured value set refuses to render without the pseudonym key Secret, and says how to create it; with
    insecure: true it renders, and the node then gets no key file (it makes one up per run)."""
    from chart import ChartFail, merge

    secured = {n: v for n, v in value_sets().items() if not v.get("insecure")}
    check(BASE_VALUES in secured, f"ci/{BASE_VALUES}-values.yaml is not secured")
    messages = {}
    for name, over in secured.items():
        given = over.get("privacy", {}).get("pseudonymKey", {})
        check(given.get("secretName"), f"ci/{name}-values.yaml runs secured without privacy.pseudonymKey.secretName")
        try:
            render(merge(over, {"privacy": {"pseudonymKey": {"secretName": ""}}}))
        except ChartFail as e:
            missing = [m for m in pseudonym_refusal(given.get("key", "pseudonym.key")) if m not in str(e)]
            check(not missing, f"{name} without the pseudonym key: the refusal lacks {missing}: {e}")
            messages[name] = str(e)
        else:
            raise AssertionError(f"{name} renders without privacy.pseudonymKey.secretName (not insecure)")
    _, docs = render({"insecure": True})
    env = env_of(container(node_statefulset(docs), "aisle"))
    check("AISLE_PSEUDONYM_KEY" not in env, "insecure without a pseudonym Secret still sets AISLE_PSEUDONYM_KEY")
    # The key file is the chart's, under the key asked for, whatever the Secret's key is called.
    _, docs = render(merge(value_sets()[BASE_VALUES], {"privacy": {"pseudonymKey": {"key": "keys.hex"}}}))
    env = env_of(container(node_statefulset(docs), "aisle"))
    check(env["AISLE_PSEUDONYM_KEY"]["value"].endswith("/keys.hex"), "privacy.pseudonymKey.key is not the file")
    return (f"{len(secured)} secured value sets ({', '.join(secured)}) refuse to render without "
            f"privacy.pseudonymKey.secretName: \"{messages[BASE_VALUES].split(': ', 1)[-1][:150]}...\"; insecure renders "
            "without it")


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


def check_consistency(docs: list[dict], where: str, namespace: str = NAMESPACE,
                      extra_env: frozenset[str] = frozenset()) -> None:
    """Cross-object facts a schema cannot see, on one rendering."""
    sts = node_statefulset(docs)
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    c = container(sts, "aisle")
    env = env_of(c)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    w = f"{where}: "
    etcd_mode = env["AISLE_CLUSTER"]["value"] == "etcd"
    check(selects(spec["selector"]["matchLabels"], labels), w + "StatefulSet selector does not select its pods")
    check(spec["podManagementPolicy"] == "Parallel", w + "podManagementPolicy must be Parallel")
    check("command" not in c, w + "the container must run the image's entrypoint (aisle)")
    check(c["args"][0] == "serve", w + "the node runs `aisle serve`")
    # Node id = pod name.
    check(env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", w + "POD_NAME from the pod name")
    check(env["AISLE_NODE_ID"]["value"] == "$(POD_NAME)", w + "the node id is the pod name")
    # Every AISLE_* variable is one the node reads (a typo would be ignored silently), unless the user added it.
    unknown = sorted(k for k in env if k.startswith("AISLE_") and k not in NODE_ENV and k not in extra_env)
    check(not unknown, w + f"environment variables the node does not read: {unknown}")
    # The four listeners: client, admin, HTTP on every pod; the peer port in etcd mode only. All different.
    want_ports = {"grpc", "admin", "http"} | ({"peer"} if etcd_mode else set())
    check(set(ports) == want_ports, w + f"container ports {sorted(ports)}, expected {sorted(want_ports)}")
    check(len(set(ports.values())) == len(ports), w + f"container ports collide: {ports}")
    check(env["AISLE_GRPC_ADDR"]["value"] == f"0.0.0.0:{ports['grpc']}", w + "gRPC listens on the grpc containerPort")
    check(env["AISLE_ADMIN_ADDR"]["value"] == f"0.0.0.0:{ports['admin']}", w + "admin listens on the admin port")
    check(env["AISLE_HTTP_ADDR"]["value"] == f"0.0.0.0:{ports['http']}", w + "HTTP listens on the http containerPort")
    if etcd_mode:
        check(env["AISLE_PEER_ADDR"]["value"] == f"0.0.0.0:{ports['peer']}", w + "peers listen on the peer port")
    else:
        check("AISLE_PEER_ADDR" not in env, w + "AISLE_PEER_ADDR in static mode (no peers)")
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
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    cfg_dir = os.path.dirname(env["AISLE_CONFIG"]["value"])
    check(cfg_dir in mounts, w + "AISLE_CONFIG is not on a mounted volume")
    cfg_cm = volumes[mounts[cfg_dir]["name"]]["configMap"]["name"]
    cm = one(docs, "ConfigMap", cfg_cm)
    check(os.path.basename(env["AISLE_CONFIG"]["value"]) in cm["data"], w + "the config ConfigMap lacks the file")
    check(env["AISLE_DATA_DIR"]["value"] in mounts, w + "AISLE_DATA_DIR is not a mounted volume")
    check_log_volume(sts, c, env, w)
    secret_files = check_secret_mounts(c, pod, env, f"{sts['metadata']['name']}-0", w)
    check_security_env(env, etcd_mode, w)
    # Services: each selects the nodes and carries one kind of traffic, on its own named port.
    node_svcs = [s for s in by_kind(docs, "Service") if s["spec"].get("selector", {}).get(
        "app.kubernetes.io/component") == "node"]
    for svc in node_svcs:
        check(selects(svc["spec"]["selector"], labels), w + f"Service {svc['metadata']['name']} does not select the nodes")
        for p in svc["spec"].get("ports", []):
            check(p["targetPort"] in ports, w + f"Service {svc['metadata']['name']} targets unknown port")
    name = sts["metadata"]["name"]
    svc_ports = {s["metadata"]["name"]: [p["targetPort"] for p in s["spec"].get("ports", [])] for s in node_svcs}
    client = one(docs, "Service", name)
    check(svc_ports[name] == ["grpc"] and client["spec"]["ports"][0].get("appProtocol") == "grpc",
          w + f"client Service {name} must carry the client port only, appProtocol grpc: {svc_ports[name]}")
    admin = one(docs, "Service", f"{name}-admin")
    check(admin["spec"].get("type", "ClusterIP") == "ClusterIP" and admin["spec"].get("clusterIP") != "None",
          w + "the admin Service must be ClusterIP")
    check(svc_ports[f"{name}-admin"] == ["admin"], w + "the admin Service must carry the admin port only")
    check(svc_ports[f"{name}-http"] == ["http"], w + "the http Service must carry the HTTP port only")
    # The headless Service of the peers is the StatefulSet's, publishes not-ready pods, and carries the peer port.
    peers = one(docs, "Service", spec["serviceName"])
    check(peers["spec"].get("clusterIP") == "None", w + "peers Service must be headless")
    check(peers["spec"].get("publishNotReadyAddresses") is True, w + "peers Service must publish not-ready pods")
    check(svc_ports[spec["serviceName"]] == (["peer"] if etcd_mode else []),
          w + f"peers Service must carry the peer port only (etcd mode), not {svc_ports[spec['serviceName']]}")
    for s, tps in svc_ports.items():
        if s != spec["serviceName"]:
            check("peer" not in tps, w + f"Service {s} exposes the peer port")
        if s != f"{name}-admin":
            check("admin" not in tps, w + f"Service {s} exposes the admin port")
    domain = None
    if etcd_mode:
        adv = env["AISLE_ADVERTISE_ADDR"]["value"]
        m = re.fullmatch(r"\$\(POD_NAME\)\.([^.]+)\.\$\(POD_NAMESPACE\)\.svc\.(.+):(\d+)", adv)
        check(m is not None, w + f"advertise address {adv} is not <pod>.<peers>.<ns>.svc.<domain>:<port>")
        check(m.group(1) == spec["serviceName"], w + "advertise address is not through the peers Service")
        check(int(m.group(3)) == ports["peer"], w + "advertise address is not the peer port")
        domain = m.group(2)
        check(int(env["AISLE_LEASE_TTL_SECS"]["value"]) >= 1, w + "lease TTL")
        check(env["AISLE_CLUSTER_NAME"]["value"], w + "cluster name")
        endpoints = env["AISLE_ETCD_ENDPOINTS"]["value"].split(",")
        tls_etcd = "AISLE_ETCD_CA" in env
        check(all(u.startswith("https://" if tls_etcd else "http://") for u in endpoints),
              w + f"etcd endpoints {endpoints} must be https:// exactly when AISLE_ETCD_CA is set")
        etcd_sts = [d for d in by_kind(docs, "StatefulSet") if d is not sts]
        if etcd_sts:
            e = etcd_sts[0]
            ec = container(e, "etcd")
            client_port = [p["containerPort"] for p in ec["ports"] if p["name"] == "client"][0]
            scheme = "https" if tls_etcd else "http"
            want = [f"{scheme}://{e['metadata']['name']}-{i}.{e['spec']['serviceName']}.$(POD_NAMESPACE).svc.{domain}:"
                    f"{client_port}" for i in range(e["spec"]["replicas"])]
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
            check_etcd_tls(docs, e, tls_etcd, env, secret_files, w)
        else:
            check(all(u.startswith(("http://", "https://")) for u in endpoints), w + "external etcd endpoints")
    else:
        for k in ("AISLE_ETCD_ENDPOINTS", "AISLE_ADVERTISE_ADDR", "AISLE_PEER_TLS_CERT", "AISLE_ETCD_CA"):
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
    check_network_policies(docs, sts, ports, etcd_mode, namespace, w)
    check_certificates(docs, sts, secret_files, etcd_mode, namespace, domain, w)
    check_helm_test(docs, sts, w)


QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(k|Ki|M|Mi|G|Gi|T|Ti)?$")
QUANTITY_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
                  "Ti": 2**40}


def quantity_bytes(q: str) -> int:
    m = QUANTITY.match(str(q))
    check(m is not None, f"{q!r} is not a quantity the chart's schema allows")
    return int(float(m.group(1)) * QUANTITY_UNITS[m.group(2)])


def check_log_volume(sts: dict, c: dict, env: dict, w: str) -> None:
    """The decision trail and the event log: files in one directory on the node's own volume claim (a
    volumeClaimTemplate: it outlives the pod, and a full claim is a write error the node reports, where an emptyDir
    over its sizeLimit gets the pod evicted), writable by the node (fsGroup), kept on scale-in and deletion, with
    every log setting given, and the per-log caps plus a live segment per log within the claim."""
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    claims = {t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates", [])}
    logs = [k for k in ("AISLE_DECISION_LOG", "AISLE_EVENT_LOG") if k in env]
    settings = [k for k in LOG_SETTINGS_ENV if k in env]
    if not logs:
        check(not settings, w + f"log settings {settings} without a log")
        check(not claims, w + f"volume claims {sorted(claims)} without a log to write")
        check(not [m for m in c["volumeMounts"] if m["mountPath"] == LOG_DIR], w + f"{LOG_DIR} mounted without a log")
        return
    check("AISLE_DECISION_LOG" in env, w + "the event log without the decision trail (eventLog needs auditTrail)")
    check(settings == LOG_SETTINGS_ENV, w + f"the logs need every setting {LOG_SETTINGS_ENV}, the chart gives {settings}")
    dirs = {os.path.dirname(env[k]["value"]) for k in logs}
    check(dirs == {LOG_DIR}, w + f"the logs must be in {LOG_DIR}, not {sorted(dirs)}")
    mounts = [m for m in c["volumeMounts"] if m["mountPath"] == LOG_DIR]
    check(len(mounts) == 1, w + f"{LOG_DIR} is not mounted (once)")
    m = mounts[0]
    check(not m.get("readOnly") and "subPath" not in m, w + f"{LOG_DIR} must be writable, without subPath")
    check(m["name"] in claims, w + f"the log volume {m['name']} must be a volumeClaimTemplate of the StatefulSet (an "
                                   "emptyDir dies with the pod and is evicted when full)")
    check(m["name"] not in {v["name"] for v in pod["volumes"]},
          w + f"a pod volume {m['name']} shadows the claim of the logs")
    claim = claims[m["name"]]["spec"]
    check(claim["accessModes"] == ["ReadWriteOnce"], w + "the log claim must be ReadWriteOnce (one node per volume)")
    check(pod["securityContext"].get("fsGroup") is not None, w + "fsGroup is needed for the node to write its logs")
    policy = spec.get("persistentVolumeClaimRetentionPolicy", {})
    check(policy.get("whenScaled", "Retain") == "Retain" and policy.get("whenDeleted", "Retain") == "Retain",
          w + f"the log claims must be retained on scale-in and deletion (an audit trail), not {policy}")
    size = quantity_bytes(claim["resources"]["requests"]["storage"])
    cap = int(env["AISLE_LOG_MAX_BYTES"]["value"])
    segment = int(env["AISLE_LOG_SEGMENT_BYTES"]["value"])
    check(segment >= 4096 and int(env["AISLE_LOG_SYNC_MS"]["value"]) > 0
          and int(env["AISLE_LOG_RETENTION_HOURS"]["value"]) > 0 and int(env["AISLE_LOG_SEGMENT_SECS"]["value"]) > 0,
          w + "log settings out of the node's range")
    if cap:
        need = len(logs) * (cap + segment)
        check(need <= 0.9 * size, w + f"{len(logs)} log(s) capped at {cap} bytes each (+ a {segment}-byte live "
                                      f"segment) need {need} bytes: more than 90% of the {size}-byte log volume")


def projected_secrets(v: dict) -> list[dict] | None:
    """The Secret sources of a projected volume made of Secrets only (None for any other volume)."""
    sources = v.get("projected", {}).get("sources")
    if not sources or any(set(src) != {"secret"} for src in sources):
        return None
    return [src["secret"] for src in sources]


def check_secret_mounts(c: dict, pod: dict, env: dict, pod_name: str, w: str) -> dict[str, tuple[str, str]]:
    """Every credential file the node re-reads is a key of a Secret volume (or of a projected volume of Secrets)
    mounted whole (no subPath), read-only. `$(POD_NAME)` in a path is read as `pod_name`. Returns {env name: (Secret
    name, key)}."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    out = {}
    for m in c["volumeMounts"]:
        v = volumes.get(m["name"], {})
        if "secret" in v or projected_secrets(v) is not None:
            check("subPath" not in m and "subPathExpr" not in m,
                  w + f"Secret volume {m['name']} is mounted with subPath: rotation would never reach the file")
            check(m.get("readOnly") is True, w + f"Secret volume {m['name']} must be mounted readOnly")
            mode = (v.get("secret") or v.get("projected") or {}).get("defaultMode", 0o644)
            check(mode & 0o007 == 0, w + f"Secret volume {m['name']} is world-readable")
    for k, key in SECRET_FILE_ENV.items():
        if k not in env:
            continue
        path = env[k]["value"].replace("$(POD_NAME)", pod_name)
        found = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
        check(found, w + f"{k}={path} is on no mounted volume")
        m = max(found, key=lambda x: len(x["mountPath"]))
        v = volumes[m["name"]]
        projected = projected_secrets(v)
        check("secret" in v or projected is not None,
              w + f"{k}={path} must come from a Secret volume, not {sorted(set(v) - {'name'})}")
        rel = path[len(m["mountPath"].rstrip("/")) + 1:]
        check("/" not in rel, w + f"{k}={path}: the file must be a key at the top of its Secret volume")
        if projected is not None:
            hits = [(src["name"], i["key"]) for src in projected for i in src.get("items", []) if i["path"] == rel]
            check(len(hits) == 1, w + f"{k}: {rel} must be exactly one item of the projected Secrets, not {hits}")
            secret, rel = hits[0]
        else:
            secret = v["secret"]["secretName"]
            items = v["secret"].get("items")
            if items:
                check(any(i["path"] == rel for i in items), w + f"{k}: {rel} is not among the projected items")
                rel = next(i["key"] for i in items if i["path"] == rel)
        if key is not None:
            check(rel == key, w + f"{k} must name the Secret key {key}, not {rel}")
        out[k] = (secret, rel)
    return out


def check_security_env(env: dict, etcd_mode: bool, w: str) -> None:
    """Secure unless insecure: TLS and tokens on the client/admin ports, mutual TLS on the peer port, in pairs."""
    insecure = env.get("AISLE_INSECURE", {}).get("value")
    check(insecure in (None, "true"), w + f"AISLE_INSECURE={insecure!r}: set it to \"true\" or leave it out")
    check(("AISLE_TLS_CERT" in env) == ("AISLE_TLS_KEY" in env), w + "AISLE_TLS_CERT and AISLE_TLS_KEY go together")
    check("AISLE_TLS_CLIENT_CA" not in env or "AISLE_TLS_CERT" in env, w + "AISLE_TLS_CLIENT_CA without TLS")
    peer = [k in env for k in ("AISLE_PEER_TLS_CERT", "AISLE_PEER_TLS_KEY", "AISLE_PEER_TLS_CA")]
    check(all(peer) or not any(peer), w + "the peer TLS certificate, key and CA go together")
    check(("AISLE_ETCD_CERT" in env) == ("AISLE_ETCD_KEY" in env), w + "AISLE_ETCD_CERT and AISLE_ETCD_KEY go together")
    check("AISLE_ETCD_CERT" not in env or "AISLE_ETCD_CA" in env, w + "an etcd client certificate without AISLE_ETCD_CA")
    check(("AISLE_ETCD_USER" in env) == ("AISLE_ETCD_PASSWORD_FILE" in env), w + "etcd user and password go together")
    if insecure is None:
        check("AISLE_TLS_CERT" in env, w + "not insecure, yet no TLS on the client and admin ports")
        check("AISLE_AUTH_TOKENS" in env, w + "not insecure, yet no token file")
        check("AISLE_PSEUDONYM_KEY" in env, w + "not insecure, yet no pseudonym key file")
        if etcd_mode:
            check(all(peer), w + "not insecure, yet no mutual TLS on the peer port")
            check("AISLE_ETCD_CA" in env, w + "not insecure, yet etcd without TLS")


def check_etcd_tls(docs: list[dict], e: dict, tls: bool, node_env: dict, node_secrets: dict, w: str) -> None:
    """The bundled etcd: TLS for clients and peers with client certificates required, and the auth bootstrap."""
    pod = e["spec"]["template"]["spec"]
    ec = container(e, "etcd")
    eenv = {k: v.get("value") for k, v in env_of(ec).items()}
    urls = ["ETCD_INITIAL_ADVERTISE_PEER_URLS", "ETCD_ADVERTISE_CLIENT_URLS", "ETCD_LISTEN_PEER_URLS",
            "ETCD_LISTEN_CLIENT_URLS"]
    flags = {"ETCD_CERT_FILE": "tls.crt", "ETCD_KEY_FILE": "tls.key", "ETCD_TRUSTED_CA_FILE": "ca.crt",
             "ETCD_PEER_CERT_FILE": "tls.crt", "ETCD_PEER_KEY_FILE": "tls.key", "ETCD_PEER_TRUSTED_CA_FILE": "ca.crt"}
    names = [c["name"] for c in pod["containers"]]
    if not tls:
        check(all(eenv[u].startswith("http://") for u in urls), w + "plaintext etcd with https URLs")
        check(not any(k in eenv for k in flags), w + "etcd TLS files without https URLs")
        check(names == ["etcd"], w + "the auth bootstrap needs etcd's TLS")
        return
    for u in urls:
        check(eenv[u].startswith("https://"), w + f"etcd {u}={eenv[u]} is not https")
    check(all(m.split("=", 1)[1].startswith("https://") for m in eenv["ETCD_INITIAL_CLUSTER"].split(",")),
          w + "ETCD_INITIAL_CLUSTER must use https peer URLs")
    check(eenv.get("ETCD_CLIENT_CERT_AUTH") == "true" and eenv.get("ETCD_PEER_CLIENT_CERT_AUTH") == "true",
          w + "etcd must require client certificates from clients and peers (--client-cert-auth, --peer-client-cert-auth)")
    mounts = {m["mountPath"]: m for m in ec["volumeMounts"]}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    server_secret = None
    for k, key in flags.items():
        path = eenv.get(k)
        check(path is not None, w + f"etcd needs {k}")
        d, f = os.path.split(path)
        check(d in mounts and f == key, w + f"etcd {k}={path} is not the key {key} of a mounted Secret")
        m = mounts[d]
        check("subPath" not in m and m.get("readOnly") is True, w + f"etcd mounts {m['name']} with subPath or writable")
        v = volumes[m["name"]]
        check("secret" in v, w + f"etcd {k} is not from a Secret")
        check(server_secret in (None, v["secret"]["secretName"]), w + "etcd's client and peer TLS use two Secrets")
        server_secret = v["secret"]["secretName"]
    check(eenv["ETCD_LISTEN_METRICS_URLS"].startswith("http://"), w + "etcd's probes need the plaintext metrics URL")
    # The auth bootstrap: the script from its ConfigMap, run in every member as root, against its own member.
    check("auth" in names, w + "the bundled etcd with TLS needs its auth container")
    ac = container(e, "auth")
    aenv = {k: v.get("value") for k, v in env_of(ac).items()}
    client_port = [p["containerPort"] for p in ec["ports"] if p["name"] == "client"][0]
    check(aenv["ETCDCTL_ENDPOINTS"] == f"https://127.0.0.1:{client_port}",
          w + "the auth bootstrap must reach its own member over loopback (not subject to the NetworkPolicy)")
    check(aenv["AUTH_USER"] == "aisle" and aenv["AUTH_PREFIX"] == "/aisle/",
          w + "the auth bootstrap must create the user aisle with the prefix /aisle/ (the nodes' keys)")
    amounts = {m["mountPath"]: m for m in ac["volumeMounts"]}
    script = ac["command"][-1]
    sdir = os.path.dirname(script)
    check(sdir in amounts, w + "the auth script is not on a mounted volume")
    scm = one(docs, "ConfigMap", volumes[amounts[sdir]["name"]]["configMap"]["name"])
    body = scm["data"][os.path.basename(script)]
    for needle in ("--no-password", "user grant-role root root", "role grant-permission", "readwrite",
                   "--prefix=true", "user grant-role", "auth enable"):
        check(needle in body, w + f"the auth script lacks `{needle}`")
    for k in ("ETCDCTL_CERT", "ETCDCTL_KEY", "ETCDCTL_CACERT"):
        d = os.path.dirname(aenv[k])
        check(d in amounts and "secret" in volumes[amounts[d]["name"]] and "subPath" not in amounts[d],
              w + f"the auth container's {k} is not from a Secret volume mounted whole")
    shell = ac["command"][0]
    check(os.path.dirname(shell) in amounts, w + "the auth container's shell is not on a mounted volume")
    check(aenv["PATH"].split(":")[0] == os.path.dirname(shell), w + "the shell's tools must come first on PATH")
    tools = amounts[os.path.dirname(shell)]["name"]
    check(any(tools in [m["name"] for m in ic.get("volumeMounts", [])] for ic in pod.get("initContainers", [])),
          w + "no init container installs the shell of the auth container")
    # The nodes reach it with a client certificate and its CA (common name aisle: the user the bootstrap creates).
    check({"AISLE_ETCD_CA", "AISLE_ETCD_CERT", "AISLE_ETCD_KEY"} <= set(node_secrets),
          w + "the nodes need AISLE_ETCD_CA, AISLE_ETCD_CERT and AISLE_ETCD_KEY for the bundled etcd")
    check("AISLE_ETCD_USER" not in node_env, w + "the bundled etcd maps the certificate's CN; no etcd user")


def rule_peers(rule: dict) -> list[dict] | None:
    return rule.get("from")


def check_network_policies(docs: list[dict], sts: dict, ports: dict, etcd_mode: bool, namespace: str, w: str) -> None:
    """Ingress of the nodes by port: peer from the nodes only, admin from one namespace, client and metrics as set;
    the bundled etcd's client port from the nodes only, its peer port from its members only. No port is left open by
    a rule without ports, and no container port is without a rule."""
    labels = sts["spec"]["template"]["metadata"]["labels"]
    node_sel = sts["spec"]["selector"]["matchLabels"]
    pols = by_kind(docs, "NetworkPolicy")
    node_pols = [p for p in pols if selects(p["spec"]["podSelector"].get("matchLabels", {}), labels)]
    if not pols:
        return
    check(len(node_pols) == 1, w + f"expected one NetworkPolicy of the nodes, found {len(node_pols)}")
    np_ = node_pols[0]["spec"]
    check("Ingress" in np_["policyTypes"], w + "the nodes' NetworkPolicy must restrict ingress")
    by_port: dict[str, list] = {}
    for rule in np_.get("ingress", []):
        check(rule.get("ports"), w + "a NetworkPolicy rule without ports opens every port")
        for p in rule["ports"]:
            check(p["port"] in ports, w + f"NetworkPolicy rule for unknown port {p['port']}")
            check(p["port"] not in by_port, w + f"two NetworkPolicy rules for port {p['port']}")
            by_port[p["port"]] = rule_peers(rule)
    check(set(by_port) == set(ports), w + f"NetworkPolicy covers {sorted(by_port)}, the pods open {sorted(ports)}")
    if etcd_mode:
        check(by_port["peer"] == [{"podSelector": {"matchLabels": node_sel}}],
              w + f"the peer port must admit the StatefulSet's own pods only, not {by_port['peer']}")
    admin = by_port["admin"]
    check(admin, w + "the admin port must not admit everyone")
    for peer in admin:
        ns = peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
        check(ns and "ipBlock" not in peer, w + f"the admin port must admit one namespace, by name: {peer}")
    etcd_pols = [p for p in pols if p is not node_pols[0]]
    etcd_sts = [d for d in by_kind(docs, "StatefulSet") if d is not sts]
    if etcd_sts:
        e = etcd_sts[0]
        elabels = e["spec"]["template"]["metadata"]["labels"]
        ep = [p for p in etcd_pols if selects(p["spec"]["podSelector"].get("matchLabels", {}), elabels)]
        check(len(ep) == 1, w + "the bundled etcd needs its NetworkPolicy")
        rules = {}
        for rule in ep[0]["spec"]["ingress"]:
            check(rule.get("ports"), w + "an etcd NetworkPolicy rule without ports")
            for p in rule["ports"]:
                rules[p["port"]] = rule_peers(rule)
        eports = {p["name"] for p in container(e, "etcd")["ports"]}
        check(set(rules) == eports, w + f"etcd NetworkPolicy covers {sorted(rules)}, etcd opens {sorted(eports)}")
        check(rules["client"] == [{"podSelector": {"matchLabels": node_sel}}],
              w + f"etcd's client port must admit the nodes only, not {rules['client']}")
        check(rules["peer"] == [{"podSelector": {"matchLabels": e["spec"]["selector"]["matchLabels"]}}],
              w + "etcd's peer port must admit its members only")


# cert-manager's Certificate is a CRD: the fields the chart uses, strictly.
CERTIFICATE_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "cert-manager.io/v1"}, "kind": {"const": "Certificate"},
        "metadata": {"type": "object", "additionalProperties": False, "required": ["name"],
                     "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                                    "labels": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "spec": {"type": "object", "additionalProperties": False, "required": ["secretName", "issuerRef"],
                 "anyOf": [{"required": ["dnsNames"]}, {"required": ["commonName"]}],
                 "properties": {
                     "secretName": {"type": "string", "minLength": 1},
                     "issuerRef": {"type": "object", "additionalProperties": False, "required": ["name"], "properties": {
                         "name": {"type": "string", "minLength": 1}, "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                         "group": {"type": "string"}}},
                     "duration": {"type": "string", "pattern": "^([0-9]+(\\.[0-9]+)?(h|m|s))+$"},
                     "renewBefore": {"type": "string", "pattern": "^([0-9]+(\\.[0-9]+)?(h|m|s))+$"},
                     "commonName": {"type": "string", "maxLength": 64},
                     "dnsNames": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                     "uris": {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": "^spiffe://"}},
                     "ipAddresses": {"type": "array", "items": {"type": "string"}},
                     "usages": {"type": "array", "items": {"enum": [
                         "digital signature", "key encipherment", "server auth", "client auth"]}},
                     "privateKey": {"type": "object", "additionalProperties": False, "properties": {
                         "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "size": {"type": "integer"},
                         "encoding": {"enum": ["PKCS1", "PKCS8"]}, "rotationPolicy": {"enum": ["Never", "Always"]}}},
                 }},
    },
}


def check_certificates(docs: list[dict], sts: dict, secret_files: dict, etcd_mode: bool, namespace: str,
                       domain: str | None, w: str) -> None:
    """With cert-manager: a Certificate for each TLS Secret the pods mount, with the names they are reached by."""
    certs = {c["spec"]["secretName"]: c for c in by_kind(docs, "Certificate")}
    if not certs:
        return
    domain = domain or "cluster.local"
    name = sts["metadata"]["name"]

    def cert_for(env_name: str) -> dict:
        secret = secret_files[env_name][0]
        check(secret in certs, w + f"no Certificate writes Secret {secret} ({env_name})")
        return certs[secret]["spec"]

    def svc_names(svc: str) -> list[str]:
        return [svc, f"{svc}.{namespace}", f"{svc}.{namespace}.svc", f"{svc}.{namespace}.svc.{domain}"]

    client = cert_for("AISLE_TLS_CERT")
    missing = [n for n in svc_names(name) + svc_names(f"{name}-admin") if n not in client["dnsNames"]]
    check(not missing, w + f"the client certificate lacks the Service names {missing}")
    check("server auth" in client["usages"], w + "the client certificate needs the server auth usage")
    if etcd_mode:
        # One peer certificate per pod the StatefulSet may run, each naming its pod (DNS and the node URI SAN).
        base = secret_files["AISLE_PEER_TLS_CERT"][0].rsplit("-", 1)[0]
        peers = sorted((c for c in certs.values() if c["spec"]["secretName"].startswith(base + "-")),
                       key=lambda c: int(c["spec"]["secretName"].rsplit("-", 1)[1]))
        check(len(peers) >= sts["spec"].get("replicas", 1),
              w + f"{len(peers)} peer certificates for {sts['spec'].get('replicas', 1)} pods")
        for i, cert in enumerate(peers):
            peer, pod = cert["spec"], f"{name}-{i}"
            check(peer["secretName"] == f"{base}-{i}", w + f"peer certificate {i} writes {peer['secretName']}")
            want = f"{pod}.{sts['spec']['serviceName']}.{namespace}.svc.{domain}"
            check(peer["dnsNames"] == [want], w + f"the peer certificate of {pod} must name {want}, not {peer['dnsNames']}")
            check(peer.get("uris") == [f"spiffe://aisle/node/{pod}"],
                  w + f"the peer certificate of {pod} must carry the URI SAN spiffe://aisle/node/{pod}")
            check({"server auth", "client auth"} <= set(peer["usages"]), w + "the peer certificate needs server and client auth")
    etcd_secrets: set[str] = set()
    etcd_sts = [d for d in by_kind(docs, "StatefulSet") if d is not sts]
    if etcd_sts and "AISLE_ETCD_CERT" in secret_files:
        e = etcd_sts[0]
        etcd_name = e["metadata"]["name"]
        vols = {v["name"]: v for v in e["spec"]["template"]["spec"].get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for m in container(e, "etcd")["volumeMounts"]}
        server_secret = vols[mounts[os.path.dirname(env_of(container(e, "etcd"))["ETCD_CERT_FILE"]["value"])]]
        server = certs.get(server_secret["secret"]["secretName"])
        check(server is not None, w + "no Certificate for the etcd members")
        server = server["spec"]
        for n in (f"*.{etcd_name}.{namespace}.svc.{domain}", "localhost"):
            check(n in server["dnsNames"], w + f"the etcd certificate lacks {n}")
        check("127.0.0.1" in server.get("ipAddresses", []), w + "the etcd certificate lacks 127.0.0.1 (the bootstrap)")
        check({"server auth", "client auth"} <= set(server["usages"]), w + "etcd members need server and client auth")
        node = cert_for("AISLE_ETCD_CERT")
        check(node.get("commonName") == "aisle" and "client auth" in node["usages"],
              w + "the nodes' etcd certificate needs common name aisle (their etcd user) and client auth")
        amounts = {m["mountPath"]: m["name"] for m in container(e, "auth")["volumeMounts"]}
        root_secret = vols[amounts[os.path.dirname(env_of(container(e, "auth"))["ETCDCTL_CERT"]["value"])]]
        root = certs.get(root_secret["secret"]["secretName"])
        check(root is not None and root["spec"].get("commonName") == "root", w + "the etcd root certificate needs CN root")
        etcd_secrets = {server_secret["secret"]["secretName"], root_secret["secret"]["secretName"],
                        secret_files["AISLE_ETCD_CERT"][0]}
    # Certificates that verify one another share a (CA) issuer: the peers among themselves, etcd's members, its root
    # user and the nodes' etcd client certificate among themselves. The client port's may differ from both.
    def issuer(c: dict) -> str:
        return json.dumps(c["spec"]["issuerRef"], sort_keys=True)

    if etcd_mode:
        check(len({issuer(c) for c in peers}) == 1, w + "the peer certificates must share one (CA) issuer")
    etcd_certs = [c for c in certs.values() if c["spec"]["secretName"] in etcd_secrets]
    check(len({issuer(c) for c in etcd_certs}) <= 1,
          w + "etcd's certificates and the nodes' etcd client certificate must share one (CA) issuer")


def check_helm_test(docs: list[dict], sts: dict, w: str) -> None:
    """`helm test` calls the client Service the way the nodes serve it (https and a token, unless insecure)."""
    tests = [d for d in by_kind(docs, "Pod") if "helm.sh/hook" in (d["metadata"].get("annotations") or {})]
    env = env_of(container(sts, "aisle"))
    for t in tests:
        c = t["spec"]["containers"][0]
        addr = c["args"][c["args"].index("--addr") + 1]
        if "AISLE_TLS_CERT" in env:
            check(addr.startswith("https://") and "--ca-cert" in c["args"], w + "the helm test must use TLS")
        if "AISLE_AUTH_TOKENS" in env:
            check("AISLE_TOKEN" in env_of(c), w + "the helm test needs a token")
        for v in t["spec"].get("volumes", []):
            if "secret" in v:
                check([i["key"] for i in v["secret"].get("items", [])] == ["ca.crt"],
                      w + "the helm test must mount only ca.crt of the TLS Secret (not its key)")


def check_secure_defaults() -> str:
    """The chart's defaults (with the Secret names, as in k8s/): TLS, tokens, mutual TLS between peers, etcd with
    TLS and auth, NetworkPolicies on, no Service reachable from outside the cluster, no AISLE_INSECURE."""
    from chart import load

    vals = load(CHART).values
    check(vals["insecure"] is False and vals["networkPolicy"]["enabled"] is True and vals["service"]["type"] == "ClusterIP",
          "the defaults must be insecure: false, networkPolicy.enabled: true, service.type: ClusterIP")
    _, docs = render(value_sets()[BASE_VALUES])
    facts = check_secure_rendering(docs, "defaults")
    return facts


def check_secure_rendering(docs: list[dict], where: str) -> str:
    outside = [f"{s['metadata']['name']} ({s['spec'].get('type')})" for s in by_kind(docs, "Service")
               if s["spec"].get("type", "ClusterIP") != "ClusterIP"]
    check(not outside, f"{where}: Services reachable from outside the cluster: {outside}")
    sts = node_statefulset(docs)
    env = env_of(container(sts, "aisle"))
    check("AISLE_INSECURE" not in env, f"{where}: AISLE_INSECURE is set")
    for k in ("AISLE_TLS_CERT", "AISLE_AUTH_TOKENS", "AISLE_PSEUDONYM_KEY", "AISLE_PEER_TLS_CA", "AISLE_ETCD_CA",
              "AISLE_ETCD_CERT", "AISLE_DECISION_LOG"):
        check(k in env, f"{where}: {k} is not set")
    check(all(u.startswith("https://") for u in env["AISLE_ETCD_ENDPOINTS"]["value"].split(",")),
          f"{where}: etcd endpoints are not https")
    pols = by_kind(docs, "NetworkPolicy")
    check(len(pols) == 2, f"{where}: expected the nodes' and etcd's NetworkPolicies, found {len(pols)}")
    check(not re.search(r"LoadBalancer", json.dumps(docs)), f"{where}: a LoadBalancer is mentioned")
    check("AISLE_EVENT_LOG" not in env, f"{where}: the event log is on (training data is opt-in)")
    return (f"{where}: every Service ClusterIP/headless, TLS + tokens on client and admin ports, a pseudonym key, "
            "mutual TLS on the peer port, etcd over https with a client certificate, NetworkPolicies for nodes and "
            "etcd, no --insecure; the decision trail on a volume claim, the event log off")


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
    rendered, _ = render(value_sets()[BASE_VALUES])
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
    listed = load_yaml(os.path.join(K8S_BASE, "kustomization.yaml"))["resources"]
    check(set(GENERATED) <= set(listed), f"k8s/base/kustomization.yaml does not list {sorted(set(GENERATED) - set(listed))}")
    return (f"k8s/base holds exactly the chart's default rendering with ci/{BASE_VALUES}-values.yaml "
            f"({len(GENERATED)} files, all listed in its kustomization)")


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
    check_consistency(docs, f"kustomize {overlay or 'base'}", ns)
    if not overlay:
        check_secure_rendering(docs, "kustomize base")
    return (f"`kubectl kustomize k8s/{overlay}` renders {len(docs)} objects, valid (strict) and equal to the chart "
            f"with its {values_name} values" + ("; secure (TLS, tokens, NetworkPolicies, no LoadBalancer)"
                                                 if not overlay else ""))


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
    base = os.path.join(CHART, "ci", f"{BASE_VALUES}-values.yaml")
    p = subprocess.run([helm, "lint", "--strict", CHART, "-f", base], capture_output=True, text=True)
    check(p.returncode == 0, f"helm lint: {p.stdout}{p.stderr}")
    # The defaults alone are refused, with the message of the chart's `fail`.
    p = subprocess.run([helm, "template", RELEASE, CHART, "-n", NAMESPACE], capture_output=True, text=True)
    check(p.returncode != 0 and "tls.client.secretName" in p.stderr,
          f"helm template must refuse the defaults (no TLS, no tokens): {p.stderr or p.stdout[:300]}")
    p = subprocess.run([helm, "template", RELEASE, CHART, "-n", NAMESPACE, "-f", base, "--set",
                        "privacy.pseudonymKey.secretName="], capture_output=True, text=True)
    missing = [m for m in pseudonym_refusal() if m not in p.stderr]
    check(p.returncode != 0 and not missing,
          f"helm template must refuse the base values without the pseudonym key, saying {missing}: {p.stderr[:400]}")
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
    return ("helm lint --strict passes; helm template refuses the defaults and a missing pseudonym key, and equals "
            "scripts/k8s/chart.py for every value set")


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


def need_tools(*tools: str) -> None:
    """Installs what the binary tests run (Debian's etcd-server, etcd-client, openssl) through scripts/deps.sh."""
    if not all(shutil.which(t) for t in tools):
        subprocess.run([os.path.join(ROOT, "scripts", "deps.sh")], check=True)
    missing = [t for t in tools if not shutil.which(t)]
    check(not missing, f"{missing} needed (scripts/deps.sh installs etcd-server, etcd-client and openssl)")


def wait_http(url: str, what: str, log_path: str, seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if http_get(url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what} did not become healthy within {seconds:.0f} s: " + open(log_path).read()[-2000:])


def start_etcd(procs: Processes, tmp: str) -> str:
    need_tools("etcd")
    etcd = shutil.which("etcd")
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    log = open(os.path.join(tmp, "etcd.log"), "w")
    procs.start([etcd, "--name", "k8s-check", "--data-dir", os.path.join(tmp, "etcd"),
                 "--listen-client-urls", url, "--advertise-client-urls", url,
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", f"k8s-check=http://127.0.0.1:{peer}"],
                stdout=log, stderr=subprocess.STDOUT)
    wait_http(f"{url}/health", "etcd", os.path.join(tmp, "etcd.log"))
    return url


def write_secret_dir(d: str, files: dict[str, str]) -> None:
    """A Secret volume as the kubelet lays it out and updates it (its atomic writer): the files in a new timestamped
    directory, `..data` a symlink to it swapped in one rename, each key a symlink through `..data`. A file mounted
    with subPath would keep the old inode; a whole-volume mount sees the swap."""
    os.makedirs(d, exist_ok=True)
    data = os.path.join(d, "..data")
    prev = os.readlink(data) if os.path.islink(data) else None
    ts = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.time_ns()}"
    os.mkdir(os.path.join(d, ts))
    for k, v in files.items():
        path = os.path.join(d, ts, k)
        with open(path, "w") as f:
            f.write(v)
        os.chmod(path, 0o440)
    tmp_link = os.path.join(d, "..data_tmp")
    os.symlink(ts, tmp_link)
    os.replace(tmp_link, data)
    for k in files:
        if not os.path.lexists(os.path.join(d, k)):
            os.symlink(os.path.join("..data", k), os.path.join(d, k))
    for name in os.listdir(d):
        if not name.startswith("..") and name not in files:
            os.unlink(os.path.join(d, name))
    if prev:
        shutil.rmtree(os.path.join(d, prev), ignore_errors=True)


def container_process(docs: list[dict], podspec: dict, c: dict, pod_name: str, namespace: str, root: str,
                      secrets: dict[str, dict[str, str]], base_env: dict[str, str], claims: tuple[str, ...] = ()):
    """The environment the kubelet gives a container, with the pod's volumes as directories under `root` (ConfigMaps
    written out, Secrets from `secrets` in the kubelet's layout, the StatefulSet's `claims` empty directories) and the
    downward API answered with `pod_name` and `namespace`; paths in the environment and the arguments are moved under
    the volumes' directories. Returns (args, command, env, {Secret name: [(directory, items)]})."""
    volumes = {v["name"]: v for v in podspec.get("volumes", [])}
    volumes.update({name: {"name": name, "emptyDir": {}} for name in claims})
    mounts, secret_dirs = {}, {}
    for m in c.get("volumeMounts", []):
        d = os.path.join(root, m["name"])
        v = volumes[m["name"]]
        if not os.path.exists(d):
            os.makedirs(d)
            if "configMap" in v:
                cm = one(docs, "ConfigMap", v["configMap"]["name"])
                for k, text in (cm.get("data") or {}).items():
                    with open(os.path.join(d, k), "w") as f:
                        f.write(text)
            elif "secret" in v:
                name = v["secret"]["secretName"]
                check(name in secrets, f"the test has no content for Secret {name}")
                files = secrets[name]
                items = v["secret"].get("items")
                if items:
                    files = {i["path"]: files[i["key"]] for i in items}
                write_secret_dir(d, files)
                secret_dirs.setdefault(name, []).append((d, items))
            elif projected_secrets(v) is not None:
                # The Secrets' items side by side in one directory; an optional Secret the test lacks is left out,
                # as the kubelet leaves out one not (yet) created.
                files = {}
                for src in projected_secrets(v):
                    name = src["name"]
                    if name not in secrets:
                        check(src.get("optional") is True, f"the test has no content for Secret {name}")
                        continue
                    files.update({i["path"]: secrets[name][i["key"]] for i in src["items"]})
                    secret_dirs.setdefault(name, []).append((d, src["items"]))
                write_secret_dir(d, files)
            else:
                check("emptyDir" in v, f"the test maps ConfigMap, Secret (also projected) and emptyDir volumes only, not {v}")
        mounts[m["mountPath"]] = d
    env = dict(base_env)
    env["HOSTNAME"] = pod_name  # as the kubelet sets it
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    defined: dict[str, str] = {}
    for e in c.get("env", []):
        if "valueFrom" in e:
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            value = {"metadata.name": pod_name, "metadata.namespace": namespace}[path]
        else:
            value = expand(e.get("value", ""), defined)
        defined[e["name"]] = value

    def moved(v: str) -> str:
        # A path in the pod becomes the same path under its volume's directory (the deepest mount wins, once).
        for mount_path in sorted(mounts, key=len, reverse=True):
            if v == mount_path or v.startswith(mount_path + "/"):
                return mounts[mount_path] + v[len(mount_path):]
        return v

    for k, v in defined.items():
        env[k] = moved(v)
    args = [moved(expand(a, defined)) for a in c.get("args", [])]
    command = [moved(expand(a, defined)) for a in c.get("command", [])]
    return args, command, env, secret_dirs


def pod_process(docs: list[dict], pod_name: str, namespace: str, root: str, etcd_url: str | None,
                secrets: dict[str, dict[str, str]] | None = None):
    """The command line and environment the kubelet gives the node container (see container_process)."""
    sts = node_statefulset(docs)
    c = container(sts, "aisle")
    claims = tuple(t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", []))
    args, _, env, secret_dirs = container_process(docs, sts["spec"]["template"]["spec"], c, pod_name, namespace,
                                                  root, secrets or {}, dockerfile_image_env(), claims)
    if etcd_url is not None:
        env["AISLE_ETCD_ENDPOINTS"] = etcd_url
    return args, env, c, secret_dirs


def check_binary_ready(values_name: str, cluster: bool) -> str:
    """Starts the real `aisle` with the chart's arguments and environment and waits for /readyz."""
    binary = aisle_binary()
    grpc, http = free_port(), free_port()
    over = copy.deepcopy(value_sets()[values_name])
    over.setdefault("ports", {}).update({"grpc": grpc, "http": http, "admin": free_port(), "peer": free_port()})
    namespace, pod_name = "k8s-check", f"{RELEASE}-0"
    _, docs = render(over, namespace=namespace)
    procs = Processes()
    tmp = tempfile.mkdtemp(prefix="aisle-k8s-check-")
    try:
        etcd_url = start_etcd(procs, tmp) if cluster else None
        args, env, c, _ = pod_process(docs, pod_name, namespace, os.path.join(tmp, "pod"), etcd_url)
        shown = {k: v for k, v in env.items() if k.startswith("AISLE_")}
        if cluster:
            check(env["AISLE_CLUSTER"] == "etcd", "the defaults run in etcd mode")
        check(env.get("AISLE_INSECURE") == "true", f"{values_name} is expected to run insecure (plaintext)")
        log_path = os.path.join(tmp, "aisle.log")
        log = open(log_path, "w")
        started = time.time()
        node = procs.start([binary, *args], env=env, stdout=log, stderr=subprocess.STDOUT)

        def tail() -> str:
            return f"\nnode ran as: aisle {' '.join(args)} with {shown}\nlog:\n" + open(log_path).read()[-3000:]

        wait_ready(node, http, tail)
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
        decided = json.loads(p.stdout)
        served_by = decided.get("served_by")
        check(served_by == pod_name, f"served_by is {served_by!r}, not the pod name {pod_name!r}")
        facts.append(f"Decide served_by {served_by}")
        if "AISLE_DECISION_LOG" in env:
            facts.append(check_log_metrics(http, tail))
        if cluster:
            advertise = env["AISLE_ADVERTISE_ADDR"]
            check(advertise == f"{pod_name}.{RELEASE}-peers.{namespace}.svc.cluster.local:{over['ports']['peer']}",
                  f"advertise address {advertise}")
            keys = etcd_keys(etcd_url)
            member = [k for k, v in keys.items() if pod_name in k and advertise in v]
            check(member, f"no membership key for node {pod_name} advertising {advertise} in etcd: {keys}" + tail())
            m = re.search(r"^aisle_cluster_members(?:\{[^}]*\})? (\S+)$", metrics, re.M)
            check(m is not None and float(m.group(1)) == 1.0,
                  f"aisle_cluster_members should be 1, /metrics has {m.group(0) if m else 'none'}")
            facts.append(f"joined etcd as {pod_name} ({member[0]} -> {advertise}), aisle_cluster_members 1")
        facts.append(terminate(node, docs, c, tail))
        if "AISLE_DECISION_LOG" in env:
            facts.append(check_trail(binary, env["AISLE_DECISION_LOG"], [decided["decision_id"]], tail))
        if cluster:
            # Only the membership key is under the lease; control/loaded/<node> (what the node served) stays for the
            # next node of that id, and only members' records are read.
            left = [k for k in etcd_keys(etcd_url) if pod_name in k and "/members/" in k]
            check(not left, f"the node's membership key outlived it (lease not revoked): {left}")
            facts.append("lease revoked")
        return "; ".join(facts)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def log_segments(path: str) -> list[str]:
    """The files of a node's log: its sealed segments (<path>.<20 digits>) in order, then the live one at the path."""
    d, base = os.path.split(path)
    sealed = sorted(f for f in os.listdir(d) if re.fullmatch(re.escape(base) + r"\.[0-9]{20}", f))
    return [os.path.join(d, f) for f in sealed] + ([path] if os.path.exists(path) else [])


def has_audit_verify(binary: str) -> bool:
    return subprocess.run([binary, "audit", "verify", "--help"], capture_output=True, timeout=30).returncode == 0


def check_trail(binary: str, path: str, needles: list[str], tail) -> str:
    """The decision trail the node wrote on the chart's log volume (read after it stopped): JSON lines, holding the
    given strings (decision ids), and a valid chain by `aisle audit verify` with its .head beside it."""
    files = log_segments(path)
    check(files, f"no decision trail at {path}, nor sealed segments beside it" + tail())
    records = 0
    for f in files:
        for i, line in enumerate(open(f), 1):
            if line.strip():
                try:
                    json.loads(line)
                except ValueError:
                    raise AssertionError(f"{f}:{i} is not a JSON line: {line[:200]!r}") from None
                records += 1
    text = "".join(open(f).read() for f in files)
    missing = [n for n in needles if n not in text]
    check(not missing, f"the decision trail ({records} records) lacks the decisions {missing}" + tail())
    fact = f"decision trail: {records} JSON records in {len(files)} segment(s), with the decision(s) made"
    if not has_audit_verify(binary):
        return fact + " (`aisle audit verify` is not in this binary yet: the chain was not checked)"
    check(os.path.exists(path + ".head"), f"no {os.path.basename(path)}.head beside the trail" + tail())
    p = subprocess.run([binary, "audit", "verify", path], capture_output=True, text=True, timeout=60)
    check(p.returncode == 0, f"aisle audit verify {path} failed: {p.stdout}{p.stderr}" + tail())
    return fact + "; `aisle audit verify` passes (.head present)"


def check_log_metrics(http: int, tail) -> str:
    """The node reports its decision trail healthy (aisle_log_healthy{log="decisions"} 1) after a Decide."""
    _, metrics = http_get(f"http://127.0.0.1:{http}/metrics")
    if "aisle_log_healthy" not in metrics:
        return "(aisle_log_healthy is not exported by this binary yet)"
    m = re.search(r'^aisle_log_healthy\{[^}]*log="decisions"[^}]*\} (\S+)$', metrics, re.M)
    check(m is not None and float(m.group(1)) == 1.0,
          f"the decision trail is not healthy on the chart's volume: {m.group(0) if m else 'no series'}" + tail())
    return 'aisle_log_healthy{log="decisions"} 1'


def wait_ready(node: subprocess.Popen, http: int, tail, seconds: float = 90) -> None:
    status, body = 0, ""
    deadline = time.time() + seconds
    while time.time() < deadline:
        check(node.poll() is None, f"the node exited with {node.returncode}" + tail())
        try:
            status, body = http_get(f"http://127.0.0.1:{http}/readyz")
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"/readyz is {status} {body.strip()!r} after {seconds:.0f} s" + tail())


def terminate(node: subprocess.Popen, docs: list[dict], c: dict, tail) -> str:
    """Termination as the kubelet does it: (preStop sleep), SIGTERM, exit 0 within the grace period."""
    grace = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    node.send_signal(signal.SIGTERM)
    limit = node_statefulset(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    try:
        code = node.wait(timeout=limit - grace)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the node did not exit within {limit - grace} s of SIGTERM" + tail()) from None
    check(code == 0, f"the node exited with {code} on SIGTERM" + tail())
    return "SIGTERM: exit 0"


# ---------------------------------------------------------------------------------------------------------------
# The real binary with TLS and tokens, as the chart configures it, against a local etcd with TLS and auth.

class PKI:
    """A throwaway CA, and certificates made with openssl the way cert-manager's CA issuer makes them from the chart's
    Certificates: ECDSA P-256 keys in PKCS#8, the common name, DNS names, IP addresses and usages asked for, and the
    CA as ca.crt beside tls.crt and tls.key."""

    def __init__(self, d: str) -> None:
        self.dir, self.n = d, 0
        os.makedirs(d, exist_ok=True)
        self.openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                     "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=aisle k8s-check CA",
                     "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self.ca = self.read("ca.crt")
        self.ca_file = os.path.join(d, "ca.crt")

    def openssl(self, *args: str) -> None:
        p = subprocess.run(["openssl", *args], cwd=self.dir, capture_output=True, text=True)
        check(p.returncode == 0, f"openssl {' '.join(args[:2])}: {p.stderr[-1500:]}")

    def read(self, name: str) -> str:
        return open(os.path.join(self.dir, name)).read()

    def issue(self, common_name: str | None = None, dns: list[str] = (), ips: list[str] = (),
              usages: list[str] = ("digital signature", "server auth"), uris: list[str] = ()) -> dict[str, str]:
        self.n += 1
        base = f"cert{self.n}"
        subject = f"/CN={common_name}" if common_name else "/O=aisle k8s-check"
        self.openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                     "-keyout", f"{base}.key", "-out", f"{base}.csr", "-subj", subject)
        ku = [{"digital signature": "digitalSignature", "key encipherment": "keyEncipherment"}[u]
              for u in usages if u in ("digital signature", "key encipherment")]
        eku = [{"server auth": "serverAuth", "client auth": "clientAuth"}[u]
               for u in usages if u in ("server auth", "client auth")]
        ext = ["basicConstraints=critical,CA:FALSE"]
        if ku:
            ext.append("keyUsage=critical," + ",".join(ku))
        if eku:
            ext.append("extendedKeyUsage=" + ",".join(eku))
        sans = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips] + [f"URI:{u}" for u in uris]
        if sans:
            ext.append("subjectAltName=" + ",".join(sans))
        with open(os.path.join(self.dir, f"{base}.ext"), "w") as f:
            f.write("\n".join(ext) + "\n")
        self.openssl("x509", "-req", "-in", f"{base}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                     "-days", "2", "-out", f"{base}.crt", "-extfile", f"{base}.ext")
        return {"tls.crt": self.read(f"{base}.crt"), "tls.key": self.read(f"{base}.key"), "ca.crt": self.ca}

    def from_certificate(self, spec: dict) -> dict[str, str]:
        return self.issue(spec.get("commonName"), spec.get("dnsNames", []), spec.get("ipAddresses", []),
                          spec.get("usages", ["digital signature", "key encipherment"]), spec.get("uris", []))

    def files(self, name: str, pem: dict[str, str]) -> tuple[str, str]:
        """Writes a certificate and key to files for a client (CLI, etcdctl): (cert path, key path)."""
        cert, key = os.path.join(self.dir, f"{name}.pem"), os.path.join(self.dir, f"{name}-key.pem")
        with open(cert, "w") as f:
            f.write(pem["tls.crt"])
        with open(key, "w") as f:
            f.write(pem["tls.key"])
        return cert, key


def sha256_hex(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()  # = `printf %s TOKEN | sha256sum`


def token_file(tokens: dict[str, tuple[str, list[str]]], certificates: list[dict]) -> str:
    """The token file of the security contract: [[token]] name, sha256, scopes; [[certificate]] for client certs."""
    out = []
    for name, (token, scopes) in tokens.items():
        out += ["[[token]]", f"name = {json.dumps(name)}", f"sha256 = {json.dumps(sha256_hex(token))}",
                f"scopes = {json.dumps(scopes)}", ""]
    for c in certificates:
        out += ["[[certificate]]"] + [f"{k} = {json.dumps(v)}" for k, v in c.items()] + [""]
    return "\n".join(out)


def peer_handshake(port: int, ca_file: str, server_name: str, cert: tuple[str, str] | None) -> bytes:
    """TLS to a port as a peer would (server name = the advertised host, ALPN h2), then the HTTP/2 preface: the
    server's first frame comes back (SETTINGS) if it accepted us; an alert or a closed connection if not."""
    import ssl

    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.set_alpn_protocols(["h2"])
    if cert:
        ctx.load_cert_chain(*cert)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname=server_name) as ss:
            ss.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            return ss.recv(9)


def served_certificate(port: int, ca_file: str, server_name: str) -> bytes:
    """The leaf certificate a TLS port serves (DER), verified against the CA and the server name."""
    import ssl

    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname=server_name) as ss:
            return ss.getpeercert(binary_form=True)


def binary_supports_tls(binary: str) -> bool:
    p = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, timeout=30)
    return "--tls-cert" in p.stdout


def check_binary_tls() -> str:
    """Runs the real `aisle` exactly as the chart configures it with TLS and tokens (ci/secure-values.yaml), against
    a local etcd started with the chart's etcd TLS settings and bootstrapped by the chart's auth script."""
    import ssl

    binary = aisle_binary()
    if not binary_supports_tls(binary):
        raise Skip(f"{binary} does not know `serve --tls-cert` yet (built before the TLS and token support of the "
                   "node): the chart's TLS run waits for a binary that does (AISLE_BIN=... or a fresh cargo build)")
    need_tools("etcd", "etcdctl", "openssl")
    helptext = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, timeout=30).stdout
    ports = {k: free_port() for k in ("grpc", "peer", "admin", "http")}
    etcd_client, etcd_peer, etcd_metrics = free_port(), free_port(), free_port()
    over = copy.deepcopy(value_sets()["secure"])
    over.setdefault("ports", {}).update(ports)
    over.setdefault("etcd", {}).setdefault("bundled", {}).update({"clientPort": etcd_client, "peerPort": etcd_peer})
    namespace, pod_name = "k8s-check", f"{RELEASE}-0"
    _, docs = render(over, namespace=namespace)
    sts = node_statefulset(docs)
    c = container(sts, "aisle")
    chart_env = {e["name"] for e in c["env"]}
    # Every variable the chart gives the node is one `aisle serve` reads (AISLE_LOG is the log filter, read apart).
    unknown = sorted(k for k in chart_env if k.startswith("AISLE_") and k != "AISLE_LOG"
                     and f"[env: {k}=" not in helptext)
    check(not unknown, f"the chart sets {unknown}, which `aisle serve --help` does not list")
    facts = [f"every AISLE_* variable of the chart ({len(chart_env) - 2}) is one `aisle serve` reads"]
    procs = Processes()
    tmp = tempfile.mkdtemp(prefix="aisle-k8s-check-tls-")
    try:
        # Certificates from the chart's Certificates, a token file, the Secrets the pods mount.
        pki = PKI(os.path.join(tmp, "pki"))
        certs = {d["spec"]["secretName"]: d["spec"] for d in by_kind(docs, "Certificate")}
        secrets = {name: pki.from_certificate(spec) for name, spec in certs.items()}
        tok = {n: f"k8s-check-{n}-{os.urandom(12).hex()}" for n in ("storefront", "ops", "erasure", "rotated")}
        tokens = {"storefront": (tok["storefront"], ["decide", "track"]), "ops": (tok["ops"], ["admin:read"]),
                  "erasure": (tok["erasure"], ["admin:write"])}
        pos = {"name": "pos-fleet", "common_name": "pos.store-1.example", "scopes": ["decide", "track", "subscribe"],
               "stores": ["store-1"]}
        auth_key = over["auth"].get("key", "tokens.toml")
        secrets[over["auth"]["secretName"]] = {auth_key: token_file(tokens, [pos])}
        # The pseudonym key file as `openssl rand -hex 32` makes it, one key.
        pseudonym_secret = over["privacy"]["pseudonymKey"]["secretName"]
        pseudonym_key = over["privacy"]["pseudonymKey"].get("key", "pseudonym.key")
        first_key, second_key = os.urandom(32).hex(), os.urandom(32).hex()
        secrets[pseudonym_secret] = {pseudonym_key: first_key + "\n"}
        facts.append(f"{len(certs)} certificates issued from the chart's Certificates")

        # etcd as the chart runs it: its TLS settings, on loopback ports.
        e = [d for d in by_kind(docs, "StatefulSet") if d is not sts][0]
        epod = e["spec"]["template"]["spec"]
        epod_name = f"{e['metadata']['name']}-0"
        claims = tuple(t["metadata"]["name"] for t in e["spec"].get("volumeClaimTemplates", []))
        _, ecmd, eenv, _ = container_process(docs, epod, container(e, "etcd"), epod_name, namespace,
                                             os.path.join(tmp, "etcd-pod"), secrets, {}, claims)
        for k in ("ETCD_LISTEN_CLIENT_URLS", "ETCD_LISTEN_PEER_URLS", "ETCD_ADVERTISE_CLIENT_URLS",
                  "ETCD_INITIAL_ADVERTISE_PEER_URLS"):
            check(eenv[k].startswith("https://"), f"the chart's etcd has {k}={eenv[k]}")
        check(eenv["ETCD_LISTEN_CLIENT_URLS"] == f"https://0.0.0.0:{etcd_client}", "etcd's client URL")
        eenv.update({
            "ETCD_DATA_DIR": os.path.join(tmp, "etcd-data"),
            "ETCD_LISTEN_CLIENT_URLS": f"https://127.0.0.1:{etcd_client}",
            "ETCD_ADVERTISE_CLIENT_URLS": f"https://127.0.0.1:{etcd_client}",
            "ETCD_LISTEN_PEER_URLS": f"https://127.0.0.1:{etcd_peer}",
            "ETCD_INITIAL_ADVERTISE_PEER_URLS": f"https://127.0.0.1:{etcd_peer}",
            "ETCD_INITIAL_CLUSTER": f"{epod_name}=https://127.0.0.1:{etcd_peer}",
            "ETCD_LISTEN_METRICS_URLS": f"http://127.0.0.1:{etcd_metrics}",
        })
        etcd_log = os.path.join(tmp, "etcd.log")
        check(os.path.basename(ecmd[0]) == "etcd", f"the etcd container runs {ecmd}")
        procs.start([shutil.which("etcd"), *ecmd[1:]], env=eenv, stdout=open(etcd_log, "w"), stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{etcd_metrics}/health", "etcd (TLS)", etcd_log)
        facts.append("etcd up with the chart's TLS settings (client and peer certificates required)")

        # The chart's auth bootstrap, run twice (idempotent), as its container runs it (RECHECK_SECONDS 0: once).
        _, acmd, aenv, _ = container_process(docs, epod, container(e, "auth"), epod_name, namespace,
                                             os.path.join(tmp, "etcd-pod"), secrets, {})
        check(aenv["ETCDCTL_ENDPOINTS"] == f"https://127.0.0.1:{etcd_client}", "the bootstrap's endpoint")
        aenv["RECHECK_SECONDS"] = "0"
        # A PATH as bare as the pod's: its shell and sleep (busybox, installed into /tools by the init container)
        # and etcdctl (etcd's image) — this machine's here; the script may use nothing else.
        tools = os.path.join(tmp, "tools")
        os.makedirs(tools)
        for tool in ("sh", "sleep", "etcdctl"):
            os.symlink(shutil.which(tool), os.path.join(tools, tool))
        aenv["PATH"] = tools
        for run in (1, 2):
            p = subprocess.run([os.path.join(tools, "sh"), acmd[-1]], env=aenv, capture_output=True, text=True,
                               timeout=120)
            check(p.returncode == 0, f"the etcd auth bootstrap (run {run}) failed: {p.stdout}{p.stderr}\n"
                                     + open(etcd_log).read()[-1500:])
        root_env = {k: v for k, v in aenv.items() if k.startswith("ETCDCTL_")}
        root_env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")

        def etcdctl(*args: str, cert: tuple[str, str] | None = None, as_root: bool = False):
            env = dict(root_env)
            if not as_root:
                env.pop("ETCDCTL_CERT")
                env.pop("ETCDCTL_KEY")
                if cert:
                    env["ETCDCTL_CERT"], env["ETCDCTL_KEY"] = cert
            return subprocess.run(["etcdctl", "--command-timeout=5s", *args], env=env, capture_output=True,
                                  text=True, timeout=30)

        p = etcdctl("user", "list", as_root=True)
        check(p.returncode == 0 and {"root", "aisle"} <= set(p.stdout.split()), f"etcd users: {p.stdout}{p.stderr}")
        p = etcdctl("role", "get", "aisle", as_root=True)
        check(p.returncode == 0 and p.stdout.count("prefix /aisle/") == 2,
              f"role aisle must read and write the prefix /aisle/: {p.stdout}{p.stderr}")
        node_etcd = pki.files("node-etcd", secrets[one(docs, "Certificate", f"{e['metadata']['name']}-client")[
            "spec"]["secretName"]])
        p = etcdctl("put", "/aisle/k8s-check-probe", "x", cert=node_etcd)
        check(p.returncode == 0, f"the nodes' certificate (CN aisle) cannot write /aisle/: {p.stderr}")
        etcdctl("del", "/aisle/k8s-check-probe", cert=node_etcd)
        p = etcdctl("put", "/outside-aisle", "x", cert=node_etcd)
        check(p.returncode != 0 and "permission denied" in p.stderr,
              f"auth is not enabled: CN aisle may write outside /aisle/: {p.stdout}{p.stderr}")
        intruder = pki.files("intruder", pki.issue("intruder", usages=["digital signature", "client auth"]))
        p = etcdctl("get", "--prefix", "/aisle/", cert=intruder)
        check(p.returncode != 0, "a certificate of an unknown user reads /aisle/")
        p = etcdctl("get", "--prefix", "/aisle/")
        check(p.returncode != 0, "etcd answers a client without a certificate (--client-cert-auth)")
        check(http_get(f"http://127.0.0.1:{etcd_metrics}/health")[0] == 200, "etcd's /health (the probes) with auth on")
        facts.append("the chart's etcd auth bootstrap ran twice (idempotent): users root and aisle, role aisle "
                     "readwrite on /aisle/ only, auth enabled; unknown and missing client certificates refused")

        # The node, as the chart's StatefulSet runs it.
        root = os.path.join(tmp, "pod")
        args, env, c, secret_dirs = pod_process(docs, pod_name, namespace, root, f"https://127.0.0.1:{etcd_client}",
                                                secrets)
        check("AISLE_INSECURE" not in env, "the secure rendering sets AISLE_INSECURE")
        shown = {k: v for k, v in env.items() if k.startswith("AISLE_")}
        # Without the pseudonym key file the chart gives it, the node refuses to start, and says what it lacks.
        no_key = {k: v for k, v in env.items() if k != "AISLE_PSEUDONYM_KEY"}
        check("AISLE_PSEUDONYM_KEY" in env, "the secure rendering gives the node no pseudonym key file")
        refusal_log = os.path.join(tmp, "aisle-no-key.log")
        refused_node = procs.start([binary, *args], env=no_key, stdout=open(refusal_log, "w"), stderr=subprocess.STDOUT)
        try:
            code = refused_node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            refused_node.kill()
            raise AssertionError("the node started without a pseudonym key file (secured, etcd mode): "
                                 + open(refusal_log).read()[-1500:]) from None
        said = open(refusal_log).read()
        check(code != 0 and "a pseudonym key file (pseudonym_key / --pseudonym-key)" in said,
              f"without AISLE_PSEUDONYM_KEY the node exited {code} without naming the pseudonym key file: {said[-1500:]}")
        facts.append("without the chart's pseudonym key file the node refuses to start, naming it")
        log_path = os.path.join(tmp, "aisle.log")
        node = procs.start([binary, *args], env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)

        def tail() -> str:
            return f"\nnode ran as: aisle {' '.join(args)} with {shown}\nlog:\n" + open(log_path).read()[-3000:]

        started = time.time()
        wait_ready(node, ports["http"], tail)
        facts.append(f"ready in {time.time() - started:.1f} s over etcd with TLS as user aisle")
        ca = pki.ca_file
        client_addr = f"https://localhost:{ports['grpc']}"
        admin_addr = f"https://localhost:{ports['admin']}"

        def cli(*args: str, token: str | None = None, ca_cert: str | None = ca):
            cmd = [binary, *args]
            if ca_cert:
                cmd += ["--ca-cert", ca_cert]
            if token:
                cmd += ["--token", token]
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                                  env={"PATH": env["PATH"], "HOME": tmp})

        def decide(token: str | None, addr: str = client_addr, *extra: str):
            return cli("decide", "--addr", addr, "--shopper", "k8s-check-shopper", "--json", *extra, token=token)

        p = decide(tok["storefront"])
        check(p.returncode == 0, f"aisle decide over TLS with a decide token failed: {p.stderr}" + tail())
        decision_ids = [json.loads(p.stdout)["decision_id"]]
        served_by = json.loads(p.stdout).get("served_by")
        check(served_by == pod_name, f"served_by is {served_by!r}, not the pod name {pod_name!r}")
        check(decide(None).returncode != 0, "the client port answers Decide without a token")
        check(decide(tok["ops"]).returncode != 0, "the client port answers Decide with a token lacking decide")
        check(decide(tok["storefront"], f"http://localhost:{ports['grpc']}").returncode != 0,
              "the client port answers plaintext gRPC")
        facts.append(f"Decide over TLS with a token: served_by {served_by}; refused without a token, with a token "
                     "lacking the scope, and in plaintext")
        p = cli("bundles", "--addr", admin_addr, "--json", token=tok["ops"])
        check(p.returncode == 0, f"aisle bundles on the admin port with an admin:read token failed: {p.stderr}" + tail())
        check(cli("bundles", "--addr", admin_addr, token=tok["storefront"]).returncode != 0,
              "the admin port answers bundles with a token lacking admin:read")
        check(cli("bundles", "--addr", client_addr, token=tok["ops"]).returncode != 0,
              "the client port serves AdminService although the chart gives the node an admin port")
        facts.append("bundles on the admin port with an admin:read token; refused with a decide token, and not "
                     "served on the client port")
        pos_cert = pki.files("pos", pki.issue(pos["common_name"], usages=["digital signature", "client auth"]))
        p = decide(None, client_addr, "--client-cert", pos_cert[0], "--client-key", pos_cert[1])
        check(p.returncode == 0, f"Decide with a client certificate ([[certificate]] {pos['common_name']}) failed: "
                                 f"{p.stderr}" + tail())
        facts.append("Decide with a client certificate mapped by [[certificate]] (tls.client.clientCA)")

        def erase() -> str:
            """Forgets a shopper (no one the check decides for): the pseudonym the node names them by."""
            p = cli("forget", "--addr", admin_addr, "--shopper", "k8s-check-erased", "--json", token=tok["erasure"])
            check(p.returncode == 0, f"aisle forget with an admin:write token failed: {p.stderr}" + tail())
            ref = json.loads(p.stdout).get("shopper_ref", "")
            check(re.fullmatch(r"[0-9a-f]{32}", ref) is not None, f"forget names the shopper {ref!r}, not a pseudonym")
            return ref

        first_ref = erase()
        facts.append(f"erasure by pseudonym under the mounted key ({first_ref[:8]}…)")
        # The peer port: mutual TLS, the server certificate valid for the advertised name.
        advertise = env["AISLE_ADVERTISE_ADDR"]
        host, _, aport = advertise.rpartition(":")
        check(int(aport) == ports["peer"] and host == f"{pod_name}.{RELEASE}-peers.{namespace}.svc.cluster.local",
              f"advertise address {advertise}")
        peer_pem = secrets[secret_dirs_name(secret_dirs, root, "tls-peer")]
        peer_cert = pki.files("peer", peer_pem)
        frame = peer_handshake(ports["peer"], ca, host, peer_cert)
        check(len(frame) == 9 and frame[3] == 0x04, f"the peer port did not answer HTTP/2 over mutual TLS: {frame!r}")
        try:
            refused = peer_handshake(ports["peer"], ca, host, None) == b""
        except (ssl.SSLError, ConnectionError, OSError):
            refused = True
        check(refused, "the peer port accepts a client without a certificate")
        facts.append(f"peer port: mutual TLS verified as {host}; a client without a certificate is refused")
        keys = etcdctl("get", "--prefix", "/aisle/", as_root=True).stdout
        check(pod_name in keys and advertise in keys, f"no membership key advertising {advertise} in etcd: {keys}")
        facts.append(f"member key in etcd advertises {advertise}")

        # Rotation in place, as cert-manager or `kubectl apply` of a Secret does it (the kubelet swaps ..data).
        reload = int(over.get("config", {}).get("credential_reload_secs", 5))
        tokens2 = {"ops": tokens["ops"], "erasure": tokens["erasure"], "rotated": (tok["rotated"], ["decide"])}
        for d, _ in secret_dirs[over["auth"]["secretName"]]:
            write_secret_dir(d, {auth_key: token_file(tokens2, [pos])})
        # The pseudonym key rotated as values.yaml says: a new key first, the old one kept below it.
        for d, _ in secret_dirs[pseudonym_secret]:
            write_secret_dir(d, {pseudonym_key: f"# rotated by k8s-check\n{second_key}\n{first_key}\n"})
        client_secret = secret_dirs_name(secret_dirs, root, "tls-client")
        new_client = pki.from_certificate(certs[client_secret])
        for d, items in secret_dirs[client_secret]:
            write_secret_dir(d, new_client if not items else {i["path"]: new_client[i["key"]] for i in items})
        want = ssl.PEM_cert_to_DER_cert(new_client["tls.crt"])
        deadline = time.time() + 3 * reload + 10
        while True:
            p = decide(tok["rotated"])
            rotated_ok = p.returncode == 0
            if rotated_ok:
                decision_ids.append(json.loads(p.stdout)["decision_id"])
            revoked = decide(tok["storefront"]).returncode != 0
            new_served = served_certificate(ports["grpc"], ca, "localhost") == want
            new_key = erase() != first_ref
            if rotated_ok and revoked and new_served and new_key:
                break
            check(time.time() < deadline,
                  f"{3 * reload + 10} s after the Secrets were updated in place: new token accepted {rotated_ok}, "
                  f"removed token refused {revoked}, new certificate served {new_served}, new pseudonym key in use "
                  f"{new_key}" + tail())
            time.sleep(1)
        facts.append("Secrets updated in place: the new token works, the removed one is refused, the new certificate "
                     "is served, shoppers are named under the new pseudonym key, without a restart")
        facts.append(check_log_metrics(ports["http"], tail))
        facts.append(terminate(node, docs, c, tail))
        facts.append(check_trail(binary, env["AISLE_DECISION_LOG"], decision_ids, tail))
        left = etcdctl("get", "--prefix", "--keys-only", "/aisle/aisle/members/", as_root=True).stdout
        check(pod_name not in left, f"the node's membership key outlived it (lease not revoked): {left}")
        facts.append("lease revoked")
        return "; ".join(facts)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def secret_dirs_name(secret_dirs: dict, root: str, volume: str) -> str:
    """The Secret behind the node's volume `volume` (its directory is root/volume)."""
    for name, dirs in secret_dirs.items():
        if any(d == os.path.join(root, volume) for d, _ in dirs):
            return name
    raise AssertionError(f"no Secret volume {volume}")


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
    r.run("chart refuses to render without the pseudonym key Secret (unless insecure)", check_pseudonym_key_required)
    r.run("k8s/ is the chart's default rendering", check_k8s_generated)
    r.run("the defaults are secure (as k8s/ deploys them)", check_secure_defaults)
    r.run("kustomize base (k8s/)", check_kustomize, "", BASE_VALUES)
    r.run("kustomize dev overlay (k8s/overlays/dev)", check_kustomize, "overlays/dev", "dev")
    r.run("Dockerfile essentials", check_dockerfile)
    r.run("helm lint and helm template", check_helm)
    if quick:
        r.skipped += 3
        print("skip: the binary tests (--no-binary)")
    else:
        r.run("aisle runs as the chart's StatefulSet runs it (etcd mode, defaults with insecure: true) and becomes "
              "ready", check_binary_ready, "insecure", True)
        r.run("aisle runs as the chart runs it with every config key set (static mode, insecure) and becomes ready",
              check_binary_ready, "config", False)
        r.run("aisle runs as the chart runs it with TLS and tokens (ci/secure-values.yaml) against etcd with TLS "
              "and the chart's auth bootstrap", check_binary_tls)
    print(f"k8s-check: {r.passed} passed, {r.failed} failed, {r.skipped} skipped")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
