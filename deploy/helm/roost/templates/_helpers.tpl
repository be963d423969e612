{{- define "roost.name" -}}{{ .Chart.Name }}{{- end -}}
{{- define "roost.fullname" -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "roost.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- define "roost.labels" -}}
app.kubernetes.io/name: {{ include "roost.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
{{- define "roost.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "roost.fullname" . }}
  - secretRef:
      name: {{ required "existingSecret names the Secret with ROOST_DATABASE_URL and ROOST_ADMIN_TOKEN" .Values.existingSecret }}
{{- end -}}
