"""Logger, Tracer and Metrics shared by every function (one place to configure them)."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger(service="vendor-billing")
tracer = Tracer(service="vendor-billing")
metrics = Metrics(namespace="OfficeXVendorBilling", service="vendor-billing")
