{{/*
The agent's pipeline config, generated from the values, before .Values.config is merged
over it. Keys are the components' own config keys (see each component's README).
*/}}
{{- define "kubenetmon-agent.generatedPipeline" -}}
receivers:
  conntrack:
    node_name: "${env:NODE_NAME}"
    interval: {{ include "kubenetmon-agent.seconds" .Values.configuration.collectionInterval }}
    skip_sanity_check: {{ .Values.configuration.skipConntrackSanityCheck }}
    uptime_wait: {{ include "kubenetmon-agent.seconds" .Values.configuration.uptimeWaitDuration }}
    configure_sysctls: {{ eq .Values.configuration.sysctls "agent" }}
    # Rewritten every interval and only needed across agent restarts (a reboot empties
    # conntrack anyway): on a tmpfs hostPath, no disk wear.
    checkpoint_path: /run/kubenetmon/conntrack.state
exporters:
  otlp:
    endpoint: {{ include "kubenetmon-agent.gatewayEndpoint" . | quote }}
    tls:
      insecure: {{ not .Values.gateway.tls.enabled }}
      {{- if and .Values.gateway.tls.enabled .Values.gateway.tls.caSecret }}
      ca_file: /etc/kubenetmon-tls/ca.crt
      {{- end }}
    {{- if .Values.gateway.token.enabled }}
    headers:
      authorization: "Bearer ${env:KUBENETMON_AGENT_TOKEN}"
    {{- end }}
    arrow:
      enabled: {{ .Values.gateway.otap }}
    # On the node's disk: a gateway outage or an agent restart loses nothing that was dumped;
    # when the queue is full the receiver keeps its deltas and retries (block).
    sending_queue:
      storage: persistent
      directory: /var/lib/kubenetmon/queue
      capacity: {{ int .Values.stateDir.queueCapacity }}
      full_policy: block
    retry_on_failure:
      max_elapsed_time: 0
extensions:
  health_check:
    endpoint: {{ printf "0.0.0.0:%d" (int .Values.healthCheck.port) | quote }}
service:
  extensions: [health_check]
  pipelines:
    flows:
      receivers: [conntrack]
      exporters: [otlp]
  telemetry:
    metrics:
      address: {{ ternary (printf "0.0.0.0:%d" (int .Values.metrics.port)) "" .Values.metrics.enabled | quote }}
    logs:
      level: {{ .Values.logs.level }}
      encoding: {{ .Values.logs.encoding }}
  shutdown_timeout: {{ max 5 (sub (int .Values.terminationGracePeriodSeconds) 5) }}
{{- end }}

{{/* The pipeline config written to the ConfigMap: generated, with .Values.config merged over it. */}}
{{- define "kubenetmon-agent.pipeline" -}}
{{- $generated := include "kubenetmon-agent.generatedPipeline" . | fromYaml }}
{{- if hasKey $generated "Error" }}
{{- fail (printf "internal error rendering the pipeline: %s" $generated.Error) }}
{{- end }}
{{- toYaml (mustMergeOverwrite $generated (deepCopy .Values.config)) }}
{{- end }}
