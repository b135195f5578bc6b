"""S3 and Textract without AWS: moto in this process, the Textract simulator on top.

Needs the `harness` extra (moto). Credentials are moto's fake ones, set for the
block and restored afterwards, so nothing here can reach a real account.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fakes.textract_sim import TextractSimulator
from pipeline.adapters.aws import build_client
from pipeline.harness.scenarios.cloud import FAKE_AWS_ENV, REGION

#: The bucket `mocked_aws` creates.
BUCKET = "docpipe-test"
#: Variables that could point boto3 at a real account; unset inside the block.
_REAL_AWS_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_ENDPOINT_URL")


@dataclass(frozen=True)
class MockedAws:
    bucket: str
    region: str

    def client(self, service: str, *, max_attempts: int = 1) -> Any:
        """A boto3 client for `service` on the mocked account (no retries by default)."""
        return build_client(
            service, region=self.region, endpoint_url=None, max_attempts=max_attempts
        )


@contextmanager
def mocked_aws(bucket: str = BUCKET) -> Iterator[MockedAws]:
    """moto's `mock_aws` with fake credentials and one empty bucket."""
    from moto import mock_aws

    names = (*FAKE_AWS_ENV, *_REAL_AWS_ENV)
    saved = {name: os.environ.get(name) for name in names}
    for name in _REAL_AWS_ENV:
        os.environ.pop(name, None)
    os.environ.update(FAKE_AWS_ENV)
    try:
        with mock_aws():
            aws = MockedAws(bucket=bucket, region=REGION)
            aws.client("s3").create_bucket(Bucket=bucket)
            yield aws
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def simulated_textract(
    bucket: str = BUCKET, *, polls_until_done: int = 1, max_results: int = 1000
) -> Iterator[tuple[MockedAws, TextractSimulator]]:
    """`mocked_aws` with the Textract simulator installed (it reads the PDFs put in S3)."""
    with (
        mocked_aws(bucket) as aws,
        TextractSimulator(polls_until_done=polls_until_done, max_results=max_results) as sim,
    ):
        yield aws, sim
