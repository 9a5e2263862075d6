"""Which tokeniser counts which model for /v1/messages/count_tokens, and the chat accounting."""

from __future__ import annotations

import pytest

from llmgw.errors import InvalidRequest
from llmgw.providers import tokens


@pytest.mark.parametrize(("model", "encoding"), [
    ("gpt-4o-mini", "o200k_base"), ("gpt-4.1-nano", "o200k_base"), ("gpt-5", "o200k_base"), ("o3-mini", "o200k_base"),
    ("chatgpt-4o-latest", "o200k_base"), ("gpt-4-turbo", "cl100k_base"), ("gpt-3.5-turbo", "cl100k_base"),
    ("gpt-oss-120b", "o200k_harmony"), ("meta-llama/Llama-3.1-8B-Instruct", "llama3"), ("Qwen/Qwen3-8B", "qwen3"),
    ("mistral-large", None), ("deepseek-r1", None),
])
def test_encoding_by_model_family(model, encoding):
    assert tokens.encoding_name(model) == encoding


async def test_count_uses_the_real_tokeniser_and_refuses_images():
    quicktok = pytest.importorskip("quicktok")
    enc = quicktok.get_encoding("cl100k_base")
    chat = {"messages": [{"role": "user", "content": "Hello, tokeniser!"}]}
    assert await tokens.count("gpt-4", chat, "p") == 3 + 3 + len(enc.encode("user")) + len(enc.encode("Hello, tokeniser!"))
    with pytest.raises(InvalidRequest) as e:
        await tokens.count("gpt-4", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "p")
    assert e.value.code == "uncountable_content" and e.value.param == "messages[0].content[0]"
    with pytest.raises(InvalidRequest) as e:
        await tokens.count("mistral-large", chat, "p")
    assert e.value.code == "tokenizer_unknown" and "p/mistral-large" in e.value.message
