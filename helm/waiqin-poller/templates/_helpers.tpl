{{/* Chart name, overridable. */}}
{{- define "waiqin-poller.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, suffixed with the chart name unless it has it. */}}
{{- define "waiqin-poller.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "waiqin-poller.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "waiqin-poller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "waiqin-poller.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "waiqin-poller.labels" -}}
helm.sh/chart: {{ include "waiqin-poller.chart" . }}
{{ include "waiqin-poller.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: poller
{{- end }}

{{- define "waiqin-poller.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "waiqin-poller.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the pod reads: the user's existingSecret, or the one this chart makes. */}}
{{- define "waiqin-poller.secretName" -}}
{{- default (include "waiqin-poller.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* repository@digest when a digest is given (immutable), else repository:tag. */}}
{{- define "waiqin-poller.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* True (non-empty) when the Kafka client authenticates with SASL. */}}
{{- define "waiqin-poller.kafkaSasl" -}}
{{- if hasPrefix "SASL_" (upper .Values.kafka.securityProtocol) }}true{{ end }}
{{- end }}

{{/* True when the pod can have a KAFKA_SSL_PASSWORD: given here, or possibly in existingSecret. */}}
{{- define "waiqin-poller.kafkaSslPassword" -}}
{{- if or .Values.kafka.ssl.keyPassword (and .Values.existingSecret .Values.kafka.ssl.secretName) }}true{{ end }}
{{- end }}

{{/*
Refuse value combinations that would start a broken or unsafe release, with one clear line.
*/}}
{{- define "waiqin-poller.validate" -}}
{{- $pg := .Values.store.postgresql.enabled }}
{{- if not .Values.image.repository }}
{{- fail "image.repository is required: no public image is published; build the Dockerfile, push it to your registry and name it here (docs/operations.md, \"Deploy with Helm\")" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not $pg) }}
{{- fail "replicaCount > 1 needs store.postgresql.enabled=true: the SQLite store is a single file on a ReadWriteOnce volume and allows one poller only" }}
{{- end }}
{{- if ge (float64 .Values.config.shutdownGraceSeconds) (float64 .Values.terminationGracePeriodSeconds) }}
{{- fail (printf "config.shutdownGraceSeconds (%v) must be below terminationGracePeriodSeconds (%v), or Kubernetes kills the poller mid-cycle" .Values.config.shutdownGraceSeconds .Values.terminationGracePeriodSeconds) }}
{{- end }}
{{- if not .Values.waiqin.openid }}
{{- fail "waiqin.openid is required (admin console 系统管理 → 集成管理 → API管理 → API授权)" }}
{{- end }}
{{- if not .Values.existingSecret }}
{{- if not .Values.waiqin.appkey }}
{{- fail "waiqin.appkey is required unless existingSecret names a Secret holding it" }}
{{- end }}
{{- if and $pg (not .Values.store.postgresql.url) }}
{{- fail "store.postgresql.url is required when store.postgresql.enabled=true (or put it in existingSecret)" }}
{{- end }}
{{- if and (include "waiqin-poller.kafkaSasl" .) (not .Values.kafka.sasl.password) }}
{{- fail (printf "kafka.sasl.password is required with kafka.securityProtocol=%s (or put it in existingSecret)" .Values.kafka.securityProtocol) }}
{{- end }}
{{- end }}
{{- if and (include "waiqin-poller.kafkaSasl" .) (not (and .Values.kafka.sasl.mechanism .Values.kafka.sasl.username)) }}
{{- fail (printf "kafka.sasl.mechanism and kafka.sasl.username are required with kafka.securityProtocol=%s" .Values.kafka.securityProtocol) }}
{{- end }}
{{- end }}
