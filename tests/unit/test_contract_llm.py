"""The EntityExtractor contract on every implementation: the rule-based extractor and the
OpenAI adapter through the real SDK against the HTTP-level fake."""

from __future__ import annotations

import httpx2
import pytest

from fakes.openai_http import FakeOpenAI
from pipeline.adapters.openai_llm import OpenAIEntityExtractor, create_openai_client
from pipeline.adapters.rule_based_llm import RuleBasedEntityExtractor
from pipeline.errors import TransientError
from pipeline.testing.contracts.llm import EntityExtractorContract, ExtractorSetup
from pipeline.testing.faults import ScriptedFaults

API_KEY = "sk-test-not-a-real-key"


class TestRuleBasedExtractor(EntityExtractorContract):
    @pytest.fixture
    def llm(self) -> ExtractorSetup:
        faults = ScriptedFaults()

        def throttle_next(retry_after_s: float) -> None:
            error = TransientError("throttled", retry_after=retry_after_s)
            faults.fail_once("llm", "extract", error)

        return ExtractorSetup(RuleBasedEntityExtractor(faults=faults), throttle_next)


class TestOpenAIAdapterOnTheHttpFake(EntityExtractorContract):
    @pytest.fixture
    def llm(self) -> ExtractorSetup:
        fake = FakeOpenAI(api_key=API_KEY)
        client = create_openai_client(
            api_key=API_KEY,
            base_url="http://127.0.0.1:9/v1",  # never contacted: the transport answers
            timeout_s=5,
            http_client=httpx2.Client(transport=httpx2.MockTransport(fake.handler)),
        )

        def throttle_next(retry_after_s: float) -> None:
            fake.retry_after_s = retry_after_s
            fake.script(["rate_limit"])

        return ExtractorSetup(
            OpenAIEntityExtractor(client, "gpt-4o-mini", timeout_s=5), throttle_next
        )
