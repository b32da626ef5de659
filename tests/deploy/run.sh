#!/usr/bin/env bash
# Installs the deploy-test tools into .venv (tests/deploy/install-tools.sh) and runs the tests:
# the Helm chart rendered by Helm's engine, the kustomize overlays, schema validation, RBAC,
# security contexts, and the CRD copies. Usage: tests/deploy/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/../.."
tests/deploy/install-tools.sh
.venv/bin/python -m pytest tests/deploy "$@"
