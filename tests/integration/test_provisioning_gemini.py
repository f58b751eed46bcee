"""The Gemini API key provisioner against a local fake of Google (token endpoint + API Keys API v2).

Everything goes over real HTTP to 127.0.0.1: google-auth signs the JWT bearer grant, the fake
verifies it, and the API Keys client speaks the REST shapes (keys, long-running operations,
Google's error bodies) that apikeys.googleapis.com speaks.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID, uuid4

import boto3
import pytest
from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS
from google.auth import _exponential_backoff as google_auth_backoff
from google.auth import _helpers as google_auth_helpers
from moto import mock_aws

from billing.adapters.google.api_keys import ApiKeysClient, is_valid_key_id
from billing.adapters.google.credentials import ServiceAccountTokens
from billing.adapters.google.errors import (
    GoogleNotFound,
    GoogleRequestRejected,
    GoogleUnavailable,
)
from billing.adapters.google.gemini_provisioner import (
    BLOCKED_CALLER_IP,
    GEMINI_API_SERVICE,
    GeminiKeyProvisioner,
    active_restrictions,
    gemini_key_id,
    gemini_key_provisioner_from,
    suspended_restrictions,
)
from billing.domain.catalog import Offer, OfferKind
from billing.domain.provisioning import Provisioned, ProvisioningFailed, ResourceRef
from billing.settings import google_settings_from
from tests.conftest import REPO_ROOT
from tests.fakes.google_api_keys import FakeGoogle, FakeServiceAccount, new_service_account
from tests.fakes.step_log import MemoryStepLog, SimulatedCrash
from vendorctl.cli import read_catalog_file

PROJECT = "officex-test"
CREATE = r"/keys$"


@pytest.fixture(scope="module")
def service_account() -> FakeServiceAccount:
    return new_service_account(PROJECT)


@pytest.fixture
def google(service_account: FakeServiceAccount) -> Iterator[FakeGoogle]:
    with FakeGoogle(service_account, project_id=PROJECT) as fake:
        yield fake


def tokens_for(google: FakeGoogle, service_account: FakeServiceAccount) -> ServiceAccountTokens:
    return ServiceAccountTokens(lambda: service_account.info, token_uri=google.token_uri, timeout_s=5)


def client_for(google: FakeGoogle, tokens: ServiceAccountTokens, **options: Any) -> ApiKeysClient:
    options = {"first_poll_delay_s": 0.001, "max_poll_delay_s": 0.01, **options}
    return ApiKeysClient(PROJECT, tokens, base_url=google.base_url, timeout_s=5, **options)


def provisioner_for(
    google: FakeGoogle,
    service_account: FakeServiceAccount,
    *,
    operation_timeout_s: float = 5.0,
    key_service_account: str | None = None,
) -> GeminiKeyProvisioner:
    client = client_for(google, tokens_for(google, service_account))
    return GeminiKeyProvisioner(
        client, operation_timeout_s=operation_timeout_s, key_service_account=key_service_account
    )


@pytest.fixture
def provisioner(google: FakeGoogle, service_account: FakeServiceAccount) -> GeminiKeyProvisioner:
    return provisioner_for(google, service_account)


def gemini_offer() -> Offer:
    catalog = read_catalog_file(REPO_ROOT / "catalog" / "catalog.yaml")
    return next(offer for offer in catalog.offers if offer.kind is OfferKind.GEMINI_API_KEY)


def new_resource(purchase_id: UUID | None = None) -> ResourceRef:
    """What the worker hands over: the provisioner's own ``resource_for``."""
    provisioner = GeminiKeyProvisioner(_UNUSED_CLIENT, tags={"officex_vendor": "acme"})
    return provisioner.resource_for(purchase_id or uuid4(), GEMINI_OFFER)


def only_key(google: FakeGoogle) -> Any:
    keys = google.visible_keys()
    assert len(keys) == 1, f"expected exactly one key, found {sorted(keys)}"
    return next(iter(keys.values()))


# --- the lifecycle ---------------------------------------------------------------------------


