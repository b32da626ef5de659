{{/*
The least the operator needs, one rule per reason:
- QueryPools: read and watch them, write status; the scale subresource for `kubectl scale`.
- The objects a pool owns (Deployment of workers, headless Service, PDB, catalog ConfigMap):
  server-side apply (create + patch) and delete when a pool drops one. No update: apply patches.
- Pods: read them and patch the pod-deletion-cost annotation before a scale-down.
- EndpointSlices: read which workers are ready.
- Events: record what it did.
No access to Secrets: worker pods reference the ticket key Secret by name.
*/}}
{{- define "quiver.operator.rules" -}}
- apiGroups: ["quiver.dev"]
  resources: ["querypools"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["quiver.dev"]
  resources: ["querypools/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["quiver.dev"]
  resources: ["querypools/scale"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["quiver.dev"]
  resources: ["querypools/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
