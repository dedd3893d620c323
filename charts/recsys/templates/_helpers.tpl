{{/* Prefix of every object name: the release name unless fullnameOverride is set. */}}
{{- define "recsys.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "recsys.labels" -}}
app.kubernetes.io/name: recsys
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: include "recsys.selector" (list . "mlflow") */}}
{{- define "recsys.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: recsys
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "recsys.image" -}}
{{ include "recsys.imageRef" (list (printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion)) .Values.image.digest) }}
{{- end -}}

{{/* The image of a pod that requests GPUs: the CUDA build when image.cudaTag is set. */}}
{{- define "recsys.gpuImage" -}}
{{- if .Values.image.cudaTag -}}
{{ include "recsys.imageRef" (list (printf "%s:%s" .Values.image.repository .Values.image.cudaTag) .Values.image.cudaDigest) }}
{{- else -}}
{{ include "recsys.image" . }}
{{- end -}}
{{- end -}}

{{/* repo:tag, or repo:tag@digest when a digest is set (then the tag is only for people): (list ref digest) */}}
{{- define "recsys.imageRef" -}}
{{ index . 0 }}{{ with index . 1 }}@{{ . }}{{ end }}
{{- end -}}

{{/*
checkov skip annotations of a workload, each with its reason (tests/charts runs checkov on every profile and
fails on an unexplained finding). Args: dict digest (the image digest value) digestValue (its values path),
optional uid and skips (list of (list ID reason)). Reasons must not contain "=".
*/}}
{{- define "recsys.checkovSkips" -}}
{{- $skips := .skips | default list -}}
{{- if not .digest -}}
{{- $skips = append $skips (list "CKV_K8S_43" (printf "the image is pinned by tag; set %s to pin it by digest" .digestValue)) -}}
{{- $skips = append $skips (list "CKV_K8S_15" (printf "IfNotPresent suits a release-pinned tag; with %s set the reference is immutable" .digestValue)) -}}
{{- end -}}
{{- if and .uid (lt (int .uid) 10000) -}}
{{- $skips = append $skips (list "CKV_K8S_40" (printf "UID %d is the image's own user that owns its files; it runs non-root without privilege escalation" (int .uid))) -}}
{{- end -}}
{{- range $i, $s := $skips }}
checkov.io/skip{{ add1 $i }}: {{ printf "%s=%s" (index $s 0) (index $s 1) | quote }}
{{- end }}
{{- end -}}

{{/* Pod securityContext for a UID: include "recsys.podSecurityContext" (list . uid) */}}
{{- define "recsys.podSecurityContext" -}}
{{- $ := index . 0 -}}
{{- $uid := index . 1 | int64 -}}
{{- toYaml (merge (dict "runAsUser" $uid "runAsGroup" $uid "fsGroup" $uid) (deepCopy $.Values.podSecurityContext)) -}}
{{- end -}}

