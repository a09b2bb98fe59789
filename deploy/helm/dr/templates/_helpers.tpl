{{- define "dr.name" -}}{{ .Release.Name }}-dr{{- end -}}
{{- define "dr.labels" -}}
app.kubernetes.io/name: dr
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
{{- define "dr.selector" -}}
app.kubernetes.io/name: dr
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