def test_gemini_key_lifecycle_against_the_fake_google_server(
    google: FakeGoogle, provisioner: GeminiKeyProvisioner
) -> None:
    resource = new_resource()

    provisioned = provisioner.provision(resource, MemoryStepLog())

    key = only_key(google)
    assert key.key_id == gemini_key_id(resource.purchase_id)
    assert provisioned.credentials == {"api_key": key.key_string}
    assert key.restrictions == {"apiTargets": [{"service": GEMINI_API_SERVICE}]}
    assert key.annotations == {
        "officex_purchase_id": str(resource.purchase_id),
        "officex_offer_id": GEMINI_OFFER.id,
        "officex_vendor": "acme",
    }
    assert key.display_name == f"OfficeX purchase {resource.purchase_id}"
    assert key.delete_time is None
    assert provisioned.summary == {
        "key_id": key.key_id,
        "key_name": f"projects/{PROJECT}/locations/global/keys/{key.key_id}",
        "project": PROJECT,
        "uid": key.uid,
        "display_name": key.display_name,
        "api_targets": [GEMINI_API_SERVICE],
        "key_type": "standard",
        "bound_service_account": None,
    }
    # the create operation was not done on its first poll, and was polled until it was
    create_operation = next(op for op in google.operations.values() if op.kind == "create")
    assert create_operation.done and create_operation.polls == 2

    provisioner.suspend(resource, MemoryStepLog())
    assert key.restrictions == {
        "apiTargets": [{"service": GEMINI_API_SERVICE}],
        "serverKeyRestrictions": {"allowedIps": [BLOCKED_CALLER_IP]},
    }
    assert key.delete_time is None  # suspended, not deleted: it survives any grace period

    provisioner.resume(resource, MemoryStepLog())
    assert key.restrictions == active_restrictions()
    assert key.delete_time is None

    provisioner.delete(resource, MemoryStepLog())
    assert key.delete_time is not None  # soft-deleted: restorable for 30 days
    assert google.calls_to("DELETE", r"/keys/") == 1

    # deleting again (a replayed action) changes nothing; after the purge it is still success
    provisioner.delete(resource, MemoryStepLog())
    assert google.calls_to("DELETE", r"/keys/") == 1
    google.purge(key.key_id)
    provisioner.delete(resource, steps := MemoryStepLog())
    assert steps.outcome("done") == {"key_id": key.key_id, "state": "absent", "purged_after_days": 30}
    assert google.visible_keys() == {}


def test_provision_replayed_after_done_hands_over_the_same_key_again(
    google: FakeGoogle, provisioner: GeminiKeyProvisioner
) -> None:
    resource = new_resource()
    steps = MemoryStepLog()
    first = provisioner.provision(resource, steps)

    again = provisioner.provision(resource, steps)

    assert again == first
    assert google.calls_to("POST", CREATE) == 1
    assert len(google.visible_keys()) == 1


def test_keys_can_be_bound_to_a_service_account_as_gemini_auth_keys(
    google: FakeGoogle, service_account: FakeServiceAccount
) -> None:
    bound = f"gemini-keys@{PROJECT}.iam.gserviceaccount.com"
    provisioner = provisioner_for(google, service_account, key_service_account=bound)

    provisioned = provisioner.provision(new_resource(), MemoryStepLog())

    key = only_key(google)
    assert key.service_account_email == bound
    assert provisioned.summary["key_type"] == "auth"
    assert provisioned.summary["bound_service_account"] == bound
    assert key.restrictions == active_restrictions()  # restricted anyway


# --- failures and retries --------------------------------------------------------------------


def test_an_operation_that_fails_is_retried_from_the_step_log_and_makes_one_key(
    google: FakeGoogle, provisioner: GeminiKeyProvisioner
) -> None:
    google.fail_next_operation("create", code=14, message="Backend temporarily unavailable.")
    resource = new_resource()
    steps = MemoryStepLog()

    with pytest.raises(ProvisioningFailed, match="UNAVAILABLE"):
        provisioner.provision(resource, steps)

    assert steps.outcome("create_key") is not None  # the request is remembered…
    assert steps.outcome("key_ready") is None  # …but the key is not there
    assert google.visible_keys() == {}

    provisioned = provisioner.provision(resource, steps)  # the worker's retry

    key = only_key(google)
    assert provisioned.credentials["api_key"] == key.key_string
    assert google.calls_to("POST", CREATE) == 2  # the failed operation was asked for again, once
    assert [op.error is not None for op in google.operations.values() if op.kind == "create"] == [True, False]


