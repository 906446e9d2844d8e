{{- define "coded-serving.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "coded-serving.labels" -}}
app.kubernetes.io/name: coded-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "coded-serving.selectorLabels" -}}
app.kubernetes.io/name: coded-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "coded-serving.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "coded-serving.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}
