"""kube.py reads the API's answers undecoded (no model objects: CPU), so it checks their
status itself: an error answer raises ApiException, as a decoded call would."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from embedfleet_operator.kube import _done


class Answer:
    def __init__(self, status: int, reason: str, body: bytes) -> None:
        self.status, self.reason, self.body, self.headers = status, reason, body, {}
        self.read_count = 0

    async def read(self) -> bytes:
        self.read_count += 1
        return self.body


def test_a_success_is_read_to_its_end() -> None:
    answer = Answer(200, "OK", b"{}")
    asyncio.run(_done(answer))
    assert answer.read_count == 1  # the connection goes back to the pool


@pytest.mark.parametrize("status", [404, 409, 422, 500])
def test_an_error_answer_raises_with_the_apiservers_words(status: int) -> None:
    answer = Answer(status, "Refused", b'{"message": "spec.template: bad"}')
    with pytest.raises(ApiException) as raised:
        asyncio.run(_done(answer))
    assert raised.value.status == status
    assert "spec.template: bad" in raised.value.body
