"""ProxyTargets: a (method, target) judgement remembered per pair, never per target alone,
and never a refusal."""

from __future__ import annotations

import pytest

from broker.errors import BadRequest, MethodNotAllowed, NotFound
from broker.proxy.allowlist import SDK_PREFIXES, RouteTable
from broker.proxy.targets import ProxyTargets

ORIGIN = "https://api.example.test/base"


def targets() -> ProxyTargets:
    return ProxyTargets(ORIGIN, SDK_PREFIXES, RouteTable())


def test_a_remembered_target_is_judged_again_for_another_method() -> None:
    judged = targets()
    for _ in range(2):  # the second round is answered from the memo
        assert str(judged.upstream_url("GET", "/checkout/invoice")) == (
            f"{ORIGIN}/checkout/invoice"
        )
        with pytest.raises(MethodNotAllowed):
            judged.upstream_url("POST", "/checkout/invoice")  # GET-only on the allowlist
        with pytest.raises(MethodNotAllowed):
            judged.upstream_url("HEAD", "/checkout/invoice")  # never proxied


@pytest.mark.parametrize(
    ("target", "refusal"),
    [
        ("/checkout/../admin", BadRequest),
        ("/checkout/%2e%2e/invoice", BadRequest),
        ("/checkout/invoice%2fpdf-link", BadRequest),
        ("/elsewhere/invoice", NotFound),
        ("/checkout/not-a-route", NotFound),
    ],
)
def test_a_refused_target_is_refused_every_time(target: str, refusal: type[Exception]) -> None:
    judged = targets()
    for _ in range(3):
        with pytest.raises(refusal):
            judged.upstream_url("GET", target)


def test_the_upstream_url_keeps_path_and_query_byte_for_byte() -> None:
    judged = targets()
    target = "/checkout/v1/payment-methods?types=card,bank&q=%41%20b"
    for _ in range(2):
        url = judged.upstream_url("GET", target)
        assert str(url) == ORIGIN + target
        assert url.raw_path == "/base/checkout/v1/payment-methods"
        assert url.raw_query_string == "types=card,bank&q=%41%20b"


def test_a_long_target_is_judged_every_time_and_still_right() -> None:
    judged = targets()
    long_query = "q=" + "a" * 400  # past the remembered length
    for _ in range(2):
        url = judged.upstream_url("GET", f"/checkout/invoice?{long_query}")
        assert url.raw_query_string == long_query
    with pytest.raises(MethodNotAllowed):
        judged.upstream_url("DELETE", f"/checkout/invoice?{long_query}")
