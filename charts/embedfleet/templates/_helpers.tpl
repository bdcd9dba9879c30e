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

{{- define "embedfleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