{{- define "recsys.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext -}}
{{- end -}}

{{/* ---- Service addresses (one place; the settings file and the templates both use these) ---- */}}
{{- define "recsys.mlflowUri" -}}
http://{{ include "recsys.fullname" . }}-mlflow:{{ .Values.mlflow.port }}
{{- end -}}

{{- define "recsys.redisAddress" -}}
{{- if .Values.redis.enabled -}}
{{ include "recsys.fullname" . }}-redis:6379
{{- else -}}
{{ required "redis.externalAddress is required when redis.enabled is false" .Values.redis.externalAddress }}
{{- end -}}
{{- end -}}

{{- define "recsys.s3Endpoint" -}}
{{- if .Values.objectStore.externalEndpoint -}}
{{ .Values.objectStore.externalEndpoint }}
{{- else if .Values.objectStore.minio.enabled -}}
http://{{ include "recsys.fullname" . }}-minio:9000
{{- else -}}
{{- fail "objectStore: set externalEndpoint or enable objectStore.minio" -}}
{{- end -}}
{{- end -}}

{{- define "recsys.postgresHost" -}}
{{- if .Values.postgres.enabled -}}
{{ include "recsys.fullname" . }}-postgres
{{- else -}}
{{ required "postgres.externalHost is required when postgres.enabled is false" .Values.postgres.externalHost }}
{{- end -}}
{{- end -}}

{{/* The admin credentials' Secret (MinIO's root user; an external store's shared key). */}}
{{- define "recsys.objectStoreSecret" -}}
{{ .Values.objectStore.existingSecret | default (printf "%s-object-store" (include "recsys.fullname" .)) }}
{{- end -}}

{{/* Read by KServe's storage initializer from the Secret the ranker's ServiceAccount lists (KServe
pkg/credentials/s3/s3_secret.go: s3-endpoint, s3-usehttps, s3-region). */}}
{{- define "recsys.kserveS3Annotations" -}}
serving.kserve.io/s3-endpoint: {{ include "recsys.s3Endpoint" . | trimPrefix "http://" | trimPrefix "https://" | quote }}
serving.kserve.io/s3-usehttps: {{ ternary "1" "0" (hasPrefix "https://" (include "recsys.s3Endpoint" .)) | quote }}
serving.kserve.io/s3-region: {{ .Values.objectStore.region | quote }}
{{- end -}}

{{/* "true" when the chart runs the object store (its MinIO), and so creates a user per component. */}}
{{- define "recsys.bundledMinio" -}}
{{- and .Values.objectStore.minio.enabled (not .Values.objectStore.externalEndpoint) -}}
{{- end -}}

{{/* What each component may do in the bucket: prefixes it reads, and reads and writes. The prefixes are the ones
the rendered settings and servers name (feast_registry, kserve_publish_uri, MLflow's artifacts-destination);
tests/charts/test_chart.py checks they stay in step. */}}
{{- define "recsys.objectStoreGrants" -}}
mlflow: {readWrite: [mlflow/]}
pipeline: {readWrite: [feast/, rankers/]}
serving: {read: [feast/]}
ranker: {read: [rankers/]}
{{- end -}}

{{/* The Secret a component's pods read object-store keys from: include "recsys.objectStoreSecretFor" (list . c).
Its own existingSecret; else, with the bundled MinIO, the chart's generated key of that component's user; else the
shared admin Secret (an external store without per-component keys). */}}
{{- define "recsys.objectStoreSecretFor" -}}
{{- $ := index . 0 -}}
{{- $c := index . 1 -}}
{{- $own := (index $.Values.objectStore.components $c).existingSecret -}}
{{- if $own -}}
{{ $own }}
{{- else if eq (include "recsys.bundledMinio" $) "true" -}}
{{ printf "%s-object-store-%s" (include "recsys.fullname" $) $c }}
{{- else -}}
{{ include "recsys.objectStoreSecret" $ }}
{{- end -}}
{{- end -}}

{{/* An IAM policy (JSON) granting one component's prefixes: include "recsys.objectStorePolicy" (list . grants). */}}
{{- define "recsys.objectStorePolicy" -}}
{{- $ := index . 0 -}}
{{- $g := index . 1 -}}
{{- $bucket := printf "arn:aws:s3:::%s" $.Values.objectStore.bucket -}}
{{- /* HeadBucket (Feast's registry read) is authorised as s3:ListBucket with no prefix: no prefix condition */ -}}
{{- $statements := list (dict "Effect" "Allow" "Action" (list "s3:GetBucketLocation" "s3:ListBucket") "Resource" (list $bucket)) -}}
{{- $read := list -}}
{{- range $g.read }}{{ $read = append $read (printf "%s/%s*" $bucket .) }}{{ end -}}
{{- with $read }}
{{- $statements = append $statements (dict "Effect" "Allow" "Action" (list "s3:GetObject") "Resource" .) -}}
{{- end -}}
{{- $rw := list -}}
{{- range $g.readWrite }}{{ $rw = append $rw (printf "%s/%s*" $bucket .) }}{{ end -}}
{{- with $rw }}
{{- $statements = append $statements (dict "Effect" "Allow" "Action" (list "s3:GetObject" "s3:PutObject" "s3:DeleteObject" "s3:AbortMultipartUpload" "s3:ListMultipartUploadParts") "Resource" .) -}}
{{- end -}}
{{- dict "Version" "2012-10-17" "Statement" $statements | toJson -}}
{{- end -}}

{{/* The Redis password's Secret, or "" when Redis takes no password (an external one without existingSecret). */}}
{{- define "recsys.redisSecret" -}}
{{- if .Values.redis.existingSecret -}}
{{ .Values.redis.existingSecret }}
{{- else if .Values.redis.enabled -}}
{{ printf "%s-redis" (include "recsys.fullname" .) }}
{{- end -}}
{{- end -}}

{{/* Where a Redis client finds the password: the Secret's key, mounted as a file. */}}
{{- define "recsys.redisPasswordFile" -}}
/etc/recsys-secrets/redis/{{ .Values.redis.existingSecretKey }}
{{- end -}}

{{- define "recsys.apiKeysSecret" -}}
{{ .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "recsys.fullname" .)) }}
{{- end -}}

{{- define "recsys.postgresSecret" -}}
{{- if and (not .Values.postgres.enabled) (not .Values.postgres.existingSecret) -}}
{{- fail "postgres.existingSecret is required with an external Postgres (postgres.enabled=false)" -}}
{{- end -}}
{{ .Values.postgres.existingSecret | default (printf "%s-postgres" (include "recsys.fullname" .)) }}
{{- end -}}

