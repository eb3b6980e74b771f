{{/*
The gateway's pipeline config, generated from the values, before .Values.config is merged
over it. Keys are the components' own config keys (see each component's README).
*/}}
{{- define "kubenetmon-server.generatedPipeline" -}}
{{- $ch := include "kubenetmon-server.clickhouse" . | fromYaml }}
{{- $processors := list "k8s_attributes" "cloud_prefix" }}
{{- $flags := or .Values.connectionFlags.flags .Values.connectionFlags.rules }}
{{- if $flags }}
{{- $processors = append $processors "connection_flags" }}
{{- end }}
receivers:
  otlp:
    grpc:
      endpoint: {{ printf "0.0.0.0:%d" (int .Values.service.port) | quote }}
      keepalive:
        max_connection_age: {{ include "kubenetmon-server.seconds" .Values.agentChannel.maxConnectionAge }}
      {{- if .Values.agentChannel.tls.enabled }}
      tls:
        cert_file: /etc/kubenetmon-tls/tls.crt
        key_file: /etc/kubenetmon-tls/tls.key
      {{- end }}
    {{- if .Values.agentChannel.token.enabled }}
    auth:
      bearer_token: "${env:KUBENETMON_AGENT_TOKEN}"
    {{- end }}
    # Batch ids already delivered, on the same volume as the queue: a batch re-sent after a lost
    # acknowledgement is counted once across a gateway restart too.
    dedup:
      path: /var/lib/kubenetmon/otlp-dedup.jsonl
processors:
  k8s_attributes:
    source: kubernetes
    owners: {{ .Values.attribution.owners }}
    node_flows: {{ .Values.attribution.nodeFlows }}
  cloud_prefix:
    {{- with .Values.cloudPrefix.vpcCidrs }}
    vpc_cidrs: {{ toJson . }}
    {{- end }}
    {{- if .Values.cloudPrefix.filesVolume }}
    files_dir: /etc/kubenetmon-cloud-ranges
    {{- end }}
    cache_dir: /var/cache/kubenetmon/cloud-ranges
    offline: {{ .Values.cloudPrefix.offline }}
    skip_region_check: {{ or .Values.cloudPrefix.skipRegionCheck (not .Values.region) }}
  {{- if $flags }}
  connection_flags:
    {{- with .Values.connectionFlags.flags }}
    flags: {{ toYaml . | nindent 6 }}
    {{- end }}
    {{- with .Values.connectionFlags.rules }}
    rules: {{ toYaml . | nindent 6 }}
    {{- end }}
  {{- end }}
{{- if .Values.inserter.enabled }}
exporters:
  clickhouse:
    endpoint: {{ $ch.url }}
    database: {{ .Values.inserter.database | quote }}
    table: {{ .Values.inserter.table | quote }}
    # Credentials are files from the Secret: never in the ConfigMap or the environment.
    username_file: /etc/kubenetmon-clickhouse/{{ .Values.inserter.existingSecretUsernameKey }}
    password_file: /etc/kubenetmon-clickhouse/{{ .Values.inserter.existingSecretPasswordKey }}
    {{- if eq $ch.scheme "https" }}
    tls:
      insecure_skip_verify: {{ .Values.inserter.insecureSkipVerify }}
      {{- if .Values.inserter.caSecret }}
      ca_file: /etc/kubenetmon-clickhouse-ca/ca.crt
      {{- end }}
    {{- end }}
    connect_timeout: {{ include "kubenetmon-server.seconds" .Values.inserter.dialTimeout }}
    async_insert: {{ .Values.inserter.asyncInsert }}
    {{- with .Values.inserter.failoverEndpoints }}
    failover_endpoints: {{ toJson . }}
    {{- end }}
    {{- if .Values.inserter.createSchema }}
    create_schema: true
    {{- end }}
    {{- $cluster := .Values.inserter.cluster }}
    {{- if ne $cluster.mode "single" }}
    {{- if and (eq $cluster.mode "replicated") (not $cluster.name) }}
    {{- fail "inserter.cluster.name is required with inserter.cluster.mode=replicated (the cluster of the servers' remote_servers)" }}
    {{- end }}
    cluster:
      mode: {{ $cluster.mode }}
      {{- if eq $cluster.mode "replicated" }}
      name: {{ $cluster.name | quote }}
      {{- with $cluster.localTable }}
      local_table: {{ . | quote }}
      {{- end }}
      {{- with $cluster.shardingKey }}
      sharding_key: {{ . | quote }}
      {{- end }}
      {{- end }}
    {{- end }}
    {{- if eq .Values.inserter.acknowledge "stored" }}
    # No queue: an agent's batch is acknowledged only once it is in ClickHouse (docs/scaling.md).
    sending_queue:
      enabled: false
    {{- else if .Values.inserter.persistentQueue }}
    # On the pod's emptyDir: survives a crash and restart of the container (not of the pod).
    sending_queue:
      storage: persistent
      directory: /var/lib/kubenetmon/clickhouse-queue
    {{- end }}
    batch:
      max_flows: {{ int .Values.inserter.batchSize }}
      max_wait: {{ include "kubenetmon-server.seconds" .Values.inserter.batchSendTimeout }}
      align: true
{{- end }}
extensions:
  health_check:
    endpoint: {{ printf "0.0.0.0:%d" (int .Values.healthCheck.port) | quote }}
service:
  extensions: [health_check]
  pipelines:
    flows:
      receivers: [otlp]
      processors: {{ toJson $processors }}
      exporters: {{ ternary (list "clickhouse") (list) .Values.inserter.enabled | toJson }}
  telemetry:
    metrics:
      address: {{ ternary (printf "0.0.0.0:%d" (int .Values.metrics.port)) "" .Values.metrics.enabled | quote }}
    logs:
      level: {{ .Values.logs.level }}
      encoding: {{ .Values.logs.encoding }}
  identity:
    cloud: {{ .Values.cloud | quote }}
    region: {{ .Values.region | quote }}
    cluster: {{ .Values.cluster | quote }}
    environment: {{ .Values.environment | quote }}
    cell: {{ .Values.cell | quote }}
  shutdown_timeout: {{ max 5 (sub (int .Values.terminationGracePeriodSeconds) 10) }}
{{- end }}

{{/* The pipeline config written to the ConfigMap: generated, with .Values.config merged over it. */}}
{{- define "kubenetmon-server.pipeline" -}}
{{- $generated := include "kubenetmon-server.generatedPipeline" . | fromYaml }}
{{- if hasKey $generated "Error" }}
{{- fail (printf "internal error rendering the pipeline: %s" $generated.Error) }}
{{- end }}
{{- $merged := mustMergeOverwrite $generated (deepCopy .Values.config) }}
{{- $exporters := dig "service" "pipelines" "flows" "exporters" (list) $merged }}
{{- if not $exporters }}
{{- fail "no exporter in service.pipelines.flows: with inserter.enabled=false, add one under config (e.g. config.exporters.otlp and config.service.pipelines.flows.exporters=[otlp])" }}
{{- end }}
{{- toYaml $merged }}
{{- end }}
