{{/*
Ray pod template: include "recsys.rayPod" (dict "root" $ "component" "training" "role" "head"
"resources" ... "nodeSelector" ... "tolerations" ... "autoscaler" true|false). Head and workers run the platform image with
the settings file, state volume, /tmp and a memory-backed /dev/shm for the object store.
*/}}
{{- define "recsys.rayPod" -}}
{{- $ := .root -}}
metadata:
  labels:
    {{- include "recsys.selector" (list $ (printf "%s-%s" .component .role)) | nindent 4 }}
    recsys.io/part: {{ .component }}
  annotations:
    {{- if ne .component "serving" }}
    checksum/settings: {{ include "recsys.settings" $ | sha256sum }}
    {{- end }}
    {{- /* Not on the serving cluster: KubeRay hashes the whole rayClusterSpec (pod annotations included) and a
    changed hash starts a second RayCluster (v1.7.0 utils/util.go GenerateHashWithoutReplicasAndWorkersToDelete).
    A settings change reaches the Serve replicas through serveConfigV2 instead (rayservice.yaml). */}}
    {{- include "recsys.scrape" (list $ 8080 "/metrics") | nindent 4 }}
spec:
  {{- if .autoscaler }}
  # The in-tree autoscaler sidecar reads the API token from the standard mount (Ray's kuberay node_provider
  # load_k8s_secrets) and patches this cluster's pods through the Role KubeRay binds to the head's account
  # (KubeRay v1.7.0 controllers/ray/common/rbac.go BuildRole; a named account must exist: the chart's own).
  serviceAccountName: {{ include "recsys.fullname" $ }}-ray-autoscaler
  automountServiceAccountToken: true
  {{- else }}
  serviceAccountName: {{ include "recsys.fullname" $ }}
  automountServiceAccountToken: false
  {{- end }}
  {{- with $.Values.imagePullSecrets }}
  imagePullSecrets: {{ toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "recsys.podSecurityContext" (list $ $.Values.platformUid) | nindent 4 }}
  {{- with .nodeSelector }}
  nodeSelector: {{ toYaml . | nindent 4 }}
  {{- end }}
  {{- with .tolerations }}
  tolerations: {{ toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: ray-{{ .role }}
      image: {{ if gt (int (include "recsys.groupGpus" .)) 0 }}{{ include "recsys.gpuImage" $ }}{{ else }}{{ include "recsys.image" $ }}{{ end }}
      imagePullPolicy: {{ $.Values.image.pullPolicy }}
      env:
        {{- include "recsys.env" $ | nindent 8 }}
        {{- include "recsys.redisEnv" $ | nindent 8 }}
        {{- if eq .component "serving" }}
        - name: RAY_SERVE_GRPC_MAX_MESSAGE_SIZE  {{- /* ray/serve/_private/constants.py: the gRPC proxy's limit */}}
          value: {{ $.Values.serving.grpcMaxMessageBytes | int | quote }}
        {{- end }}
      {{- if eq .role "head" }}
      ports:
        - {name: gcs, containerPort: 6379}
        - {name: dashboard, containerPort: 8265}
        - {name: client, containerPort: 10001}
        {{- if eq .component "serving" }}
        - {name: serve, containerPort: {{ dig "http_options" "port" 8000 $.Values.serving.serveConfig }}}
        - {name: serve-grpc, containerPort: {{ dig "grpc_options" "port" 9000 $.Values.serving.serveConfig }}}
        {{- end }}
        - {name: metrics, containerPort: 8080}
      {{- end }}
      securityContext:
        {{- include "recsys.containerSecurityContext" $ | nindent 8 }}
      resources:
        {{- toYaml .resources | nindent 8 }}
      volumeMounts:
        {{- include "recsys.rayVolumeMounts" $ | nindent 8 }}
  volumes:
    {{- include "recsys.rayVolumes" (list $ (ternary "serving" "pipeline" (eq .component "serving"))) | nindent 4 }}
{{- end -}}

{{/* rayStartParams of a worker group: num-gpus from its nvidia.com/gpu limit. */}}
{{- define "recsys.workerStartParams" -}}
{{- $g := include "recsys.groupGpus" . | int -}}
{{- if gt $g 0 }}
num-gpus: {{ $g | quote }}
{{- else }}
{}
{{- end }}
{{- end -}}