{{- define "recsys.rankerName" -}}
{{ include "recsys.fullname" . }}-{{ .Values.ranker.name }}
{{- end -}}

{{- define "recsys.serverless" -}}
{{- if has .Values.ranker.deploymentMode (list "Serverless" "Knative") -}}true{{- end -}}
{{- end -}}

{{- define "recsys.storageUri" -}}
{{ .Values.ranker.storageUri | default (printf "s3://%s/rankers/live" .Values.objectStore.bucket) }}
{{- end -}}

{{/* GPUs per pod of a worker group (0 when none). */}}
{{- define "recsys.groupGpus" -}}
{{- $l := .resources.limits | default dict -}}
{{- index $l "nvidia.com/gpu" | default 0 | int -}}
{{- end -}}

{{/*
The ONE settings file (core/settings.py reads it through RECSYS_SETTINGS_FILE). Computed service
URIs first, then .Values.settings on top (pass-through: explicit values win). Keys must be Settings
fields: tests/charts/test_chart.py loads the rendered file through core.settings.load_settings.
*/}}
{{- define "recsys.settings" -}}
{{- $gpus := 0 -}}
{{- $workers := 0 -}}
{{- range .Values.training.workerGroups -}}
{{- $g := include "recsys.groupGpus" . | int -}}
{{- $gpus = add $gpus (mul $g .replicas) -}}
{{- $workers = add $workers (mul (max $g 1) .replicas) -}}
{{- end -}}
{{- $computed := dict
  "home" .Values.persistence.state.mountPath
  "mlflow_tracking_uri" (include "recsys.mlflowUri" .)
  "feast_online_store" (dict "type" "redis" "connection_string" (printf "%s%s" (include "recsys.redisAddress" .) (ternary ",password=${REDIS_PASSWORD}" "" (ne (include "recsys.redisSecret" .) ""))))
  "event_log_url" (printf "redis://%s%s/%d" (ternary ":${REDIS_PASSWORD}@" "" (ne (include "recsys.redisSecret" .) "")) (include "recsys.redisAddress" .) (int .Values.redis.eventsDb))
  "feast_registry" (printf "s3://%s/feast/registry.db" .Values.objectStore.bucket)
  "feature_server_url" (printf "http://%s-feature-server:%d" (include "recsys.fullname" .) (int .Values.featureServer.port))
  "feature_read" (ternary "server" "sdk" .Values.featureServer.enabled)
  "ray_address" "auto"
  "train_workers" (max $workers 1)
  "use_gpu" (gt (int $gpus) 0)
  "triton_host" (printf "%s-predictor" (include "recsys.rankerName" .))
  "triton_grpc_port" (ternary 80 (int .Values.ranker.grpcPort) (eq (include "recsys.serverless" .) "true"))
  "triton_http_port" (int .Values.ranker.httpPort)
  "triton_metrics_port" (int .Values.ranker.metricsPort)
  "serve_host" "0.0.0.0"
  "serve_http_port" (int (dig "http_options" "port" 8000 .Values.serving.serveConfig))
  "serve_grpc_port" (int (dig "grpc_options" "port" 9000 .Values.serving.serveConfig))
  "serve_app_name" (index .Values.serving.serveConfig.applications 0).name
  "api_keys_file" "/etc/recsys-keys/keys"
  "copy_use_gpu" (gt (int .Values.serving.copyGpus) 0)
  "copy_dtype" (ternary "bfloat16" "auto" (gt (int .Values.serving.copyGpus) 0))
  "model_cache_dir" (printf "%s/model-cache" .Values.persistence.state.mountPath)
  "kserve_inference_service" (ternary (include "recsys.rankerName" .) nil .Values.ranker.enabled)
  "kserve_namespace" .Release.Namespace
  "kserve_publish_uri" (printf "s3://%s/rankers" .Values.objectStore.bucket)
  "kserve_rayservice" (ternary (printf "%s-serve" (include "recsys.fullname" .)) nil .Values.serving.enabled)
-}}
{{- toYaml (mergeOverwrite $computed (deepCopy .Values.settings)) -}}
{{- end -}}

{{/*
Env of every platform container: where settings come from + S3 client configuration. Credentials are files
(recsys.secretVolume), named by <NAME>_FILE: core.settings / `python -m core.secret_files` load them.
*/}}
{{- define "recsys.env" -}}
- name: RECSYS_SETTINGS_FILE
  value: /etc/recsys/settings.yaml
- name: RECSYS_PROFILE
  value: {{ .Values.profile | quote }}
- name: HOME
  value: /tmp
