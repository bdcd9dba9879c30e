{{/* Names and labels shared by the templates. */}}

{{- define "embedfleet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "embedfleet.operatorName" -}}
{{- printf "%s-operator" (include "embedfleet.fullname" .) -}}
{{- end -}}

{{- define "embedfleet.serviceAccountName" -}}
{{- default (include "embedfleet.operatorName" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "embedfleet.selectorLabels" -}}
app.kubernetes.io/name: embedfleet-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "embedfleet.labels" -}}
{{ include "embedfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: embedfleet
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "embedfleet.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{- define "embedfleet.image" -}}
{{- $repository := default (printf "%s/operator" .Values.registry) .Values.image.repository -}}
{{- printf "%s:%s" $repository (include "embedfleet.tag" .) -}}
{{- end -}}

{{/* The workers' image when an EmbeddingService sets none. */}}
{{- define "embedfleet.workerImage" -}}
{{- default (printf "%s/worker:%s" .Values.registry (include "embedfleet.tag" .)) .Values.workerImage -}}
{{- end -}}
