{{/* Names: every object is named from the release, so two releases never collide. */}}
{{- define "kubenetmon-server.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubenetmon-server.fullname" -}}
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

{{- define "kubenetmon-server.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubenetmon-server.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubenetmon-server.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kubenetmon-server.labels" -}}
helm.sh/chart: {{ include "kubenetmon-server.chart" . }}
{{ include "kubenetmon-server.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/part-of: kubenetmon
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kubenetmon-server.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubenetmon-server.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubenetmon-server.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "kubenetmon-server.credentialsSecretName" -}}
{{- default (printf "%s-clickhouse" (include "kubenetmon-server.fullname" .)) .Values.inserter.existingSecret }}
{{- end }}

{{- define "kubenetmon-server.tokenSecretName" -}}
{{- default (printf "%s-agent-token" (include "kubenetmon-server.fullname" .)) .Values.agentChannel.token.existingSecret }}
{{- end }}

{{/*
Go duration (30s, 1m30s, 500ms, 2h) or a bare number of seconds -> seconds, as a float string.
*/}}
{{- define "kubenetmon-server.seconds" -}}
{{- $v := toString . | trim }}
{{- if regexMatch "^[0-9]+(\\.[0-9]+)?$" $v }}
{{- $v }}
{{- else if regexMatch "^([0-9]+(\\.[0-9]+)?(h|ms|m|s))+$" $v }}
{{- $total := 0.0 }}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?(h|ms|m|s)" $v -1 }}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" . | float64 }}
{{- $unit := trimPrefix (regexFind "^[0-9]+(\\.[0-9]+)?" .) . }}
{{- $total = addf $total (mulf $num (get (dict "h" 3600.0 "m" 60.0 "s" 1.0 "ms" 0.001) $unit)) }}
{{- end }}
{{- $total }}
{{- else }}
{{- fail (printf "%q is not a duration; use a Go duration such as 30s, 1m or 500ms" $v) }}
{{- end }}
{{- end }}

{{/*
ClickHouse over HTTP(S). inserter.endpoint is the original chart's host:port (TLS unless
disableTLS) or a full http(s):// URL. clickhouse-connect speaks HTTP, so ClickHouse's native
ports are mapped to the HTTP ports every server (and ClickHouse Cloud) also serves:
9440 (native TLS) -> 8443, 9000 (native) -> 8123. Returns YAML: scheme, host, port, url,
mappedFrom (the native port, or "").
*/}}
{{- define "kubenetmon-server.clickhouse" -}}
{{- $ep := trim .Values.inserter.endpoint }}
{{- $scheme := ternary "http" "https" .Values.inserter.disableTLS }}
{{- $rest := $ep }}
{{- if regexMatch "^https?://" $ep }}
{{- $scheme = regexFind "^https?" $ep }}
{{- $rest = regexReplaceAll "^https?://" $ep "" | trimSuffix "/" }}
{{- end }}
{{- if not (regexMatch "^(\\[[0-9a-fA-F:.]+\\]|[A-Za-z0-9_.-]+)(:[0-9]+)?$" $rest) }}
{{- fail (printf "inserter.endpoint %q must be host:port (e.g. abc.clickhouse.cloud:8443) or an http(s):// URL" $ep) }}
{{- end }}
{{- $port := "" }}
{{- $host := $rest }}
{{- if regexMatch ":[0-9]+$" $rest }}
{{- $port = regexFind "[0-9]+$" $rest }}
{{- $host = trimSuffix (printf ":%s" $port) $rest }}
{{- else }}
{{- $port = ternary "8443" "8123" (eq $scheme "https") }}
{{- end }}
{{- $mapped := "" }}
{{- if eq $port "9440" }}{{ $mapped = "9440" }}{{ $port = "8443" }}{{ end }}
{{- if eq $port "9000" }}{{ $mapped = "9000" }}{{ $port = "8123" }}{{ end }}
scheme: {{ $scheme }}
host: {{ $host | quote }}
port: {{ $port | quote }}
url: {{ printf "%s://%s:%s" $scheme $host $port | quote }}
mappedFrom: {{ $mapped | quote }}
{{- end }}
