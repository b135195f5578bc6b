#!/usr/bin/env bash
# A project outside this repository that tests itself with docpipe's testing API.
#
#   scripts/downstream_example.sh [DIR]     (default: a new folder under /tmp)
#
# It makes DIR/.venv, installs docpipe from this checkout with the [testing] extra
# (pinned by constraints.txt), writes one scenario of its own and one test module
# (the BlobStore contract on its own store, and the private stack with a worker
# killed by kill -9), then runs `pytest` there: the plugin comes from docpipe's
# pytest11 entry point, nothing from this repository's tests/.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d /tmp/docpipe-downstream.XXXXXX)}
PYTHON=${PYTHON:-python3}
mkdir -p "$WORK/scenarios" "$WORK/tests"

echo "== $WORK: venv and pip install '$REPO[testing]'"
"$PYTHON" -m venv "$WORK/.venv"
"$WORK/.venv/bin/pip" install --quiet --upgrade pip
"$WORK/.venv/bin/pip" install --quiet -c "$REPO/constraints.txt" "$REPO[testing]" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

cat > "$WORK/pytest.ini" <<'EOF'
[pytest]
addopts = --strict-markers -ra
filterwarnings =
    error
    ignore::DeprecationWarning:celery.*
    ignore::DeprecationWarning:kombu.*
EOF

cat > "$WORK/scenarios/throttled_llm_batch.yaml" <<'EOF'
name: throttled_llm_batch
description: >
  Our nightly batch: five letters while the LLM throttles the first three calls.
  Every letter completes, nothing is dead-lettered, and the throttling was retried.
seed: 7
modes: [eager, broker]
documents:
  - generate: {type: txt, name: "letter-{i}.txt", count: 5}
faults:
  - {port: llm, operation: extract, kind: throttle, first: 3, retry_after_s: 0.1}
expect:
  documents:
    - match: "letter-*.txt"
      status: completed
  dead_letters: {count: 0}
EOF

cat > "$WORK/tests/test_our_stack.py" <<'EOF'
"""Our project's tests, on docpipe's testing API."""

from pathlib import Path

import pytest

from pipeline.domain.models import Status
from pipeline.testing.contracts.blob_store import BlobStoreContract
from pipeline.testing.stack import PrivateStack

LETTER = "Dear Ms. Holloway, Meridian Capital Partners LLC paid $45,000 on March 3, 2023.\n"


class VersionedBlobStore:
    """Our own BlobStore: keeps every version, answers the newest."""

    def __init__(self) -> None:
        self.versions: dict[str, list[bytes]] = {}

    def put(self, key: str, data: bytes) -> None:
        self.versions.setdefault(key, []).append(bytes(data))

    def get(self, key: str) -> bytes:
        return self.versions[key][-1]

    def size(self, key: str) -> int:
        return len(self.get(key))

    def delete(self, key: str) -> None:
        self.versions.pop(key, None)


class TestVersionedBlobStore(BlobStoreContract):
    @pytest.fixture
    def blob_store(self) -> VersionedBlobStore:
        return VersionedBlobStore()


@pytest.mark.integration
def test_letters_complete_after_a_worker_was_killed(
    docpipe_stack: PrivateStack, tmp_path: Path
) -> None:
    workers = docpipe_stack.start_workers()
    docpipe_stack.kill_worker(workers[-1])  # kill -9: no shutdown, no acks
    docpipe_stack.start_workers()  # a replacement, as a supervisor would start
    letters = []
    for n in range(3):
        path = tmp_path / f"letter-{n}.txt"
        path.write_text(LETTER)
        letters.append(docpipe_stack.submit(path))

    statuses = docpipe_stack.wait_until_terminal(letters)

    assert set(statuses.values()) == {Status.COMPLETED}
EOF

cd "$WORK"
echo "== $WORK: pytest"
set +e
.venv/bin/pytest -v -p no:cacheprovider scenarios tests
status=$?
set -e
echo "== pytest exit code: $status"
exit "$status"
