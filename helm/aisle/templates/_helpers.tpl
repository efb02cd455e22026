{{/*
Helpers of the Aisle chart. Keep to the template subset scripts/k8s/chart.py renders (it checks the chart where no
helm binary exists): actions if/else/with/range/define/include, and the functions listed in that file.
*/}}

{{/* The chart name. */}}
{{- define "aisle.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The resource name prefix: the release name when it contains the chart name, else "<release>-<chart>". */}}
{{- define "aisle.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels on every resource. */}}
{{- define "aisle.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "aisle.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aisle
{{- end -}}

{{/* Selector labels of the nodes. */}}
{{- define "aisle.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aisle.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node
{{- end -}}

{{/* Selector labels of the bundled etcd. */}}
{{- define "aisle.etcd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aisle.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: etcd
{{- end -}}

{{/* Name of the bundled etcd (StatefulSet, headless Service, PDB). */}}
{{- define "aisle.etcd.fullname" -}}
{{- printf "%s-etcd" (include "aisle.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of the headless Service peers reach each other through (also the StatefulSet's serviceName). */}}
{{- define "aisle.peersName" -}}
{{- printf "%s-peers" (include "aisle.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The ServiceAccount of the nodes. */}}
{{- define "aisle.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "aisle.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image of the nodes. */}}
{{- define "aisle.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* "true" when the chart runs etcd: the bundled etcd is enabled and the nodes use etcd membership. */}}
{{- define "aisle.etcdBundled" -}}
{{- if and .Values.etcd.bundled.enabled (eq .Values.cluster.mode "etcd") -}}
true
{{- end -}}
{{- end -}}

{{/*
The Secrets the chart mounts, by name ("" when not configured): a name given in the values, else, with
certManager.enabled, the Secret the chart's Certificate writes.
*/}}
{{- define "aisle.clientTLSSecret" -}}
{{- if .Values.tls.client.secretName -}}
{{- .Values.tls.client.secretName -}}
{{- else if .Values.certManager.enabled -}}
{{- printf "%s-client-tls" (include "aisle.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "aisle.peerTLSSecret" -}}
{{- if .Values.tls.peer.secretName -}}
{{- .Values.tls.peer.secretName -}}
{{- else if .Values.certManager.enabled -}}
{{- printf "%s-peer-tls" (include "aisle.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
How many node ordinals the peer certificates cover: every pod the StatefulSet may run (up to the autoscaler's
maxReplicas when it is on). Pod <fullname>-<i> presents the Secret <peerTLSSecret>-<i>.
*/}}
{{- define "aisle.peerSlots" -}}
{{- if .Values.autoscaling.enabled -}}
{{- int .Values.autoscaling.maxReplicas -}}
{{- else -}}
{{- int .Values.replicaCount -}}
{{- end -}}
{{- end -}}

{{- define "aisle.etcdServerSecret" -}}
{{- if include "aisle.etcdBundled" . -}}
{{- if .Values.etcd.bundled.tls.serverSecretName -}}
{{- .Values.etcd.bundled.tls.serverSecretName -}}
{{- else if .Values.certManager.enabled -}}
{{- printf "%s-etcd-server-tls" (include "aisle.fullname" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "aisle.etcdRootSecret" -}}
{{- if include "aisle.etcdBundled" . -}}
{{- if .Values.etcd.bundled.tls.rootSecretName -}}
{{- .Values.etcd.bundled.tls.rootSecretName -}}
{{- else if .Values.certManager.enabled -}}
{{- printf "%s-etcd-root-tls" (include "aisle.fullname" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "aisle.etcdClientSecret" -}}
{{- if .Values.etcd.client.secretName -}}
{{- .Values.etcd.client.secretName -}}
{{- else if and .Values.certManager.enabled (include "aisle.etcdBundled" .) -}}
{{- printf "%s-etcd-client-tls" (include "aisle.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Name of the admin Service (AdminService: bundles, cluster, model, fault). */}}
{{- define "aisle.adminName" -}}
{{- printf "%s-admin" (include "aisle.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The etcd client URLs the nodes join through: every member of the bundled etcd by its stable DNS name (the namespace
comes from the pod's own, through $(POD_NAMESPACE)), https when the bundled etcd has its TLS Secret; else the
external endpoints.
*/}}
{{- define "aisle.etcdEndpoints" -}}
{{- if .Values.etcd.bundled.enabled -}}
{{- $etcd := include "aisle.etcd.fullname" . -}}
{{- $scheme := "http" -}}
{{- if include "aisle.etcdServerSecret" . }}{{ $scheme = "https" }}{{ end -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.etcd.bundled.replicas) -}}
{{- $urls = append $urls (printf "%s://%s-%d.%s.$(POD_NAMESPACE).svc.%s:%d" $scheme $etcd $i $etcd $.Values.clusterDomain (int $.Values.etcd.bundled.clientPort)) -}}
{{- end -}}
{{- join "," $urls -}}
{{- else -}}
{{- join "," .Values.etcd.externalEndpoints -}}
{{- end -}}
{{- end -}}

{{/* The configuration file: top-level keys first, then the tables ([session_limits], [assist], [consent_defaults]). */}}
{{- define "aisle.configToml" -}}
# aisle serve --config: generated by the chart from .Values.config
{{- range $key, $value := .Values.config }}
{{- if not (kindIs "map" $value) }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{- range $table, $entries := .Values.config }}
{{- if kindIs "map" $entries }}
[{{ $table }}]
{{- range $key, $value := $entries }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Refuses contradictory values (the schema checks each value alone). */}}
{{- define "aisle.validate" -}}
{{- $sources := 0 -}}
{{- if .Values.bundles.inline }}{{ $sources = add1 $sources }}{{ end -}}
{{- if .Values.bundles.existingConfigMap }}{{ $sources = add1 $sources }}{{ end -}}
{{- if .Values.bundles.existingClaim }}{{ $sources = add1 $sources }}{{ end -}}
{{- if .Values.bundles.fetch.files }}{{ $sources = add1 $sources }}{{ end -}}
{{- if gt $sources 1 -}}
{{- fail "bundles: set at most one of inline, existingConfigMap, existingClaim and fetch.files" -}}
{{- end -}}
{{- if eq .Values.cluster.mode "etcd" -}}
{{- if and (not .Values.etcd.bundled.enabled) (not .Values.etcd.externalEndpoints) -}}
{{- fail "cluster.mode etcd needs etcd.bundled.enabled or etcd.externalEndpoints" -}}
{{- end -}}
{{- else -}}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled -}}
{{- fail "cluster.mode static runs a single node: set replicaCount 1 and autoscaling.enabled false, or use cluster.mode etcd" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling: minReplicas must not exceed maxReplicas" -}}
{{- end -}}
{{- if and .Values.eventLog.enabled (not .Values.auditTrail.enabled) -}}
{{- fail "eventLog.enabled needs auditTrail.enabled: the event log is written on the audit trail's volume" -}}
{{- end -}}
{{- $p := .Values.ports -}}
{{- if or (eq (int $p.grpc) (int $p.peer)) (eq (int $p.grpc) (int $p.admin)) (eq (int $p.grpc) (int $p.http)) (eq (int $p.peer) (int $p.admin)) (eq (int $p.peer) (int $p.http)) (eq (int $p.admin) (int $p.http)) -}}
{{- fail "ports: grpc, peer, admin and http must be four different ports" -}}
{{- end -}}
{{- include "aisle.validateSecurity" . -}}
{{- end -}}

{{/*
Secure by default: without insecure, the chart renders only with TLS on the client, admin and peer ports, token
authentication, a shared pseudonym key, and TLS (with auth) to etcd.
*/}}
{{- define "aisle.validateSecurity" -}}
{{- $etcdMode := eq .Values.cluster.mode "etcd" -}}
{{- $bundled := and $etcdMode .Values.etcd.bundled.enabled -}}
{{- if .Values.insecure -}}
{{- if ne .Values.service.type "ClusterIP" -}}
{{- fail "insecure: true serves plaintext gRPC without authentication: service.type must stay ClusterIP (give the TLS and token Secrets to expose the client Service)" -}}
{{- end -}}
{{- else -}}
{{- if not (include "aisle.clientTLSSecret" .) -}}
{{- fail "TLS is required: set tls.client.secretName (a kubernetes.io/tls Secret with tls.crt and tls.key for the client and admin ports) or certManager.enabled — or insecure: true, for a throwaway cluster only" -}}
{{- end -}}
{{- if not .Values.auth.secretName -}}
{{- fail "token authentication is required: set auth.secretName (a Secret holding the token file under auth.key, default tokens.toml) — or insecure: true, for a throwaway cluster only" -}}
{{- end -}}
{{- if not .Values.privacy.pseudonymKey.secretName -}}
{{- fail (printf "a pseudonym key is required: set privacy.pseudonymKey.secretName, a Secret holding hex keys, one per line, under privacy.pseudonymKey.key (%s), the same for every node; create one with: kubectl create secret generic NAME --from-literal=%s=$(openssl rand -hex 32) — or insecure: true, for a throwaway cluster only" .Values.privacy.pseudonymKey.key .Values.privacy.pseudonymKey.key) -}}
{{- end -}}
{{- if $etcdMode -}}
{{- if not (include "aisle.peerTLSSecret" .) -}}
{{- fail "cluster.mode etcd needs mutual TLS between the nodes: set tls.peer.secretName (Secrets <secretName>-<i>, one per pod: tls.crt, tls.key naming the pod as spiffe://aisle/node/<fullname>-<i>, and ca.crt, the cluster CA) or certManager.enabled — or insecure: true" -}}
{{- end -}}
{{- if $bundled -}}
{{- if not (include "aisle.etcdServerSecret" .) -}}
{{- fail "the bundled etcd needs TLS: set etcd.bundled.tls.serverSecretName, etcd.bundled.tls.rootSecretName and etcd.client.secretName, or certManager.enabled — or insecure: true" -}}
{{- end -}}
{{- else -}}
{{- range .Values.etcd.externalEndpoints -}}
{{- if not (hasPrefix "https://" .) -}}
{{- fail (printf "etcd.externalEndpoints: %s is not https:// (etcd credentials and membership must not cross the network in plaintext) — or insecure: true" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not (include "aisle.etcdClientSecret" .) -}}
{{- fail "cluster.mode etcd needs the nodes' etcd credentials: set etcd.client.secretName (ca.crt, and tls.crt + tls.key of a client certificate) — or insecure: true" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $bundled -}}
{{- if include "aisle.etcdServerSecret" . -}}
{{- if not (include "aisle.etcdRootSecret" .) -}}
{{- fail "etcd.bundled.tls.rootSecretName is required with the bundled etcd's TLS: the auth bootstrap runs as etcd's root user (a client certificate with common name root)" -}}
{{- end -}}
{{- if not (include "aisle.etcdClientSecret" .) -}}
{{- fail "etcd.client.secretName is required with the bundled etcd's TLS: the nodes' etcd client certificate (common name aisle) and ca.crt" -}}
{{- end -}}
{{- if not .Values.etcd.client.certificate -}}
{{- fail "etcd.client.certificate must be true with the bundled etcd: it authenticates the nodes by their client certificate (common name aisle)" -}}
{{- end -}}
{{- else if include "aisle.etcdClientSecret" . -}}
{{- fail "etcd.client.secretName is set but the bundled etcd has no TLS (etcd.bundled.tls.serverSecretName): the nodes would speak TLS to a plaintext etcd" -}}
{{- end -}}
{{- if or .Values.etcd.client.user .Values.etcd.client.passwordSecret.name -}}
{{- fail "etcd.client.user and passwordSecret are for an external etcd: the bundled etcd authenticates the nodes by their client certificate's common name (aisle)" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.etcd.client.user (not .Values.etcd.client.passwordSecret.name) -}}
{{- fail "etcd.client.user needs etcd.client.passwordSecret.name" -}}
{{- end -}}
{{- if and .Values.etcd.client.passwordSecret.name (not .Values.etcd.client.user) -}}
{{- fail "etcd.client.passwordSecret needs etcd.client.user" -}}
{{- end -}}
{{- if and .Values.tls.client.clientCA.enabled (not (include "aisle.clientTLSSecret" .)) -}}
{{- fail "tls.client.clientCA needs TLS on the client port (tls.client.secretName or certManager.enabled)" -}}
{{- end -}}
{{- if and .Values.certManager.enabled (not .Values.certManager.issuerRef.name) -}}
{{- fail "certManager.enabled needs certManager.issuerRef.name (a CA Issuer or ClusterIssuer)" -}}
{{- end -}}
{{- end -}}