def test_a_503_on_the_first_call_fails_retryably_and_the_rerun_succeeds(
    google: FakeGoogle, provisioner: GeminiKeyProvisioner
) -> None:
    google.fail_next_http("POST", CREATE, status="UNAVAILABLE")
    resource = new_resource()
    steps = MemoryStepLog()

    with pytest.raises(GoogleUnavailable, match="HTTP 503 UNAVAILABLE") as failure:
        provisioner.provision(resource, steps)
    assert isinstance(failure.value, ProvisioningFailed)
    assert steps.outcomes == {}

    provisioner.provision(resource, steps)
    only_key(google)


def test_a_lost_create_answer_is_adopted_not_duplicated(
    google: FakeGoogle, provisioner: GeminiKeyProvisioner
) -> None:
    """Google carried out keys.create, but the answer never arrived (the worker sees a network error)."""
    google.settle_s = 1.0  # the orphaned operation finishes by itself, like Google's
    google.lose_next_response("POST", CREATE)
    resource = new_resource()
    steps = MemoryStepLog()

    with pytest.raises(ProvisioningFailed, match="network error"):
        provisioner.provision(resource, steps)
    assert steps.outcomes == {}

    # right away: the id is taken (ALREADY_EXISTS) but the key is still being created
    with pytest.raises(ProvisioningFailed, match="not visible yet"):
        provisioner.provision(resource, steps)

    wait_until(lambda: bool(google.visible_keys()))
    provisioned = provisioner.provision(resource, steps)

    key = only_key(google)
    assert provisioned.credentials["api_key"] == key.key_string
    assert steps.outcome("create_key") == {"key_id": key.key_id, "operation": None}


def test_an_operation_still_running_at_the_deadline_is_polled_again_on_the_rerun(
    google: FakeGoogle, service_account: FakeServiceAccount
) -> None:
    google.polls_until_done = 1_000
    provisioner = provisioner_for(google, service_account, operation_timeout_s=0.05)
    resource = new_resource()
    steps = MemoryStepLog()

    with pytest.raises(ProvisioningFailed, match="still running"):
        provisioner.provision(resource, steps)
    recorded = steps.outcome("create_key")
    assert recorded is not None and recorded["operation"].startswith("operations/")

    google.operations[recorded["operation"]].polls_until_done = 1
    provisioner.provision(resource, steps)

    only_key(google)
    assert google.calls_to("POST", CREATE) == 1  # waited for the same operation, never asked twice


def test_operation_polling_backs_off_and_is_bounded(
    google: FakeGoogle, service_account: FakeServiceAccount
) -> None:
    google.polls_until_done = 1_000
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    client = client_for(
        google,
        tokens_for(google, service_account),
        sleep=sleep,
        clock=lambda: now[0],
        first_poll_delay_s=0.5,
        max_poll_delay_s=5.0,
    )
    operation = client.create_key(
        "officex-backoff", display_name="backoff", restrictions=active_restrictions()
    )

    with pytest.raises(GoogleUnavailable, match="still running after 20 s"):
        client.wait_for(operation, timeout_s=20)

    assert sleeps == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 2.5]  # doubling, capped, never past the deadline
    assert google.operations[operation.name].polls == len(sleeps)


def test_refusals_are_not_retryable_and_say_what_to_fix(
    google: FakeGoogle, provisioner: GeminiKeyProvisioner
) -> None:
    resource = new_resource()
    google.fail_next_http(
        "POST", CREATE, status="PERMISSION_DENIED", message="Permission 'apikeys.keys.create' denied."
    )
    with pytest.raises(GoogleRequestRejected, match=r"HTTP 403 .*roles/serviceusage\.apiKeysAdmin") as denied:
        provisioner.provision(resource, MemoryStepLog())
    assert not isinstance(denied.value, ProvisioningFailed)
    assert denied.value.http_status == 403 and denied.value.status == "PERMISSION_DENIED"

    google.fail_next_http(
        "POST",
        CREATE,
        status="PERMISSION_DENIED",
        message="API Keys API has not been used.",
        reason="SERVICE_DISABLED",
    )
    with pytest.raises(GoogleRequestRejected, match=r"enable apikeys\.googleapis\.com"):
        provisioner.provision(resource, MemoryStepLog())

    google.fail_next_operation("create", code=3, message="Invalid restrictions.")
    with pytest.raises(GoogleRequestRejected, match="INVALID_ARGUMENT") as invalid:
        provisioner.provision(resource, MemoryStepLog())
    assert not isinstance(invalid.value, ProvisioningFailed)


