{{/* Names, labels and shared snippets of the ClusterLink chart. */}}

{{- define "clusterlink.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name: the release name, prefixed with the chart name unless it contains it. */}}
{{- define "clusterlink.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "clusterlink.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: clusterlink
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "gateway") */}}
{{- define "clusterlink.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clusterlink.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The control plane's --gateway-selector: the gateway pods' selector labels as k=v,... */}}
{{- define "clusterlink.gatewaySelector" -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s,app.kubernetes.io/component=gateway" (include "clusterlink.name" .) .Release.Name -}}
{{- end -}}

{{- define "clusterlink.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "clusterlink.peerName" -}}
{{- required "peer.name is required: the peer's name, as in its certificate (clusterlink deploy peer writes it into the values file)" .Values.peer.name -}}
{{- end -}}

{{/* In-cluster address of the control plane's API. */}}
{{- define "clusterlink.controlplaneAddress" -}}
{{- printf "%s-controlplane.%s.svc:%d" (include "clusterlink.fullname" .) .Release.Namespace (int .Values.controlplane.apiPort) -}}
{{- end -}}

{{/* In-cluster address of the gateways' agent port (told to the agents in their snapshots). */}}
{{- define "clusterlink.gatewayAgentAddress" -}}
{{- printf "%s-gateway-internal.%s.svc:%d" (include "clusterlink.fullname" .) .Release.Namespace (int .Values.gateway.agentPort) -}}
{{- end -}}

{{- define "clusterlink.logArgs" -}}
- --log-level={{ .Values.logLevel }}
- --log-format={{ .Values.logFormat }}
{{- end -}}

{{- /* The secret volume source of the join token, as the file join.token: the Secret the control
       plane creates (tokens.create) or the one made elsewhere (clusterlink deploy peer). */}}
{{- define "clusterlink.joinTokenSecret" -}}
{{- if .Values.tokens.create -}}
secretName: clusterlink-join-token
items:
  - key: token
    path: join.token
{{- else -}}
secretName: {{ .Values.tokens.secretName }}
items:
  - key: join.token
    path: join.token
{{- end }}
{{- end }}
