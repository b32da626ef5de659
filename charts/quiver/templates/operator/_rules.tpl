{{/*
Exactly what quiver-operator calls (operator/src/controller), one rule per reason:
- QueryPools: list and watch them (the controller's watch), get a pool's standby pool when
  it claims from it; patch status (server-side apply of
  the status subresource). The finalizers subresource: owned objects carry an owner reference
  with blockOwnerDeletion, which the API server allows only to those who may update it.
- The objects a pool owns (Deployment of workers, headless Service, PDB, NetworkPolicy,
  catalog ConfigMap): list and watch (drift repair), create and patch (server-side apply).
  Deployments also get: the reconciler reads the current replicas. No delete: owner references
  let the garbage collector remove them with their pool; the one exception is a pool's
  NetworkPolicy, deleted when networkPolicy.enabled is turned off.
- Pods: list a pool's pods and patch the pod-deletion-cost annotation before a scale-down;
  watch a pool's claimed pods, patch (relabel) a standby pod to claim it into a pool, and
  delete a claimed pod to release it (it drains on SIGTERM).
- EndpointSlices: list and watch the gateway admin Service's endpoints (a reflector) to poll
  every gateway pod.
- Events (events.k8s.io): record what it did; a repeated event is patched as a series.
No access to Secrets: worker pods reference the ticket key Secret by name.
*/}}
{{- define "quiver.operator.rules" -}}
- apiGroups: ["quiver.dev"]
  resources: ["querypools"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["quiver.dev"]
  resources: ["querypools/status"]
  verbs: ["patch"]
- apiGroups: ["quiver.dev"]
  resources: ["querypools/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "patch", "delete"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
