"""Static checks of template.yaml: routes, folders, handlers, schedules, policies.

Everything here is offline. The two subprocess tests use the separate SAM venv
(`.venv-sam`, see requirements-sam.txt) and are skipped when it is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from billing.services.notifications import OutboxDispatchInput
from billing.services.provisioning import ProvisionerInput
from billing.services.sweeps import SweepInput
from billing.services.usage_estimator import UsageEstimatorInput
from local.template import load_cfn_yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = REPO_ROOT / "template.yaml"
FUNCTIONS_DIR = REPO_ROOT / "functions"
SAM_VENV_BIN = REPO_ROOT / ".venv-sam" / "bin"
SAM_BIN = SAM_VENV_BIN / "sam"
SAM_PYTHON = SAM_VENV_BIN / "python"

HANDLER = "app.lambda_handler"

# folder under functions/ -> (method, path). The paths are the API contract.
HTTP_ROUTES: dict[str, tuple[str, str]] = {
    "health": ("GET", "/health"),
    "openapi": ("GET", "/openapi.json"),
    "appstore_suggest": ("GET", "/appstore/suggest"),
    "appstore_list": ("GET", "/appstore/list/{list_id}"),
    "offer_get": ("GET", "/offer/{offer_id}"),
    "checkout_wallet_create": ("POST", "/offer/{offer_id}/checkout/wallet/create"),
    "checkout_wallet_verify": ("POST", "/offer/{offer_id}/checkout/wallet/{wallet_id}/verify"),
    "checkout_finalize": ("POST", "/offer/{offer_id}/checkout/finalize"),
    "purchase_get": ("GET", "/purchase/{purchase_id}"),
    "meter_usage": ("POST", "/purchase/{purchase_id}/meter-usage"),
    "purchase_authorize": ("POST", "/purchase/{purchase_id}/authorize"),
    "verify_topup": ("POST", "/purchase/{purchase_id}/verify-topup"),
    "historical_billing": ("POST", "/purchase/{purchase_id}/historical-billing"),
}
NON_HTTP_FOLDERS = {
    "cost_export",
    "sweep",
    "chain_sweep",
    "migrate",
    "outbox_dispatch",
    "provisioner",
    "usage_estimator",
}
# Functions that never touch the database get no Secrets Manager access.
NO_DB_FOLDERS = {"openapi"}

SAM_VENV_MISSING = (
    f"SAM CLI venv missing: {SAM_VENV_BIN} (python -m venv .venv-sam && pip install -r requirements-sam.txt)"
)

SAM_ENV_OVERRIDES = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "SAM_CLI_TELEMETRY": "0",
}


# -------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_cfn_yaml(TEMPLATE_PATH.read_text(encoding="utf-8"))


def _functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource["Properties"]
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }


def _folder_of(code_uri: str) -> str:
    prefix = "functions/"
    assert code_uri.startswith(prefix) and code_uri.endswith("/"), code_uri
    folder = code_uri[len(prefix) : -1]
    assert folder and "/" not in folder, code_uri
    return folder


def _functions_by_folder(template: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    by_folder: dict[str, tuple[str, dict[str, Any]]] = {}
    for logical_id, props in _functions(template).items():
        folder = _folder_of(props["CodeUri"])
        assert folder not in by_folder, f"{folder} used by {by_folder[folder][0]} and {logical_id}"
        by_folder[folder] = (logical_id, props)
    return by_folder


def _events_of_type(props: dict[str, Any], event_type: str) -> dict[str, dict[str, Any]]:
    return {
        name: event.get("Properties", {})
        for name, event in (props.get("Events") or {}).items()
        if event["Type"] == event_type
    }


def _pascal(folder: str) -> str:
    return "".join(part.capitalize() for part in folder.split("_"))


def _sam_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(SAM_ENV_OVERRIDES)
    return env


# ------------------------------------------------------------ folders/handlers
def test_template_declares_exactly_the_expected_function_folders(template: dict[str, Any]) -> None:
    assert set(_functions_by_folder(template)) == set(HTTP_ROUTES) | NON_HTTP_FOLDERS


def test_every_function_folder_has_exactly_one_function(template: dict[str, Any]) -> None:
    on_disk = {p.parent.name for p in FUNCTIONS_DIR.glob("*/app.py")}
    code_uri_counts = Counter(_folder_of(props["CodeUri"]) for props in _functions(template).values())
    missing_in_template = sorted(on_disk - set(code_uri_counts))
    assert not missing_in_template, (
        f"functions/ folders without a function in template.yaml: {missing_in_template}"
    )
    shared = sorted(folder for folder, count in code_uri_counts.items() if count != 1)
    assert not shared, f"folders used by more than one function: {shared}"


def test_every_function_code_uri_folder_exists_with_app_py(template: dict[str, Any]) -> None:
    missing = sorted(
        props["CodeUri"]
        for props in _functions(template).values()
        if not (REPO_ROOT / props["CodeUri"] / "app.py").is_file()
    )
    assert not missing, f"CodeUri folders without app.py: {missing}"


def test_logical_ids_are_pascal_case_folder_plus_function(template: dict[str, Any]) -> None:
    for folder, (logical_id, _) in _functions_by_folder(template).items():
        assert logical_id == f"{_pascal(folder)}Function"


def test_every_function_has_the_standard_handler(template: dict[str, Any]) -> None:
    wrong = {
        lid: props.get("Handler")
        for lid, props in _functions(template).items()
        if props.get("Handler") != HANDLER
    }
    assert not wrong


# ---------------------------------------------------------------------- routes
def test_http_routes_are_exactly_the_contract(template: dict[str, Any]) -> None:
    routes: list[tuple[str, str]] = []
    for folder, (logical_id, props) in _functions_by_folder(template).items():
        http_events = _events_of_type(props, "HttpApi")
        if folder in NON_HTTP_FOLDERS:
            assert not http_events, f"{logical_id} must not be reachable over HTTP"
            continue
        assert len(props["Events"]) == 1 and len(http_events) == 1, f"{logical_id}: exactly one HttpApi event"
        (event,) = http_events.values()
        assert event["ApiId"] == {"Ref": "HttpApi"}, logical_id
        route = (event["Method"].upper(), event["Path"])
        assert route == HTTP_ROUTES[folder], logical_id
        routes.append(route)
    duplicates = [route for route, count in Counter(routes).items() if count > 1]
    assert not duplicates
    assert set(routes) == set(HTTP_ROUTES.values())
    assert len(routes) == 13


def test_one_http_api_with_default_stage_throttling_and_access_logs(template: dict[str, Any]) -> None:
    apis = {lid: r for lid, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::HttpApi"}
    assert list(apis) == ["HttpApi"]
    props = apis["HttpApi"]["Properties"]
    assert props["StageName"] == "$default"
    assert props["DefaultRouteSettings"] == {
        "ThrottlingRateLimit": {"Ref": "ApiThrottlingRateLimit"},
        "ThrottlingBurstLimit": {"Ref": "ApiThrottlingBurstLimit"},
    }
    access = props["AccessLogSettings"]
    log_group_id = access["DestinationArn"]["Fn::GetAtt"][0]
    log_group = template["Resources"][log_group_id]
    assert log_group["Type"] == "AWS::Logs::LogGroup"
    assert log_group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    fields = json.loads(access["Format"])
    assert set(fields) == {
        "requestId",
        "ip",
        "requestTime",
        "httpMethod",
        "routeKey",
        "status",
        "protocol",
        "responseLength",
        "integrationErrorMessage",
    }


# ------------------------------------------------------------ globals & layer
def test_globals(template: dict[str, Any]) -> None:
    g = template["Globals"]["Function"]
    assert g["Runtime"] == "python3.12"
    assert g["Architectures"] == ["arm64"]
    assert g["Layers"] == [{"Ref": "SharedLayer"}]
    # X-Ray is opt-in: the tracer and the SDK's import follow one parameter together.
    assert g["Tracing"] == {"Fn::If": ["TracingEnabled", "Active", "PassThrough"]}
    assert g["Environment"]["Variables"]["POWERTOOLS_TRACE_DISABLED"] == {
        "Fn::If": ["TracingEnabled", "false", "true"]
    }
    assert g["LoggingConfig"]["LogFormat"] == "JSON"
    log_group = template["Resources"][g["LoggingConfig"]["LogGroup"]["Ref"]]
    assert log_group["Type"] == "AWS::Logs::LogGroup"
    assert log_group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert g["VpcConfig"]["Fn::If"][0] == "HasVpc"
    assert g["VpcConfig"]["Fn::If"][2] == {"Ref": "AWS::NoValue"}
    variables = g["Environment"]["Variables"]
    assert {
        "DB_SECRET_ARN",
        "DB_HOST",
        "DB_PORT",
        "DB_NAME",
        "DB_SSLMODE",
        "POWERTOOLS_SERVICE_NAME",
        "POWERTOOLS_METRICS_NAMESPACE",
        "POWERTOOLS_LOG_LEVEL",
        "MAX_BODY_BYTES",
        "PUBLIC_BASE_URL",
    } <= set(variables)
    assert variables["DB_SSLMODE"] == "require"


def test_shared_layer_is_built_for_python312_arm64(template: dict[str, Any]) -> None:
    layer = template["Resources"]["SharedLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Properties"]["ContentUri"] == "layers/shared/"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.12"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert layer["Metadata"]["BuildMethod"] == "python3.12"
    assert layer["Metadata"]["BuildArchitecture"] == "arm64"
    assert (REPO_ROOT / "layers" / "shared" / "requirements.txt").is_file()


def test_duckdb_layer_is_attached_to_the_cost_export_function_only(template: dict[str, Any]) -> None:
    layer = template["Resources"]["CostExportLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Properties"]["ContentUri"] == "layers/cost_export/"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.12"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert layer["Metadata"] == {"BuildMethod": "python3.12", "BuildArchitecture": "arm64"}
    with_layer = {
        logical_id
        for logical_id, props in _functions(template).items()
        if {"Ref": "CostExportLayer"} in props.get("Layers", [])
    }
    assert with_layer == {"CostExportFunction"}
    # One pin, used by the layer build and by the dev venv alike.
    pins = (REPO_ROOT / "layers" / "cost_export" / "requirements.txt").read_text().split()
    assert len([pin for pin in pins if pin.startswith("duckdb==")]) == 1
    assert "-r layers/cost_export/requirements.txt" in (REPO_ROOT / "requirements-dev.txt").read_text()


# ------------------------------------------------------- schedules & cost export
def test_schedules_have_explicit_names_and_known_jobs(template: dict[str, Any]) -> None:
    schedules: dict[str, dict[str, Any]] = {}
    for props in _functions(template).values():
        schedules.update(_events_of_type(props, "ScheduleV2"))
    assert set(schedules) == {
        "SweepHoldsAndBalances",
        "SweepMaintenance",
        "SweepDepositsBase",
        "ChainSweepBase",
        "OutboxDispatch",
        "Provisioner",
        "UsageEstimator",
    }
    for name, props in schedules.items():
        assert "Fn::Sub" in props["Name"] and "${AWS::StackName}" in props["Name"]["Fn::Sub"], name
        assert props["State"] == "ENABLED", name
        assert props["RetryPolicy"]["MaximumRetryAttempts"] <= 3, name
    assert json.loads(schedules["SweepHoldsAndBalances"]["Input"]) == {"job": "holds_and_balances"}
    assert json.loads(schedules["SweepMaintenance"]["Input"]) == {"job": "maintenance"}
    assert json.loads(schedules["SweepDepositsBase"]["Input"]) == {"job": "deposits", "chain": "base"}
    for name in ("SweepHoldsAndBalances", "SweepMaintenance", "SweepDepositsBase"):
        SweepInput.model_validate_json(schedules[name]["Input"])  # the sweep function accepts each input
    assert _functions(template)["SweepFunction"]["CodeUri"] == "functions/sweep/"
    assert json.loads(schedules["ChainSweepBase"]["Input"]) == {"chain": "base"}
    assert _functions(template)["ChainSweepFunction"]["CodeUri"] == "functions/chain_sweep/"
    OutboxDispatchInput.model_validate_json(schedules["OutboxDispatch"]["Input"])
    assert schedules["OutboxDispatch"]["ScheduleExpression"] == "rate(1 minute)"
    ProvisionerInput.model_validate_json(schedules["Provisioner"]["Input"])
    assert schedules["Provisioner"]["ScheduleExpression"] == "rate(1 minute)"
    UsageEstimatorInput.model_validate_json(schedules["UsageEstimator"]["Input"])
    assert schedules["UsageEstimator"]["ScheduleExpression"] == "rate(15 minutes)"


def test_cost_export_triggers_on_manifest_objects(template: dict[str, Any]) -> None:
    props = _functions(template)["CostExportFunction"]
    (event,) = _events_of_type(props, "S3").values()
    assert event["Bucket"] == {"Ref": "CostReportBucket"}
    assert event["Events"] == "s3:ObjectCreated:*"
    assert event["Filter"]["S3Key"]["Rules"] == [{"Name": "suffix", "Value": "Manifest.json"}]
    assert props["Timeout"] == 900


def test_cost_export_read_policy_names_the_report_bucket(template: dict[str, Any]) -> None:
    # The policy cannot !Ref the bucket (circular dependency); it must repeat the
    # bucket's name expression exactly.
    bucket_name = template["Resources"]["CostReportBucket"]["Properties"]["BucketName"]
    policies = _functions(template)["CostExportFunction"]["Policies"]
    read = [p["S3ReadPolicy"] for p in policies if isinstance(p, dict) and "S3ReadPolicy" in p]
    assert read == [{"BucketName": bucket_name}]


def test_report_bucket_is_private_encrypted_versioned_and_tls_only(template: dict[str, Any]) -> None:
    bucket = template["Resources"]["CostReportBucket"]["Properties"]
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(bucket["PublicAccessBlockConfiguration"]) == 4
    assert bucket["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    sse = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert sse["SSEAlgorithm"] == "AES256"
    statements = template["Resources"]["CostReportBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    allow = [s for s in statements if s["Effect"] == "Allow"]
    assert len(allow) == 1
    assert set(allow[0]["Principal"]["Service"]) == {
        "billingreports.amazonaws.com",
        "bcm-data-exports.amazonaws.com",
    }
    assert set(allow[0]["Action"]) == {"s3:PutObject", "s3:GetBucketPolicy", "s3:GetBucketAcl"}
    assert allow[0]["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
    deny = [s for s in statements if s["Effect"] == "Deny"]
    assert [s["Condition"] for s in deny] == [{"Bool": {"aws:SecureTransport": "false"}}]


# -------------------------------------------------------------------- policies
def test_least_privilege_policies(template: dict[str, Any]) -> None:
    secret_policy = {"AWSSecretsManagerGetSecretValuePolicy": {"SecretArn": {"Ref": "DatabaseSecretArn"}}}
    for folder, (logical_id, props) in _functions_by_folder(template).items():
        policies = props.get("Policies")
        assert isinstance(policies, list), f"{logical_id}: Policies must be explicit"
        if folder in NO_DB_FOLDERS:
            assert policies == [], logical_id
            continue
        assert policies[0] == secret_policy, logical_id
        extra = policies[1:]
        if folder == "cost_export":
            assert [next(iter(p)) for p in extra] == ["S3ReadPolicy"], logical_id
        elif folder == "chain_sweep":  # the sweeper alone reads the HD seed and the treasury key
            assert extra == [
                {"AWSSecretsManagerGetSecretValuePolicy": {"SecretArn": {"Ref": "HdSeedSecretArn"}}},
                {"AWSSecretsManagerGetSecretValuePolicy": {"SecretArn": {"Ref": "TreasuryKeySecretArn"}}},
            ], logical_id
        elif folder == "outbox_dispatch":  # decrypts webhook secrets / org keys, sends from one identity
            assert extra[0] == {"KMSDecryptPolicy": {"KeyId": {"Ref": "AppKmsKeyId"}}}, logical_id
            (statement,) = extra[1]["Statement"]
            assert statement["Action"] == "ses:SendEmail", logical_id
            assert all("identity/" in str(resource) for resource in statement["Resource"]), logical_id
            assert len(extra) == 2, logical_id
        elif folder == "checkout_finalize":  # encrypts the org key, webhook secret and replay answer
            assert extra == [
                {"KMSEncryptPolicy": {"KeyId": {"Ref": "AppKmsKeyId"}}},
                {"KMSDecryptPolicy": {"KeyId": {"Ref": "AppKmsKeyId"}}},
                # starts the provisioner; never cloud-admin itself
                {"LambdaInvokePolicy": {"FunctionName": {"Ref": "ProvisionerFunction"}}},
            ], logical_id
            assert props["Environment"]["Variables"]["KMS_KEY_ID"] == {"Ref": "AppKmsKeyId"}
        elif folder == "purchase_get":  # decrypts the resource's one-time credentials
            assert extra == [{"KMSDecryptPolicy": {"KeyId": {"Ref": "AppKmsKeyId"}}}], logical_id
        elif folder == "usage_estimator":  # reads metrics only; GetMetricData has no resource scoping
            (statement,) = extra[0]["Statement"]
            assert statement["Action"] == "cloudwatch:GetMetricData", logical_id
            assert len(extra) == 1, logical_id
        elif folder == "provisioner":  # checked in detail by test_provisioner_policy_is_scoped
            assert extra[0] == {"KMSEncryptPolicy": {"KeyId": {"Ref": "AppKmsKeyId"}}}, logical_id
            assert [next(iter(p)) for p in extra] == ["KMSEncryptPolicy", "Statement"], logical_id
        else:
            assert extra == [], logical_id


def _provisioner_statements(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    policies = _functions(template)["ProvisionerFunction"]["Policies"]
    (statements,) = [policy["Statement"] for policy in policies if "Statement" in policy]
    return {statement["Sid"]: statement for statement in statements}


def _sub_prefix(resource: Any) -> tuple[str, Any]:
    """(pattern, prefix expression) of ``!Sub ["arn:…:::${Prefix}-*", {Prefix: …}]``."""
    pattern, variables = resource["Fn::Sub"]
    return pattern, variables["Prefix"]


def test_provisioner_policy_is_scoped_to_prefixed_buckets_and_bounded_users(template: dict[str, Any]) -> None:
    statements = _provisioner_statements(template)
    assert set(statements) == {
        "ManageProvisionedBuckets",
        "EmptyProvisionedBuckets",
        "CreateBoundedUsers",
        "ManageProvisionedUsers",
        "ReadGoogleServiceAccountKey",
    }
    google = statements["ReadGoogleServiceAccountKey"]
    assert google["Action"] == "secretsmanager:GetSecretValue"
    assert google["Resource"]["Fn::If"][:2] == [
        "HasGoogleServiceAccountSecret",
        {"Ref": "GoogleServiceAccountSecretArn"},
    ]
    prefix = _functions(template)["ProvisionerFunction"]["Environment"]["Variables"][
        "PROVISIONED_BUCKET_PREFIX"
    ]
    for sid, suffix in (("ManageProvisionedBuckets", "-*"), ("EmptyProvisionedBuckets", "-*/*")):
        pattern, expression = _sub_prefix(statements[sid]["Resource"])
        assert pattern == "arn:${AWS::Partition}:s3:::${Prefix}" + suffix, sid
        assert expression == prefix, f"{sid}: the bucket prefix must be the function's own"
        assert all(action.startswith("s3:") for action in statements[sid]["Action"]), sid
    users = "arn:${AWS::Partition}:iam::${AWS::AccountId}:user/officex-billing/${AWS::StackName}/*"
    for sid in ("CreateBoundedUsers", "ManageProvisionedUsers"):
        assert statements[sid]["Resource"] == {"Fn::Sub": users}, sid
        assert all(action.startswith("iam:") for action in statements[sid]["Action"]), sid
    # A user can only be created, or given a policy, with the boundary attached.
    assert set(statements["CreateBoundedUsers"]["Action"]) == {
        "iam:CreateUser",
        "iam:PutUserPolicy",
        "iam:DeleteUserPolicy",
    }
    assert statements["CreateBoundedUsers"]["Condition"] == {
        "StringEquals": {"iam:PermissionsBoundary": {"Ref": "ProvisionedUserBoundary"}}
    }
    assert not {"iam:CreateUser", "iam:PutUserPolicy", "iam:AttachUserPolicy"} & set(
        statements["ManageProvisionedUsers"]["Action"]
    )
    variables = _functions(template)["ProvisionerFunction"]["Environment"]["Variables"]
    assert variables["PROVISIONED_IAM_PATH"] == {"Fn::Sub": "/officex-billing/${AWS::StackName}/"}
    assert variables["PROVISIONED_USER_BOUNDARY_ARN"] == {"Ref": "ProvisionedUserBoundary"}
    # The boundary itself allows only the customer's object access to prefixed buckets.
    boundary = template["Resources"]["ProvisionedUserBoundary"]
    assert boundary["Type"] == "AWS::IAM::ManagedPolicy"
    for statement in boundary["Properties"]["PolicyDocument"]["Statement"]:
        assert statement["Effect"] == "Allow"
        assert all(action.startswith("s3:") for action in statement["Action"])
        assert _sub_prefix(statement["Resource"])[1] == prefix


def test_finalize_may_only_start_the_provisioner(template: dict[str, Any]) -> None:
    finalize = _functions(template)["CheckoutFinalizeFunction"]
    variables = finalize["Environment"]["Variables"]
    assert variables["PROVISIONER_FUNCTION_NAME"] == {"Ref": "ProvisionerFunction"}
    assert 0 < float(variables["PROVISIONING_WAIT_S"]) <= 10
    assert float(variables["PROVISIONING_WAIT_S"]) + 10 < finalize["Timeout"] < 30  # HTTP API: 30 s
    provisioner = _functions(template)["ProvisionerFunction"]
    assert not _events_of_type(provisioner, "HttpApi")
    # No cycle: the provisioner must not reference the HTTP API (finalize is one of its routes).
    assert "HttpApi" not in json.dumps(provisioner)


def test_no_allow_statement_grants_wildcard_actions(template: dict[str, Any]) -> None:
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("Effect") == "Allow":
                yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    for statement in walk(template["Resources"]):
        actions = statement.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        assert not any("*" in action for action in actions), statement


def test_outputs(template: dict[str, Any]) -> None:
    assert {"ApiUrl", "CostReportBucketName", "SharedLayerArn", "MigrateFunctionName"} <= set(
        template["Outputs"]
    )


# ------------------------------------------------------------------ SAM CLI
@pytest.mark.skipif(not SAM_BIN.exists(), reason=SAM_VENV_MISSING)
def test_sam_validate_lint_passes() -> None:
    result = subprocess.run(
        [str(SAM_BIN), "validate", "--lint", "--template", str(TEMPLATE_PATH)],
        cwd=REPO_ROOT,
        env=_sam_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# `sam validate --lint` does not report circular dependencies that only appear
# after the SAM transform (e.g. a route function's environment referencing
# HttpApi, or the S3-triggered function's role referencing its bucket), yet
# CloudFormation rejects them at deploy time. Transform offline and check.
_TRANSFORM_SCRIPT = r"""
import json, sys
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

