"""The `sim-cloud` adapter profile: the production adapters against local simulators.

moto's S3 with the Textract simulator (fakes/textract_sim.py) behind a moto
server on loopback, and the OpenAI-compatible HTTP fake on loopback. The
shipped `S3BlobStore`, `TextractOcrEngine` and `OpenAIEntityExtractor` run
unchanged - in this process (eager mode) and in the worker processes (broker
mode), which reach the simulators over loopback. `s3_blobs` is the S3 part
alone, for workers deployed as separate hosts (no shared filesystem).
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

BUCKET = "docpipe-sim-cloud"
REGION = "us-east-1"
#: boto3 needs credentials even for moto; these never leave loopback.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@contextmanager
def fake_aws_credentials() -> Iterator[None]:
    """FAKE_AWS_ENV in this process's environment (workers inherit it), restored afterwards."""
    saved = {name: os.environ.get(name) for name in FAKE_AWS_ENV}
    os.environ.update(FAKE_AWS_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _bucket_on(endpoint: str) -> None:
    from pipeline.adapters.aws import build_client

    client = build_client("s3", region=REGION, endpoint_url=endpoint, max_attempts=1)
    client.create_bucket(Bucket=BUCKET)


@contextmanager
def s3_blobs(prefix: str) -> Iterator[dict[str, Any]]:
    """Only the blobs on S3 (a moto server on loopback); OCR and LLM stay what they were.

    Workers deployed as separate hosts share no folder with the intake, so the
    stored files must live where both reach them over the network.
    """
    from fakes.textract_sim import moto_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with fake_aws_credentials(), moto_server() as endpoint:
        _bucket_on(endpoint)
        yield {
            "blob_url": f"s3://{BUCKET}/{prefix}",
            "aws_endpoint_url": endpoint,
            "aws_region": REGION,
        }


@contextmanager
def sim_cloud(prefix: str, *, polls_until_done: int) -> Iterator[dict[str, Any]]:
    """Start the simulators; yields the settings that point docpipe at them."""
    from fakes.openai_http import FakeOpenAI, FakeOpenAIServer
    from fakes.textract_sim import TextractSimulator, moto_server

    # moto's server logs every request at INFO; a scenario report has no use for that.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    api_key = f"sk-sim-{secrets.token_hex(8)}"
    with fake_aws_credentials(), ExitStack() as stack:
        simulator = TextractSimulator(polls_until_done=polls_until_done)
        endpoint = stack.enter_context(moto_server(simulator))
        llm = stack.enter_context(FakeOpenAIServer(FakeOpenAI(api_key=api_key)))
        _bucket_on(endpoint)
        yield {
            "ocr": "textract",
            "blob_url": f"s3://{BUCKET}/{prefix}",
            "aws_endpoint_url": endpoint,
            "aws_region": REGION,
            "llm": "openai",
            "openai_base_url": llm.base_url,
            "openai_api_key": api_key,
        }