def test_quota_and_server_errors_are_retryable(google: FakeGoogle, provisioner: GeminiKeyProvisioner) -> None:
    resource = new_resource()
    for status in ("RESOURCE_EXHAUSTED", "INTERNAL", "ABORTED"):
        google.fail_next_http("POST", CREATE, status=status)
        with pytest.raises(ProvisioningFailed, match=status):
            provisioner.provision(resource, MemoryStepLog())
    assert google.visible_keys() == {}


# --- crashes between steps ---------------------------------------------------------------------


def _provisioned(provisioner: GeminiKeyProvisioner, resource: ResourceRef) -> None:
    provisioner.provision(resource, MemoryStepLog())


def _suspended(provisioner: GeminiKeyProvisioner, resource: ResourceRef) -> None:
    _provisioned(provisioner, resource)
    provisioner.suspend(resource, MemoryStepLog())


ACTIONS: dict[str, tuple[Callable[[GeminiKeyProvisioner, ResourceRef], None] | None, list[str]]] = {
    "provision": (None, ["create_key", "key_ready", "done"]),
    "suspend": (_provisioned, ["update_restrictions", "done"]),
    "resume": (_suspended, ["update_restrictions", "done"]),
    "delete": (_provisioned, ["delete_key", "done"]),
}
CRASH_POINTS = [
    (action, step, moment)
    for action, (_, step_names) in ACTIONS.items()
    for step in step_names
    for moment in ("before", "after")
]


@pytest.mark.parametrize(("action", "step", "moment"), CRASH_POINTS)
def test_a_crash_at_any_step_then_a_rerun_converges_to_one_key_in_the_same_state(
    google: FakeGoogle, provisioner: GeminiKeyProvisioner, action: str, step: str, moment: str
) -> None:
    google.settle_s = 0.0  # work the dead process left running finishes meanwhile
    resource = new_resource()
    setup, _ = ACTIONS[action]
    if setup is not None:
        setup(provisioner, resource)
    steps = MemoryStepLog()
    steps.crash_at = (step, moment)
    run = getattr(provisioner, action)

    with pytest.raises(SimulatedCrash):
        run(resource, steps)
    result = run(resource, steps)  # the worker runs the action again with its step log

    key = only_key(google)
    assert [op.kind for op in google.operations.values()].count("create") == 1
    assert steps.outcome("done") is not None
    if action == "provision":
        assert isinstance(result, Provisioned) and result.credentials == {"api_key": key.key_string}
    expected = {
        "provision": (active_restrictions(), False),
        "suspend": (suspended_restrictions(), False),
        "resume": (active_restrictions(), False),
        "delete": (active_restrictions(), True),
    }[action]
    assert (key.restrictions, key.delete_time is not None) == expected


# --- suspend / resume / delete edges --------------------------------------------------------------


@pytest.mark.parametrize("get_shows_deleted_keys", [True, False])
def test_resume_undeletes_a_key_deleted_by_hand_and_keeps_its_string(
    google: FakeGoogle, provisioner: GeminiKeyProvisioner, get_shows_deleted_keys: bool
) -> None:
    google.hide_deleted_keys = not get_shows_deleted_keys
    resource = new_resource()
    provisioned = provisioner.provision(resource, MemoryStepLog())
    provisioner.suspend(resource, MemoryStepLog())
    google.delete_now(gemini_key_id(resource.purchase_id))

    provisioner.resume(resource, MemoryStepLog())

    key = only_key(google)
    assert key.delete_time is None
    assert key.restrictions == active_restrictions()
    assert key.key_string == provisioned.credentials["api_key"]


@pytest.mark.parametrize("get_shows_deleted_keys", [True, False])
def test_resume_after_the_purge_is_an_alert_not_a_retry(
    google: FakeGoogle, provisioner: GeminiKeyProvisioner, get_shows_deleted_keys: bool
) -> None:
    google.hide_deleted_keys = not get_shows_deleted_keys
    resource = new_resource()
    provisioner.provision(resource, MemoryStepLog())
    provisioner.delete(resource, MemoryStepLog())
    google.purge(gemini_key_id(resource.purchase_id))

    with pytest.raises(GoogleNotFound, match="no longer exists") as gone:
        provisioner.resume(resource, MemoryStepLog())
    assert not isinstance(gone.value, ProvisioningFailed)