class NoManagedPolicies:
    def load(self):
        return {}

template = yaml_parse(open(sys.argv[1], encoding="utf-8").read())
for resource in template.get("Resources", {}).values():
    props = resource.get("Properties") or {}
    for key in ("CodeUri", "ContentUri"):
        if isinstance(props.get(key), str):
            props[key] = "s3://placeholder-bucket/code.zip"
json.dump(transform(template, {}, NoManagedPolicies()), sys.stdout)
"""


def _references(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        if "Ref" in node and isinstance(node["Ref"], str):
            found.add(node["Ref"])
        if "Fn::GetAtt" in node:
            target = node["Fn::GetAtt"]
            found.add(target[0] if isinstance(target, list) else target.split(".", 1)[0])
        if "Fn::Sub" in node:
            sub = node["Fn::Sub"]
            text = sub[0] if isinstance(sub, list) else sub
            local = set(sub[1]) if isinstance(sub, list) and len(sub) > 1 else set()
            for chunk in text.split("${")[1:]:
                name = chunk.split("}", 1)[0].split(".", 1)[0]
                if not name.startswith("!") and name not in local:
                    found.add(name)
        for value in node.values():
            found |= _references(value)
    elif isinstance(node, list):
        for value in node:
            found |= _references(value)
    return found


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        if node in done:
            return None
        visiting.append(node)
        for dep in sorted(graph.get(node, ())):
            cycle = visit(dep)
            if cycle:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_find_cycle_detects_a_cycle() -> None:
    assert _find_cycle({"A": {"B"}, "B": {"C"}, "C": {"A"}}) == ["A", "B", "C", "A"]
    assert _find_cycle({"A": {"B"}, "B": set()}) is None


@pytest.mark.skipif(not SAM_PYTHON.exists(), reason=SAM_VENV_MISSING)
def test_transformed_template_has_no_circular_dependencies() -> None:
    result = subprocess.run(
        [str(SAM_PYTHON), "-c", _TRANSFORM_SCRIPT, str(TEMPLATE_PATH)],
        cwd=REPO_ROOT,
        env=_sam_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    resources: dict[str, Any] = json.loads(result.stdout)["Resources"]
    graph: dict[str, set[str]] = {}
    for logical_id, resource in resources.items():
        depends_on = resource.get("DependsOn", [])
        depends_on = [depends_on] if isinstance(depends_on, str) else depends_on
        refs = _references(resource.get("Properties", {})) | set(depends_on)
        graph[logical_id] = {ref for ref in refs if ref in resources}
    assert _find_cycle(graph) is None, f"circular dependency: {' -> '.join(_find_cycle(graph) or [])}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
