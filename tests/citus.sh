#!/usr/bin/env bash
# `make test-citus`: the integration suite on a Citus cluster (docs/scaling.md).
# With CITUS_URL (a coordinator's URL, database postgres, its workers registered there): that
# cluster. Without: a local one, a coordinator and 2 workers on CITUS_PORT (9700) and the next two
# ports, made with ../shared/citus/cluster.sh (CITUS_SHARED; Citus must be installed into the
# machine's PostgreSQL 15: ../shared/citus/build.sh) and stopped at the end. The session makes
# its own database on every node (tests/conftest.py). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PY:-.venv/bin/python}
if [ -z "${CITUS_URL:-}" ]; then
  shared=${CITUS_SHARED:-../shared/citus}
  if [ ! -x "$shared/cluster.sh" ]; then
    echo "test-citus: set CITUS_URL, or provide $shared/cluster.sh" >&2
    exit 2
  fi
  dir=$(mktemp -d "${TMPDIR:-/tmp}/orderly-citus.XXXXXX")
  trap '"$shared/cluster.sh" stop "$dir" || true; rm -rf "$dir"' EXIT
  CITUS_URL=$("$shared/cluster.sh" start "$dir" "${CITUS_PORT:-9700}" 2 | tail -1)
  # The tests that fail a node (tests/citus_cluster.py) need the cluster's folder and tooling.
  export TEST_CITUS_DIR=$dir TEST_CITUS_SHARED=$shared
elif [ -n "${CITUS_DIR:-}" ]; then
  # A cluster of cluster.sh's started beforehand: its folder lets the tests stop its nodes.
  export TEST_CITUS_DIR=$CITUS_DIR TEST_CITUS_SHARED=${CITUS_SHARED:-../shared/citus}
fi
echo "Citus cluster: $CITUS_URL"
# The integration suite and the Citus fault seed, unless the arguments name tests of their own.
paths=(tests/integration tests/faults/test_under_faults.py)
for arg in "$@"; do [[ $arg == tests/* ]] && paths=(); done
TEST_CITUS_URL=$CITUS_URL "$py" -m pytest "${paths[@]}" "$@"