- name: AWS_ACCESS_KEY_ID_FILE
  value: /etc/recsys-secrets/object-store/AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY_FILE
  value: /etc/recsys-secrets/object-store/AWS_SECRET_ACCESS_KEY
- name: AWS_DEFAULT_REGION
  value: {{ .Values.objectStore.region | quote }}
- name: AWS_ENDPOINT_URL
  value: {{ include "recsys.s3Endpoint" . | quote }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ include "recsys.s3Endpoint" . | quote }}
- name: FEAST_S3_ENDPOINT_URL
  value: {{ include "recsys.s3Endpoint" . | quote }}
{{- end -}}

{{/* Redis clients only (the feature server, materialization, the Ray clusters, the retrain job: what the Redis
NetworkPolicy admits): the password file, which core.secret_files loads into REDIS_PASSWORD, the variable the
settings' Redis URLs name. Each renders nothing when Redis takes no password. */}}
{{- define "recsys.redisEnv" -}}
{{- if include "recsys.redisSecret" . }}
- name: REDIS_PASSWORD_FILE
  value: {{ include "recsys.redisPasswordFile" . }}
{{- end }}
{{- end -}}

{{- define "recsys.redisVolume" -}}
{{- with include "recsys.redisSecret" . }}
{{ include "recsys.secretVolume" (list "redis-password" .) }}
{{- end }}
{{- end -}}

{{- define "recsys.redisVolumeMount" -}}
{{- if include "recsys.redisSecret" . }}
- name: redis-password
  mountPath: /etc/recsys-secrets/redis
  readOnly: true
{{- end }}
{{- end -}}

{{/* A Secret as read-only files (owner and the pod's fsGroup may read): include "recsys.secretVolume" (list name secretName) */}}
{{- define "recsys.secretVolume" -}}
- name: {{ index . 0 }}
  secret:
    secretName: {{ index . 1 }}
    defaultMode: 0440
{{- end -}}

{{/* Volumes of platform pods: settings, the component's object-store credentials, state, /tmp:
include "recsys.volumes" (list . component). */}}
{{- define "recsys.volumes" -}}
{{- $component := index . 1 -}}
{{- with index . 0 }}
- name: settings
  configMap:
    name: {{ include "recsys.fullname" . }}-settings
{{ include "recsys.secretVolume" (list "object-store" (include "recsys.objectStoreSecretFor" (list . $component))) }}
- name: tmp
  emptyDir: {}
- name: state
{{- if .Values.persistence.state.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "recsys.fullname" . }}-state
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}
{{- end -}}

{{- define "recsys.volumeMounts" -}}
- name: settings
  mountPath: /etc/recsys
  readOnly: true
- name: object-store
  mountPath: /etc/recsys-secrets/object-store
  readOnly: true
- name: tmp
  mountPath: /tmp
- name: state
  mountPath: {{ .Values.persistence.state.mountPath }}
{{- end -}}

{{/* Prometheus scrape annotations: include "recsys.scrape" (list . port path) */}}
{{- define "recsys.scrape" -}}
{{- $ := index . 0 -}}
{{- if $.Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ index . 1 | quote }}
prometheus.io/path: {{ index . 2 | quote }}
{{- end }}
{{- end -}}

{{/* Reuse a generated secret value across upgrades: include "recsys.secretValue" (list . secretName key) */}}
{{- define "recsys.secretValue" -}}
{{- $ := index . 0 -}}
{{- $existing := lookup "v1" "Secret" $.Release.Namespace (index . 1) -}}
{{- if and $existing (hasKey $existing.data (index . 2)) -}}
{{ index $existing.data (index . 2) }}
{{- else -}}
{{ randAlphaNum 32 | b64enc }}
{{- end -}}
{{- end -}}

{{/* Ray pod template pieces shared by RayJob and RayService: include "recsys.rayVolumes" (list . component). */}}
{{- define "recsys.rayVolumes" -}}
{{- $component := index . 1 -}}
{{- with index . 0 }}
{{- include "recsys.volumes" (list . $component) }}
{{- include "recsys.redisVolume" . }}
- name: api-keys
  secret:
    secretName: {{ include "recsys.apiKeysSecret" . }}
    items: [{key: {{ .Values.apiKeys.existingSecretKey | quote }}, path: keys}]
- name: dshm
  emptyDir:
    medium: Memory
{{- end }}
{{- end -}}

{{- define "recsys.rayVolumeMounts" -}}
{{ include "recsys.volumeMounts" . }}
{{- include "recsys.redisVolumeMount" . }}
- name: api-keys
  mountPath: /etc/recsys-keys
  readOnly: true
- name: dshm
  mountPath: /dev/shm
{{- end -}}
