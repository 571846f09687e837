{{/*
Names and labels shared by every template, and the cross-field checks the values schema
cannot express (or that must hold even when schema validation is skipped).
*/}}

{{- define "pii-key-broker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pii-key-broker.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pii-key-broker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the release's pods (server and migration Job alike). */}}
{{- define "pii-key-broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pii-key-broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels that select the serving pods only. */}}
{{- define "pii-key-broker.serverSelectorLabels" -}}
{{ include "pii-key-broker.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "pii-key-broker.labels" -}}
helm.sh/chart: {{ include "pii-key-broker.chart" . }}
{{ include "pii-key-broker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pii-key-broker
{{- end }}

{{- define "pii-key-broker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pii-key-broker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pii-key-broker.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "pii-key-broker.issuer" -}}
{{- if .Values.broker.issuer }}
{{- .Values.broker.issuer }}
{{- else }}
{{- printf "http://%s.%s.svc:%d" (include "pii-key-broker.fullname" .) .Release.Namespace (int .Values.service.port) }}
{{- end }}
{{- end }}

{{- define "pii-key-broker.postgresql" -}}
{{- if eq .Values.database.type "postgresql" }}true{{ end }}
{{- end }}

{{/* The hook Job migrates (PostgreSQL only); the pods then start with --no-migrate. */}}
{{- define "pii-key-broker.migrationJob" -}}
{{- if and (include "pii-key-broker.postgresql" .) .Values.migrations.enabled }}true{{ end }}
{{- end }}

{{/* The broker's env beyond the ConfigMap: secrets come as Secret references, never values. */}}
{{- define "pii-key-broker.env" -}}
{{- if include "pii-key-broker.postgresql" . }}
- name: BROKER_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.urlKey }}
{{- end }}
{{- if .Values.pepper.existingSecret }}
- name: BROKER_PEPPER
  valueFrom:
    secretKeyRef:
      name: {{ .Values.pepper.existingSecret }}
      key: {{ .Values.pepper.key }}
{{- end }}
{{- if eq .Values.broker.keyBackend "vault" }}
{{- if eq .Values.vault.auth.method "token" }}
- name: BROKER_VAULT_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.vault.auth.existingSecret }}
      key: {{ .Values.vault.auth.tokenKey }}
{{- else }}
- name: BROKER_VAULT_ROLE_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.vault.auth.existingSecret }}
      key: {{ .Values.vault.auth.roleIdKey }}
- name: BROKER_VAULT_SECRET_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.vault.auth.existingSecret }}
      key: {{ .Values.vault.auth.secretIdKey }}
{{- end }}
{{- if .Values.vault.caBundle.existingSecret }}
- name: REQUESTS_CA_BUNDLE
  value: {{ include "pii-key-broker.vaultCaFile" . | quote }}
{{- end }}
{{- end }}
{{- if .Values.alerts.webhookUrl }}
- name: BROKER_ALERT_WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.alerts.existingSecret }}
      key: {{ .Values.alerts.secretKey }}
{{- end }}
{{- if and .Values.sso.issuer .Values.sso.existingSecret }}
- name: BROKER_OIDC_CLIENT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.sso.existingSecret }}
      key: {{ .Values.sso.clientSecretKey }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "pii-key-broker.kekFile" -}}
/etc/pii-key-broker/kek/kek
{{- end }}

{{- define "pii-key-broker.vaultCaFile" -}}
/etc/pii-key-broker/vault-ca/ca.crt
{{- end }}

{{/* BROKER_* names the chart sets itself; extraConfig and extraEnv may not repeat them. */}}
{{- define "pii-key-broker.managedSettings" -}}
BROKER_HOST BROKER_PORT BROKER_HOME BROKER_ISSUER BROKER_WORKERS BROKER_LOG_LEVEL
BROKER_KEY_BACKEND BROKER_SCHEDULER_ENABLED BROKER_BOOTSTRAP_ADMIN BROKER_DB_POOL_SIZE
BROKER_KEK_FILE BROKER_VAULT_ADDR BROKER_VAULT_TRANSIT_MOUNT BROKER_VAULT_KEY_NAME
BROKER_VAULT_TIMEOUT BROKER_ALERT_WEBHOOK_URL BROKER_OIDC_ISSUER BROKER_OIDC_CLIENT_ID
BROKER_OIDC_ROLE_CLAIM BROKER_OIDC_ROLE_MAP BROKER_OIDC_SCOPES BROKER_OIDC_DISPLAY_NAME
BROKER_OIDC_REDIRECT_URI
{{- end }}

