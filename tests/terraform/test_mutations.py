"""The checks catch broken wiring: each mutation breaks terraform/ in one way a reviewer could
miss, in a copy, and the named check must report it (and the unbroken copy passes it, see
test_wiring.py). Every mutation's text must occur exactly once, so a refactoring that moves it
fails here instead of silently testing nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stack import TERRAFORM, Stack
from wiring import CHECKS

# (id, file under terraform/, text, replacement, check that must notice)
MUTATIONS = [
    ("scope-format-string-array", "alb.tf", 'format = "space-separated-values"', 'format = "string-array"', "jwt_validation"),
    ("no-token-check", "alb.tf", 'type  = "jwt-validation"\n    order = 1', 'type  = "authenticate-oidc"\n    order = 1', "jwt_validation"),
    ("http-listener-forwards", "alb.tf",
     'type = "redirect"\n    redirect {\n      protocol    = "HTTPS"\n      port        = "443"\n      status_code = "HTTP_301"\n    }',
     'type             = "forward"\n    target_group_arn = aws_lb_target_group.envoy.arn', "alb_https_only"),
    ("table-key", "dynamodb.tf", 'range_key                   = "sk"', 'range_key                   = "id"', "dynamodb_table"),
    ("ttl-attribute", "dynamodb.tf", 'attribute_name = "expires_at"', 'attribute_name = "ttl"', "dynamodb_table"),
    ("port-mismatch", "alb.tf", "port                 = module.render.listener_port", "port                 = 8081", "ports"),
    ("wildcard-iam", "iam.tf", 'sid       = "Table"\n    actions   = local.dynamodb_actions\n    resources = [aws_dynamodb_table.this.arn]\n  }\n\n  statement {\n    sid       = "TableKey"',
     'sid       = "Table"\n    actions   = local.dynamodb_actions\n    resources = ["*"]\n  }\n\n  statement {\n    sid       = "TableKey"', "iam_least_privilege"),
    ("dynamodb-scan", "iam.tf", '"dynamodb:Query",', '"dynamodb:Query",\n    "dynamodb:Scan",', "iam_dynamodb"),
    ("x86-lambda", "lambda.tf", 'architectures = ["arm64"]', 'architectures = ["x86_64"]', "lambda"),
    ("missing-waf-rule", "waf.tf", '    AWSManagedRulesAnonymousIpList        = { priority = 40, count_only = ["HostingProviderIPList"] }\n', "", "waf"),
    ("hosting-providers-blocked", "waf.tf", 'count_only = ["HostingProviderIPList"]', "count_only = []", "waf"),
    ("authorization-in-waf-logs", "waf.tf", 'name = "authorization"', 'name = "x-forwarded-for"', "waf"),
    ("stop-timeout-below-grace", "modules/render/main.tf", "stop_timeout = var.shutdown_grace_seconds + 10", "stop_timeout = var.shutdown_grace_seconds", "containers"),
    ("no-restart-in-place", "modules/render/main.tf", "restart_policy = { enabled = true, restartAttemptPeriod = 60 }", "restart_policy = { enabled = false, restartAttemptPeriod = 60 }", "containers"),
    ("writable-root", "modules/render/main.tf", 'command                = ["serve"]\n      user                   = "65532:65532"\n      readonlyRootFilesystem = true',
     'command                = ["serve"]\n      user                   = "65532:65532"\n      readonlyRootFilesystem = false', "containers"),
    ("api-key-in-environment", "modules/render/main.tf", 'TOLLGATE_LOG__LEVEL              = "info"', 'TOLLGATE_LOG__LEVEL              = "info"\n      OPENAI_API_KEY = "sk-test"', "containers"),
    ("filter-pattern", "modules/render/main.tf", '($.protocol = \\"llm\\")', '($.protocol = \\"http\\")', "usage_filter_pattern"),
    ("envoy-template-drift", "modules/render/templates/envoy.yaml.tftpl", "message_timeout: 2s", "message_timeout: 1s", "envoy_template"),
    ("unknown-argument", "alb.tf", "idle_timeout               = var.alb_idle_timeout_seconds", "idle_timeout_seconds       = var.alb_idle_timeout_seconds", "provider_schema"),
    ("undeclared-variable", "waf.tf", "limit                 = var.waf_rate_limit", "limit                 = var.waf_rate_limt", "references"),
    ("agentgateway-retention", "lambda.tf", "retention_in_days = var.agentgateway_log_retention_days", "retention_in_days = var.log_retention_days", "logs_and_alarms"),
    ("pre-token-v2", "cognito.tf", 'lambda_version = "V3_0"', 'lambda_version = "V2_0"', "cognito"),
    ("health-check-path", "alb.tf", "path                = module.render.health_check_path", 'path                = "/healthz"', "alb_settings"),
    ("waf-aggregate-key", "waf.tf", 'aggregate_key_type    = "IP"', 'aggregate_key_type    = "SOURCE_IP"', "api_shapes"),
    ("waf-override-misspelt", "waf.tf", "action_to_use {\n                count {}", "action_to_use {\n                counts {}", "api_shapes"),
    ("listener-action-type", "alb.tf", 'type  = "jwt-validation"\n    order = 1', 'type  = "jwt_validation"\n    order = 1', "api_shapes"),
    ("fast-attachment-not-passed", "main.tf", "  envoy_attachment     = var.envoy_attachment\n", "", "fast_attachment"),
    ("fast-without-buffer-filter", "modules/render/templates/envoy.yaml.tftpl", "          - name: envoy.filters.http.buffer\n", "          - name: envoy.filters.http.buffer_disabled\n", "fast_attachment"),
    ("fast-route-sends-headers", "modules/render/templates/envoy.yaml.tftpl", "request_header_mode: SKIP", "request_header_mode: SEND", "fast_attachment"),
    ("fast-holds-the-response", "modules/render/templates/envoy.yaml.tftpl", 'response_body_mode: ${fast ? "NONE" : "STREAMED"}', 'response_body_mode: ${fast ? "STREAMED" : "STREAMED"}', "fast_attachment"),
    ("fast-misses-a-usage-path", "modules/render/main.tf", '    "usage.cache_creation_input_tokens",\n', "", "fast_attachment"),
    ("fast-not-announced", "modules/render/templates/envoy.yaml.tftpl", "initial_metadata: [{ key: x-tollgate-attachment, value: admission }]", "initial_metadata: []", "fast_attachment"),
    ("fast-access-log-elsewhere", "modules/render/templates/envoy.yaml.tftpl", "                  envoy_grpc: { cluster_name: tollgate }\n                buffer_flush_interval", "                  envoy_grpc: { cluster_name: tollgate_http }\n                buffer_flush_interval", "fast_attachment"),
    ("no-circuit-breaker", "ecs.tf", "enable   = true\n    rollback = true", "enable   = true\n    rollback = false", "ecs_service"),
]


@pytest.fixture(scope="module")
def base(stack):
    return stack


@pytest.mark.parametrize("ident,file,old,new,check", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_mutation_is_caught(base, tmp_path, ident, file, old, new, check):
    assert check in CHECKS
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, copy, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    target = copy / file
    text = target.read_text()
    assert text.count(old) == 1, f"{ident}: the text to break must occur once in {file}"
    target.write_text(text.replace(old, new))
    touches_render = file.startswith("modules/render/")
    broken = Stack.load(copy, rendered=None if touches_render else base.rendered,
                        rendered_fast=None if touches_render else base.rendered_fast)
    assert CHECKS[check](base) == [], f"{check} already fails on the unbroken module"
    problems = CHECKS[check](broken)
    assert problems, f"{ident}: check {check} did not notice"


def test_there_are_at_least_ten_mutations():
    assert len(MUTATIONS) >= 10
    assert len({m[0] for m in MUTATIONS}) == len(MUTATIONS)