def test_suspending_or_deleting_a_key_that_never_existed_is_a_no_op(
    google: FakeGoogle, provisioner: GeminiKeyProvisioner
) -> None:
    resource = new_resource()
    provisioner.suspend(resource, suspend_steps := MemoryStepLog())
    provisioner.delete(resource, delete_steps := MemoryStepLog())

    assert suspend_steps.outcome("done") == {"key_id": resource.name, "state": "absent"}
    assert delete_steps.outcome("done") == {
        "key_id": resource.name,
        "state": "absent",
        "purged_after_days": 30,
    }
    assert google.keys == {}


def test_a_suspend_retried_after_a_failed_patch_operation_succeeds(
    google: FakeGoogle, provisioner: GeminiKeyProvisioner
) -> None:
    resource = new_resource()
    provisioner.provision(resource, MemoryStepLog())
    google.fail_next_operation("patch", code=13, message="Internal error.")
    steps = MemoryStepLog()

    with pytest.raises(ProvisioningFailed, match="INTERNAL"):
        provisioner.suspend(resource, steps)
    assert only_key(google).restrictions == active_restrictions()

    provisioner.suspend(resource, steps)
    assert only_key(google).restrictions == suspended_restrictions()


def test_provision_replayed_with_a_fresh_log_adopts_without_undoing_other_actions(
    google: FakeGoogle, provisioner: GeminiKeyProvisioner, service_account: FakeServiceAccount
) -> None:
    resource = new_resource()
    provisioner.provision(resource, MemoryStepLog())
    provisioner.suspend(resource, MemoryStepLog())

    replayed = provisioner.provision(resource, MemoryStepLog())  # e.g. a worker that lost its log

    assert replayed.credentials == {"api_key": only_key(google).key_string}
    assert only_key(google).restrictions == suspended_restrictions()  # still suspended

    provisioner.delete(resource, MemoryStepLog())
    with pytest.raises(GoogleRequestRejected, match="deleted; provisioning does not restore it"):
        provisioner.provision(resource, MemoryStepLog())
    assert only_key(google).delete_time is not None

    # a key someone stripped of its restrictions (Gemini rejects unrestricted keys) is restricted again
    other = new_resource()
    client = client_for(google, tokens_for(google, service_account))
    client.wait_for(client.create_key(other.name, display_name="by hand", restrictions={}), timeout_s=5)
    provisioner.provision(other, MemoryStepLog())
    assert google.keys[other.name].restrictions == active_restrictions()


# --- secrets stay secret ---------------------------------------------------------------------------