{{/* Settings that are secrets: only ever set from a Secret reference, never inline. */}}
{{- define "pii-key-broker.secretSettings" -}}
BROKER_DATABASE_URL BROKER_KEK BROKER_PEPPER BROKER_VAULT_TOKEN BROKER_VAULT_ROLE_ID
BROKER_VAULT_SECRET_ID BROKER_ALERT_WEBHOOK_SECRET BROKER_OIDC_CLIENT_SECRET
{{- end }}

{{/*
Cross-field rules. The values schema repeats the SQLite ones (helm refuses the values before
rendering); they are here as well because `--skip-schema-validation` bypasses the schema.
*/}}
{{- define "pii-key-broker.validate" -}}
{{- $v := .Values }}
{{- $pg := include "pii-key-broker.postgresql" . }}
{{- if not $pg }}
{{- if gt (int $v.replicaCount) 1 }}
{{- fail (printf "replicaCount=%d needs database.type=postgresql: the broker refuses SQLite with several processes" (int $v.replicaCount)) }}
{{- end }}
{{- if $v.autoscaling.enabled }}
{{- fail "autoscaling.enabled needs database.type=postgresql: the broker refuses SQLite with several processes" }}
{{- end }}
{{- if gt (int $v.broker.workers) 1 }}
{{- fail (printf "broker.workers=%d needs database.type=postgresql: the broker refuses SQLite with several processes" (int $v.broker.workers)) }}
{{- end }}
{{- else }}
{{- if not $v.database.existingSecret }}
{{- fail "database.type=postgresql needs database.existingSecret: the Secret holding BROKER_DATABASE_URL" }}
{{- end }}
{{- if not $v.pepper.existingSecret }}
{{- fail "database.type=postgresql needs pepper.existingSecret: every replica must hash tokens with the same BROKER_PEPPER" }}
{{- end }}
{{- if and (eq $v.broker.keyBackend "local") (not $v.kek.existingSecret) }}
{{- fail "keyBackend=local on PostgreSQL needs kek.existingSecret: every replica must unwrap signing keys with the same KEK" }}
{{- end }}
{{- end }}
{{- if eq $v.broker.keyBackend "vault" }}
{{- if not $v.vault.addr }}
{{- fail "keyBackend=vault needs vault.addr (BROKER_VAULT_ADDR)" }}
{{- end }}
{{- if not $v.vault.auth.existingSecret }}
{{- fail "keyBackend=vault needs vault.auth.existingSecret: the Secret holding the Vault token or AppRole credentials" }}
{{- end }}
{{- end }}
{{- if $v.sso.issuer }}
{{- if not $v.sso.clientId }}
{{- fail "sso.issuer needs sso.clientId (BROKER_OIDC_CLIENT_ID)" }}
{{- end }}
{{- if not $v.sso.roleMap }}
{{- fail "sso.issuer needs sso.roleMap (BROKER_OIDC_ROLE_MAP), e.g. pii-admins=admin,pii-approvers=approver" }}
{{- end }}
{{- end }}
{{- if and $v.alerts.webhookUrl (not $v.alerts.existingSecret) }}
{{- fail "alerts.webhookUrl needs alerts.existingSecret: alerts are signed with BROKER_ALERT_WEBHOOK_SECRET" }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas=%d is above autoscaling.maxReplicas=%d" (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- end }}
{{- if $v.podDisruptionBudget.enabled }}
{{- $pdb := $v.podDisruptionBudget }}
{{- if and (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "invalid" $pdb.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both (set the other to null)" }}
{{- end }}
{{- if and (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable" }}
{{- end }}
{{- if and (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "string" $pdb.minAvailable)) }}
{{- $least := ternary (int $v.autoscaling.minReplicas) (int $v.replicaCount) (eq $v.autoscaling.enabled true) }}
{{- if ge (int $pdb.minAvailable) $least }}
{{- fail (printf "podDisruptionBudget.minAvailable=%d must stay below the %d replica(s), or no node could ever be drained" (int $pdb.minAvailable) $least) }}
{{- end }}
{{- end }}
{{- end }}
{{- $managed := splitList " " (include "pii-key-broker.managedSettings" . | replace "\n" " ") }}
{{- $secret := splitList " " (include "pii-key-broker.secretSettings" . | replace "\n" " ") }}
{{- range $name, $_ := $v.broker.extraConfig }}
{{- if has $name $secret }}
{{- fail (printf "broker.extraConfig.%s is a secret: reference it from a Secret (see values.yaml), never inline" $name) }}
{{- end }}
{{- if has $name $managed }}
{{- fail (printf "broker.extraConfig.%s is set by the chart: use its own value instead" $name) }}
{{- end }}
{{- end }}
{{- range $v.extraEnv }}
{{- if and (has .name $secret) (not .valueFrom) }}
{{- fail (printf "extraEnv %s is a secret: use valueFrom.secretKeyRef, never an inline value" .name) }}
{{- end }}
{{- end }}
{{- end }}
