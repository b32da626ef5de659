{{/*
Names, labels and shared snippets. Every template takes its names and labels from here so a
rename happens in one place.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "quiver.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The resource name prefix: fullnameOverride, or "<release>-<name>", or the release name alone when
it already contains the chart name. Kept to 52 characters so suffixes such as "-operator" fit
in a 63-character DNS label.
*/}}
{{- define "quiver.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "chart-version", the helm.sh/chart label. */}}
{{- define "quiver.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "quiver.labels" -}}
helm.sh/chart: {{ include "quiver.chart" . }}
{{ include "quiver.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: quiver
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select this release's pods (stable across upgrades: never add to them). */}}
{{- define "quiver.selectorLabels" -}}
app.kubernetes.io/name: {{ include "quiver.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels and selector labels of one component. Call with a dict:
  include "quiver.componentLabels" (dict "ctx" $ "component" "gateway")
*/}}
{{- define "quiver.componentLabels" -}}
{{ include "quiver.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "quiver.componentSelectorLabels" -}}
{{ include "quiver.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels as a `key=value,...` selector string, keys sorted. Call with a dict of labels. */}}
{{- define "quiver.selectorString" -}}
{{- $pairs := list }}
{{- range $key, $value := . }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* Component names. */}}
{{- define "quiver.operator.fullname" -}}
{{- printf "%s-operator" (include "quiver.fullname" .) }}
{{- end }}

{{- define "quiver.gateway.fullname" -}}
{{- printf "%s-gateway" (include "quiver.fullname" .) }}
{{- end }}

{{- define "quiver.gateway.adminServiceName" -}}
{{- printf "%s-gateway-admin" (include "quiver.fullname" .) }}
{{- end }}

{{- define "quiver.admission.configMapName" -}}
{{- printf "%s-admission" (include "quiver.fullname" .) }}
{{- end }}

{{/* "true" when tenants come from a Secret (the default), "" when inline in the ConfigMap. */}}
{{- define "quiver.admission.tenantsFromSecret" -}}
{{- if not .Values.admission.tenants.inConfigMap }}true{{ end }}
{{- end }}

{{/* "true" when the gateway will admit everyone: no config, or no tenants anywhere. */}}
{{- define "quiver.admission.open" -}}
{{- if or (not .Values.admission.enabled) (and (not .Values.admission.tenants.existingSecret) (not .Values.admission.tenants.list)) }}true{{ end }}
{{- end }}

{{/* Gateway replicas that share every rate limit (each enforces 1/N of it). */}}
{{- define "quiver.gateway.limitShares" -}}
{{- if .Values.gateway.autoscaling.enabled }}{{ .Values.gateway.autoscaling.minReplicas }}{{ else }}{{ max 1 (int .Values.gateway.replicas) }}{{ end }}
{{- end }}

{{- define "quiver.admission.tenantsSecretName" -}}
{{- default (printf "%s-tenants" (include "quiver.fullname" .)) .Values.admission.tenants.existingSecret }}
{{- end }}

{{- define "quiver.ticketKey.secretName" -}}
{{- default (printf "%s-ticket-key" (include "quiver.fullname" .)) .Values.ticketKey.existingSecret }}
{{- end }}

{{/* ServiceAccount names. */}}
{{- define "quiver.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "quiver.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "quiver.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "quiver.gateway.fullname" .) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: repository@digest, or repository:tag (tag defaults to appVersion). */}}
{{- define "quiver.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The operator runs leader election when asked or when it has more than one replica. */}}
{{- define "quiver.operator.leaderElection" -}}
{{- if or .Values.operator.leaderElection (gt (int .Values.operator.replicas) 1) }}true{{ else }}false{{ end }}
{{- end }}

{{/*
The pools the gateway serves, for QUIVER_POOLS (`;`-separated): with kubernetes discovery the
known pools' names; with static discovery NAME=ENDPOINTS for each, the sample pool's endpoints
from gateway.workerEndpoints when set, else each pool's headless Service.
*/}}
{{- define "quiver.gateway.pools" -}}
{{- $known := include "quiver.knownPools" . | fromJsonArray }}
{{- $pools := list }}
{{- if eq .Values.gateway.discovery "kubernetes" }}
{{- $pools = $known }}
{{- else }}
{{- $sample := ternary .Values.samplePool.name "default" .Values.samplePool.enabled }}
{{- if .Values.gateway.workerEndpoints }}
{{- $pools = append $pools (printf "%s=%s" $sample (join "," .Values.gateway.workerEndpoints)) }}
{{- end }}
{{- range $known }}
{{- if not (and $.Values.gateway.workerEndpoints (eq . $sample)) }}
{{- $pools = append $pools (printf "%s=grpc://%s.%s.svc.%s:%d" . . $.Release.Namespace $.Values.gateway.clusterDomain (int $.Values.gateway.workerPort)) }}
{{- end }}
{{- end }}
{{- end }}
{{- join ";" $pools }}
{{- end }}

{{/*
A probe with the gRPC port filled in: grpc probes take a number, not a port name, so a grpc
probe without a port gets the given one. Call with (dict "probe" .Values.x.probe "port" 50051).
*/}}
{{- define "quiver.probe" -}}
{{- $probe := deepCopy .probe }}
{{- if and (hasKey $probe "grpc") (not (get (default dict $probe.grpc) "port")) }}
{{- $_ := set $probe "grpc" (merge (dict "port" (int .port)) (default dict $probe.grpc)) }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/* Pod-level and container-level security contexts. */}}
{{- define "quiver.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "quiver.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/*
The pools admission groups may run on: the sample pool (when enabled) and admission.pools.
*/}}
{{- define "quiver.knownPools" -}}
{{- $pools := list }}
{{- if .Values.samplePool.enabled }}
{{- $pools = append $pools .Values.samplePool.name }}
{{- end }}
{{- range .Values.admission.pools }}
{{- $pools = append $pools . }}
{{- end }}
{{- toJson $pools }}
{{- end }}

{{/*
Checks of the admission config that the values schema cannot express: every resource group
(at any depth) that names a pool must name a known one. Fails the render with a clear message.
*/}}
{{- define "quiver.admission.checkGroups" -}}
{{- $known := .known }}
{{- range .groups }}
{{- if and (kindIs "map" .) (hasKey . "pool") }}
{{- if not (has .pool $known) }}
{{- fail (printf "admission.config.resource_groups: group %q runs on pool %q, which is not a known pool (known: %s); create that QueryPool and list it in admission.pools" (toString .name) (toString .pool) (join ", " $known)) }}
{{- end }}
{{- end }}
{{- if and (kindIs "map" .) .subgroups }}
{{- include "quiver.admission.checkGroups" (dict "groups" .subgroups "known" $known) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "quiver.admission.validate" -}}
{{- $known := include "quiver.knownPools" . | fromJsonArray }}
{{- if hasKey .Values.admission.config "tenants" }}
{{- fail "admission.config.tenants: put tenants under admission.tenants.list (kept in a Secret), not in the ConfigMap config" }}
{{- end }}
{{- if and .Values.admission.tenants.inConfigMap .Values.admission.tenants.existingSecret }}
{{- fail "admission.tenants: existingSecret and inConfigMap=true exclude each other: tenants come either from your Secret or from admission.tenants.list in the ConfigMap" }}
{{- end }}
{{- include "quiver.admission.checkGroups" (dict "groups" (default list .Values.admission.config.resource_groups) "known" $known) }}
{{- end }}
