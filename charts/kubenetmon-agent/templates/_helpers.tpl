{{/* Names: every object is named from the release, so two releases never collide. */}}
{{- define "kubenetmon-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubenetmon-agent.fullname" -}}
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

{{- define "kubenetmon-agent.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubenetmon-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubenetmon-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kubenetmon-agent.labels" -}}
helm.sh/chart: {{ include "kubenetmon-agent.chart" . }}
{{ include "kubenetmon-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: agent
app.kubernetes.io/part-of: kubenetmon
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kubenetmon-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubenetmon-agent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubenetmon-agent.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "kubenetmon-agent.tokenSecretName" -}}
{{- default (printf "%s-agent-token" (include "kubenetmon-agent.fullname" .)) .Values.gateway.token.existingSecret }}
{{- end }}

{{/*
Go duration (30s, 1m30s, 500ms, 2h) or a bare number of seconds -> seconds, as a float string.
*/}}
{{- define "kubenetmon-agent.seconds" -}}
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


{{/* The PriorityClass: created as <fullname>-<namespace> (cluster-scoped, so unique per release) unless named; an existing one when not created. */}}
{{- define "kubenetmon-agent.priorityClassName" -}}
{{- if .Values.priorityClass.enabled }}
{{- default (printf "%s-%s" (include "kubenetmon-agent.fullname" .) .Release.Namespace) .Values.priorityClass.name }}
{{- else }}
{{- .Values.priorityClass.name }}
{{- end }}
{{- end }}

{{/*
The gateway address: by default the server chart's Service as installed by its README
(release kubenetmon-server in namespace kubenetmon-server), like the original chart.
*/}}
{{- define "kubenetmon-agent.gatewayEndpoint" -}}
{{- $host := default "kubenetmon-server.kubenetmon-server.svc.cluster.local" .Values.configuration.kubenetmonServerServiceHost }}
{{- printf "%s:%d" $host (int .Values.configuration.kubenetmonServerServicePort) }}
{{- end }}

{{/* Host directory of this release's persistent queue. */}}
{{- define "kubenetmon-agent.stateHostPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.stateDir.hostPath) (include "kubenetmon-agent.fullname" .) }}
{{- end }}

{{/* Host directory (tmpfs) of this release's conntrack checkpoint. */}}
{{- define "kubenetmon-agent.checkpointHostPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.stateDir.checkpointHostPath) (include "kubenetmon-agent.fullname" .) }}
{{- end }}
