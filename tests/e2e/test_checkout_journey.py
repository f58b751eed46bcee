"""A customer's checkout over real HTTP against the local runner and its in-process chain."""

from __future__ import annotations

import json

from tests.e2e.conftest import Local

OFFER = "gemini-api-key"


def _post(local: Local, path: str, body: dict[str, object], **headers: str) -> tuple[int, dict[str, object]]:
    answer = local.request("POST", path, body=json.dumps(body).encode(), key=headers.get("key"))
    return answer.status, answer.json()


def test_wallet_pay_confirm_finalize_read_and_top_up(local: Local) -> None:
    status, wallet = _post(
        local, f"/offer/{OFFER}/checkout/wallet/create", {"chain": "devchain", "token": "USDC"}
    )
    assert status == 201, wallet
    assert wallet["min_target_balance"] == "20.000000000" and wallet["confirmations_required"] == 3
    verify_path = f"/offer/{OFFER}/checkout/wallet/{wallet['wallet_id']}/verify"

    status, faucet = _post(local, "/dev/faucet", {"token": "USDC", "to": wallet["address"], "amount": "20"})
    assert status == 200, faucet
    status, report = _post(local, verify_path, {})
    assert (status, report["status"], report["pending_received"]) == (200, "partially_paid", "20.000000000")

    status, refused = _post(
        local,
        f"/offer/{OFFER}/checkout/finalize",
        {
            "wallet_id": wallet["wallet_id"],
            "officex_purchase_id": "P1",
            "customer_org_id": "D1",
            "customer_user_id": "U1",
        },
    )
    assert status == 402, refused

    _post(local, "/dev/mine", {"blocks": 3})
    status, report = _post(local, verify_path, {})
    assert (status, report["status"], report["remaining"]) == (200, "paid", "0.000000000")

    finalize_body = {
        "wallet_id": wallet["wallet_id"],
        "officex_purchase_id": "P1",
        "customer_org_id": "D1",
        "customer_user_id": "U1",
    }
    answer = local.request(
        "POST", f"/offer/{OFFER}/checkout/finalize", body=json.dumps(finalize_body).encode()
    )
    assert answer.status == 201, answer
    purchase = answer.json()
    assert purchase["balance"] == "20.000000000"

    read = local.request(
        "GET", f"/purchase/{purchase['purchase_id']}", key=purchase["customer_check_billing_api_key"]
    )
    assert read.status == 200 and read.json()["deposit"]["address"] == wallet["address"]

    _post(local, "/dev/faucet", {"token": "USDC", "to": wallet["address"], "amount": "5.5"})
    _post(local, "/dev/mine", {"blocks": 3})
    topup_path = f"/purchase/{purchase['purchase_id']}/verify-topup"
    customer_key = str(purchase["customer_check_billing_api_key"])
    status, topup = _post(local, topup_path, {}, key=customer_key)
    assert (status, topup["credited_total"], topup["balance"]) == (200, "5.500000000", "25.500000000")
    status, again = _post(local, topup_path, {}, key=customer_key)
    assert (status, again["credited"], again["balance"]) == (200, [], "25.500000000")
    status, wrong = _post(local, topup_path, {}, key=str(purchase["vendor_update_billing_api_key"]))
    assert status == 401, wrong