def test_credentials_never_reach_the_step_log_errors_or_logs(
    google: FakeGoogle,
    provisioner: GeminiKeyProvisioner,
    service_account: FakeServiceAccount,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("google", "urllib3", "requests"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    resource = new_resource()
    logs: list[MemoryStepLog] = []
    google.fail_next_operation("create")  # one failure on the way, so error text is checked too
    errors: list[str] = []

    provision_steps = MemoryStepLog()
    logs.append(provision_steps)
    try:
        provisioner.provision(resource, provision_steps)
    except ProvisioningFailed as failure:
        errors.append(str(failure))
    provisioned = provisioner.provision(resource, provision_steps)
    for action in (provisioner.suspend, provisioner.resume, provisioner.delete):
        logs.append(steps := MemoryStepLog())
        action(resource, steps)
    google.revoke_tokens()  # forces a 401 and a new grant: more token traffic to leak
    try:
        provisioner.resume(resource, MemoryStepLog())  # on a deleted key: undelete, logged
    except ProvisioningFailed as failure:  # pragma: no cover - not expected
        errors.append(str(failure))

    api_key = provisioned.credentials["api_key"]
    secrets = [api_key, *google.issued_tokens, service_account.info["private_key"].splitlines()[1]]
    recorded = " ".join(steps.dump() for steps in logs)
    captured = capsys.readouterr()
    texts = {
        "step log": recorded,
        "log records": caplog.text + " ".join(json.dumps(r.__dict__, default=str) for r in caplog.records),
        "stdout/stderr": captured.out + captured.err,
        "errors": " ".join(errors),
        "summary": json.dumps(provisioned.summary),
    }
    assert len(google.issued_tokens) == 2 and errors
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret reached the {where}"
    assert "key_ready" in recorded and "Gemini API key ready" in caplog.text + captured.out


def test_a_create_operation_carrying_the_key_string_does_not_keep_it(
    google: FakeGoogle, service_account: FakeServiceAccount
) -> None:
    client = client_for(google, tokens_for(google, service_account))
    google.polls_until_done = 1
    operation = client.wait_for(
        client.create_key("officex-carry", display_name="carry", restrictions=active_restrictions()),
        timeout_s=5,
    )

    key_string = google.keys["officex-carry"].key_string
    assert operation.key is not None and operation.key.uid == google.keys["officex-carry"].uid
    assert key_string not in repr(operation) and key_string not in operation.model_dump_json()


# --- tokens ------------------------------------------------------------------------------------------


def test_access_tokens_are_cached_until_stale_then_refreshed(
    google: FakeGoogle, service_account: FakeServiceAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = tokens_for(google, service_account)

    first = tokens.access_token()
    assert tokens.access_token() == first
    assert len(google.grants) == 1
    grant = google.grants[0]
    assert grant["iss"] == service_account.email
    assert grant["aud"] == "https://oauth2.googleapis.com/token"
    assert grant["scope"] == "https://www.googleapis.com/auth/cloud-platform"

    # 57 minutes later the 1-hour token is within google-auth's refresh margin (3 min 45 s)
    later = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + datetime.timedelta(minutes=57)
    monkeypatch.setattr(google_auth_helpers, "utcnow", lambda: later)
    second = tokens.access_token()

    assert second != first
    assert len(google.grants) == 2
    assert tokens.access_token() == second


def test_a_revoked_token_is_replaced_once_and_the_call_goes_through(
    google: FakeGoogle, service_account: FakeServiceAccount
) -> None:
    client = client_for(google, tokens_for(google, service_account))
    client.wait_for(
        client.create_key("officex-revoked", display_name="r", restrictions=active_restrictions()),
        timeout_s=5,
    )
    google.revoke_tokens()

    assert client.get_key("officex-revoked").display_name == "r"
    assert len(google.grants) == 2

    google.revoke_tokens()
    google.refuse_grants = True  # the key was deleted in IAM: no new token either
    with pytest.raises(GoogleRequestRejected, match="invalid_grant") as refused:
        client.get_key("officex-revoked")
    assert not isinstance(refused.value, ProvisioningFailed)


def test_a_token_endpoint_outage_is_retryable(
    google: FakeGoogle, service_account: FakeServiceAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(google_auth_backoff.time, "sleep", lambda _: None)
    for _ in range(3):  # google-auth tries the token endpoint three times
        google.fail_next_http("POST", r"^/token$", status="UNAVAILABLE")
    tokens = tokens_for(google, service_account)

    with pytest.raises(GoogleUnavailable, match="token endpoint is unavailable"):
        tokens.access_token()
    assert tokens.access_token().startswith("ya29.")


def test_a_malformed_service_account_secret_is_refused_without_quoting_it(google: FakeGoogle) -> None:
    broken = {
        "type": "service_account",
        "client_email": "x@y.iam.gserviceaccount.com",
        "private_key": "SECRET-PEM",
    }
    tokens = ServiceAccountTokens(lambda: broken, token_uri=google.token_uri)

    with pytest.raises(GoogleRequestRejected, match="malformed") as refused:
        tokens.access_token()
    assert "SECRET-PEM" not in str(refused.value) and refused.value.__cause__ is None


# --- wiring -------------------------------------------------------------------------------------------


def test_settings_and_the_factory_read_the_key_from_secrets_manager(
    google: FakeGoogle, service_account: FakeServiceAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        DEFAULT_PROVIDERS.clear()  # a provider cached by another test has a client outside moto
        arn = boto3.client("secretsmanager", region_name="us-east-1").create_secret(
            Name="google-service-account", SecretString=json.dumps(service_account.info)
        )["ARN"]
        settings = google_settings_from(
            {
                "GOOGLE_PROJECT_ID": PROJECT,
                "GOOGLE_SERVICE_ACCOUNT_SECRET_ARN": arn,
                "GOOGLE_API_KEYS_BASE_URL": google.base_url,
                "GOOGLE_TOKEN_URI": google.token_uri,
                "GOOGLE_OPERATION_TIMEOUT_S": "5",
                "GEMINI_ALLOW_STANDARD_KEYS": "true",
            }
        )
        assert settings.configured
        provisioner = gemini_key_provisioner_from(settings)

        provisioned = provisioner.provision(new_resource(), MemoryStepLog())
        DEFAULT_PROVIDERS.clear()

    assert provisioned.credentials["api_key"] == only_key(google).key_string


def test_settings_validate_and_the_factory_refuses_an_unconfigured_project() -> None:
    assert not google_settings_from({}).configured
    with pytest.raises(ValueError, match="GOOGLE_PROJECT_ID"):
        gemini_key_provisioner_from(google_settings_from({}))
    with pytest.raises(ValueError, match="GOOGLE_SERVICE_ACCOUNT_SECRET_ARN"):
        gemini_key_provisioner_from(
            google_settings_from({"GOOGLE_PROJECT_ID": PROJECT, "GEMINI_ALLOW_STANDARD_KEYS": "true"})
        )
    standard_only = {"GOOGLE_PROJECT_ID": PROJECT, "GOOGLE_SERVICE_ACCOUNT_SECRET_ARN": "arn:aws:x"}
    assert not google_settings_from(standard_only).configured  # standard keys no longer work for Gemini
    with pytest.raises(ValueError, match="GEMINI_KEY_SERVICE_ACCOUNT"):
        gemini_key_provisioner_from(google_settings_from(standard_only))
    bound = {**standard_only, "GEMINI_KEY_SERVICE_ACCOUNT": "keys@proj-1.iam.gserviceaccount.com"}
    assert google_settings_from(bound).configured
    with pytest.raises(ValueError, match="project_id"):
        google_settings_from({"GOOGLE_PROJECT_ID": "Not A Project"})
    with pytest.raises(ValueError, match="key_service_account"):
        google_settings_from({"GEMINI_KEY_SERVICE_ACCOUNT": "someone@gmail.com"})
    with pytest.raises(ValueError, match="https"):
        ApiKeysClient(PROJECT, _NoTokens(), base_url="http://apikeys.example.com/v2")


class _NoTokens:
    def access_token(self) -> str:
        raise AssertionError("no call expected")

    def invalidate(self) -> None:
        raise AssertionError("no call expected")


GEMINI_OFFER = gemini_offer()
_UNUSED_CLIENT = ApiKeysClient(PROJECT, _NoTokens(), base_url="http://127.0.0.1:9/v2")


def test_the_resource_is_named_from_the_purchase() -> None:
    purchase_id = uuid4()

    resource = new_resource(purchase_id)

    assert resource == ResourceRef(
        purchase_id,
        OfferKind.GEMINI_API_KEY,
        gemini_key_id(purchase_id),
        None,
        {
            "officex_vendor": "acme",
            "officex_offer_id": GEMINI_OFFER.id,
            "officex_purchase_id": str(purchase_id),
        },
    )


def test_key_ids_are_deterministic_valid_and_not_uuid_like() -> None:
    purchase_id = UUID("0f8fad5b-d9cb-469f-a165-70867728950e")

    key_id = gemini_key_id(purchase_id)

    assert key_id == "officex-0f8fad5bd9cb469fa16570867728950e"
    assert gemini_key_id(purchase_id) == key_id and gemini_key_id(uuid4()) != key_id
    assert is_valid_key_id(key_id) and len(key_id) <= 63
    assert not is_valid_key_id(str(purchase_id))  # UUID-like ids are refused by Google
    assert not is_valid_key_id("Officex-1") and not is_valid_key_id("1officex") and not is_valid_key_id("a-")


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("action", "step", "method"),
    [("suspend", "update_restrictions", "PATCH"), ("delete", "delete_key", "DELETE")],
)
def test_a_rerun_waits_for_the_operation_the_crashed_run_started(
    google: FakeGoogle, provisioner: GeminiKeyProvisioner, action: str, step: str, method: str
) -> None:
    resource = new_resource()
    provisioner.provision(resource, MemoryStepLog())
    steps = MemoryStepLog()
    steps.crash_at = (step, "after")  # the operation is asked for and recorded, nobody waits for it
    run = getattr(provisioner, action)

    with pytest.raises(SimulatedCrash):
        run(resource, steps)
    run(resource, steps)

    assert google.calls_to(method, r"/keys/") == 1  # the recorded operation was awaited, not repeated
    key = only_key(google)
    assert (key.restrictions, key.delete_time is not None) == {
        "suspend": (suspended_restrictions(), False),
        "delete": (active_restrictions(), True),
    }[action]
