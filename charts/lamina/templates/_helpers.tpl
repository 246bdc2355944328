{{/* Names. Components append "-controller" (11 characters) etc. to the full name, hence 50. */}}
{{- define "lamina.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 50 | trimSuffix "-" }}
{{- end }}

{{- define "lamina.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lamina.controller.name" -}}{{ include "lamina.fullname" . }}-controller{{- end }}
{{- define "lamina.gateway.name" -}}{{ include "lamina.fullname" . }}-gateway{{- end }}
{{- define "lamina.invoker.name" -}}{{ include "lamina.fullname" . }}-invoker{{- end }}
{{- define "lamina.migrate.name" -}}{{ include "lamina.fullname" . }}-migrate{{- end }}
{{- define "lamina.adminKey.secret" -}}{{ .Values.adminKey.existingSecret | default (printf "%s-admin-key" (include "lamina.fullname" .)) }}{{- end }}
{{- define "lamina.clusterToken.secret" -}}{{ .Values.clusterToken.existingSecret | default (printf "%s-cluster-token" (include "lamina.fullname" .)) }}{{- end }}
{{- define "lamina.clusterToken.env" -}}{{ include "lamina.secretEnv" (dict "name" "LAMINA_CLUSTER_TOKEN" "secret" (include "lamina.clusterToken.secret" .ctx) "key" .ctx.Values.clusterToken.existingSecretKey "extra" .extra) }}{{- end }}
{{- define "lamina.database.secret" -}}{{ .Values.database.existingSecret | default (printf "%s-database" (include "lamina.fullname" .)) }}{{- end }}
{{- define "lamina.queue.secret" -}}{{ .Values.queue.existingSecret | default (printf "%s-queue" (include "lamina.fullname" .)) }}{{- end }}

{{/* Labels: "lamina.labels" takes (dict "ctx" $ "component" "gateway"). */}}
{{- define "lamina.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lamina.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "lamina.labels" -}}
{{ include "lamina.selectorLabels" . }}
app.kubernetes.io/part-of: lamina
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lamina.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* True (non-empty) when the store is an external PostgreSQL, from values or an existing Secret. */}}
{{- define "lamina.database.external" -}}
{{- if or .Values.database.url .Values.database.existingSecret }}true{{ end }}
{{- end }}

{{/* True when the pre-install/pre-upgrade Job migrates (PostgreSQL only: SQLite lives on the
controller's ReadWriteOnce volume, which a hook cannot mount before it exists). */}}
{{- define "lamina.migrationJob" -}}
{{- if and (include "lamina.database.external" .) .Values.database.migrationJob.enabled }}true{{ end }}
{{- end }}

{{- define "lamina.queue.external" -}}
{{- if or .Values.queue.url .Values.queue.existingSecret }}true{{ end }}
{{- end }}

{{/* True when the controller's kubernetes orchestrator sizes the invoker Deployment. */}}
{{- define "lamina.orchestrator" -}}
{{- if .Values.invoker.autoscaling.enabled }}true{{ end }}
{{- end }}

{{/* A Kubernetes quantity of bytes ("2Gi", "1500M", "2147483648") in whole MiB. */}}
{{- define "lamina.mebibytes" -}}
{{- $q := toString . }}
{{- $pattern := "^([0-9]+)(Ki|Mi|Gi|Ti|k|M|G|T)?$" }}
{{- if not (regexMatch $pattern $q) }}
{{- fail (printf "memory quantity %q: use a whole number with Ki, Mi, Gi, Ti, k, M, G or T" $q) }}
{{- end }}
{{- $units := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 }}
{{- $number := regexReplaceAll $pattern $q "${1}" | int64 }}
{{- $unit := regexReplaceAll $pattern $q "${2}" }}
{{- div (mul $number (get $units $unit)) 1048576 }}
{{- end }}

{{/* LAMINA_MEMORY_CAPACITY_MB: the invoker container's memory limit minus what the invoker
keeps for itself, so the pod's limit bounds every worker it starts. */}}
{{- define "lamina.invoker.capacityMB" -}}
{{- $limit := include "lamina.mebibytes" .Values.invoker.resources.limits.memory | int64 }}
{{- $capacity := sub $limit (.Values.invoker.memoryReserveMB | int64) }}
{{- if lt $capacity 128 }}
{{- fail (printf "invoker.resources.limits.memory (%d MiB) minus invoker.memoryReserveMB (%d) leaves %d MB for workers: at least 128 (one function of the smallest size) is needed" $limit (.Values.invoker.memoryReserveMB | int64) $capacity) }}
{{- end }}
{{- $capacity }}
{{- end }}

{{/* An env value as a string: YAML numbers reach templates as float64, and a whole one must
not print as 6.291456e+06. */}}
{{- define "lamina.envValue" -}}
{{- if and (kindIs "float64" .) (eq (floor .) .) }}{{ int64 . }}{{ else }}{{ toString . }}{{ end }}
{{- end }}

{{/* env entries from (dict "chart" <the chart's settings> "extra" <the component's env value>):
the component's values win over the chart's, so any setting can be overridden. Sorted by name. */}}
{{- define "lamina.env" -}}
{{- $all := merge (deepCopy (.extra | default dict)) .chart }}
{{- range $name := keys $all | sortAlpha }}
- name: {{ $name }}
  value: {{ include "lamina.envValue" (get $all $name) | quote }}
{{- end }}
{{- end }}

{{/* A Secret-sourced env entry unless the component's env overrides it:
(dict "name" "LAMINA_X" "secret" "s" "key" "k" "extra" <env>). */}}
{{- define "lamina.secretEnv" -}}
{{- if not (hasKey (.extra | default dict) .name) }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end }}
{{- end }}

{{/* The pod-level security context of the restricted pods. */}}
{{- define "lamina.podSecurityContext" -}}
runAsNonRoot: true
{{- with .Values.podSecurityContext }}
{{ toYaml . }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The container security context of the restricted pods (Pod Security "restricted"). */}}
{{- define "lamina.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* HTTP probes on a named port: (dict "port" "metrics"). */}}
{{- define "lamina.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 5
  failureThreshold: {{ .startupFailures | default 60 }}
livenessProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: {{ .port }}}
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 2
{{- end }}

{{/* A digest of the values that end up in the chart's Secrets (not the generated admin key,
which changes with every render outside a cluster). */}}
{{- define "lamina.secretsChecksum" -}}
{{ pick .Values "database" "queue" "adminKey" "clusterToken" | toJson | sha256sum | trunc 16 | quote }}
{{- end }}
