# tollgate's three Lambda functions (lambda/ in the repository, zips from dev/lambda-build):
# arm64 on provided.al2023 (the binaries need glibc 2.30; provided.al2 has 2.26).

locals {
  lambda_timeouts = {
    budget-enforcement = 8  # under agentgateway's 10 s webhook timeout
    admin-api          = 15 # under API Gateway's 30 s integration timeout
    usage-recorder     = 60 # a batch of access-log records
  }
}

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_116:ALB and API Gateway invoke synchronously (no DLQ applies); usage-recorder's failed batches go to its on-failure destination (SQS)
  #checkov:skip=CKV_AWS_117:the functions call only public AWS endpoints and Cognito's JWKS; a VPC would add ENI permissions on * and a NAT dependency, isolating nothing
  #checkov:skip=CKV_AWS_272:code signing needs an AWS Signer profile the operator owns; the zips come from dev/lambda-build in the same pipeline as this apply
  #checkov:skip=CKV_AWS_50:tollgate emits no X-Ray segments; Active tracing would only add xray:PutTraceSegments on * to each role
  for_each = local.functions

  function_name = "${var.name}-${each.key}"
  description   = "tollgate ${each.key}"
  role          = aws_iam_role.lambda[each.key].arn

  runtime       = "provided.al2023"
  architectures = ["arm64"]
  handler       = "bootstrap"

  filename         = "${var.lambda_artifacts_dir}/${each.key}/bootstrap.zip"
  source_code_hash = filebase64sha256("${var.lambda_artifacts_dir}/${each.key}/bootstrap.zip")

  memory_size                    = var.lambda_memory_mb
  timeout                        = local.lambda_timeouts[each.key]
  reserved_concurrent_executions = var.lambda_reserved_concurrency

  kms_key_arn = aws_kms_key.this.arn
  environment {
    variables = module.render.lambda_environments[each.key]
  }

  logging_config {
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.lambda[each.key].name
  }

  tags = local.tags

  depends_on = [aws_iam_role_policy.lambda]
}

# budget-enforcement: the internal webhook ALB invokes it.
resource "aws_lambda_permission" "webhook_alb" {
  statement_id  = "InternalWebhookAlb"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.this["budget-enforcement"].function_name
  principal     = "elasticloadbalancing.amazonaws.com"
  source_arn    = aws_lb_target_group.budget_enforcement.arn
}

################################################################################
# usage-recorder: subscribed to agentgateway's access-log group
################################################################################

resource "aws_cloudwatch_log_group" "agentgateway" {
  count = var.agentgateway_log_group_name == null ? 1 : 0

  name              = local.agentgateway_log_group_name
  retention_in_days = var.agentgateway_log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_lambda_permission" "usage_logs" {
  statement_id   = "AgentgatewayAccessLogs"
  action         = "lambda:InvokeFunction"
  function_name  = aws_lambda_function.this["usage-recorder"].function_name
  principal      = "logs.amazonaws.com"
  source_arn     = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${local.agentgateway_log_group_name}:*"
  source_account = local.account_id
}

resource "aws_cloudwatch_log_subscription_filter" "usage" {
  name            = "${var.name}-usage"
  log_group_name  = local.agentgateway_log_group_name
  filter_pattern  = module.render.usage_log_filter_pattern
  destination_arn = aws_lambda_function.this["usage-recorder"].arn

  depends_on = [aws_lambda_permission.usage_logs, aws_cloudwatch_log_group.agentgateway]
}

# CloudWatch Logs invokes asynchronously: Lambda retries a failed batch twice, then hands it here,
# which is how a spend DynamoDB could not take is kept (replaying it is safe: debits are
# idempotent by request id).
resource "aws_sqs_queue" "usage_failures" {
  name                      = "${var.name}-usage-failures"
  message_retention_seconds = 1209600
  kms_master_key_id         = aws_kms_key.this.arn
  tags                      = local.tags
}

resource "aws_lambda_function_event_invoke_config" "usage_recorder" {
  function_name                = aws_lambda_function.this["usage-recorder"].function_name
  maximum_retry_attempts       = 2
  maximum_event_age_in_seconds = 21600

  destination_config {
    on_failure {
      destination = aws_sqs_queue.usage_failures.arn
    }
  }
}

################################################################################
# admin-api: API Gateway HTTP API, JWT authorizer requiring the admin scope
################################################################################

resource "aws_apigatewayv2_api" "admin" {
  name          = "${var.name}-admin"
  description   = "tollgate admin API (teams, budgets, prices, usage)"
  protocol_type = "HTTP"
  tags          = local.tags
}

resource "aws_apigatewayv2_authorizer" "admin" {
  api_id           = aws_apigatewayv2_api.admin.id
  name             = "cognito"
  authorizer_type  = "JWT"
  identity_sources = ["$request.header.Authorization"]

  # Cognito access tokens carry client_id, not aud: API Gateway checks client_id against this.
  jwt_configuration {
    issuer   = module.render.issuer
    audience = [for c in local.admin_clients : aws_cognito_user_pool_client.this[c].id]
  }
}

resource "aws_apigatewayv2_integration" "admin" {
  api_id                 = aws_apigatewayv2_api.admin.id
  integration_type       = "AWS_PROXY"
  integration_method     = "POST"
  integration_uri        = aws_lambda_function.this["admin-api"].invoke_arn
  payload_format_version = "2.0"
  timeout_milliseconds   = 20000
}

resource "aws_apigatewayv2_route" "admin" {
  api_id               = aws_apigatewayv2_api.admin.id
  route_key            = "ANY /admin/{proxy+}"
  target               = "integrations/${aws_apigatewayv2_integration.admin.id}"
  authorization_type   = "JWT"
  authorizer_id        = aws_apigatewayv2_authorizer.admin.id
  authorization_scopes = [local.scopes.admin]
}

resource "aws_apigatewayv2_stage" "admin" {
  api_id      = aws_apigatewayv2_api.admin.id
  name        = "$default"
  auto_deploy = true

  default_route_settings {
    throttling_burst_limit = 20
    throttling_rate_limit  = 10
  }

  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.admin_api_access.arn
    format = jsonencode({
      requestId = "$context.requestId"
      ip        = "$context.identity.sourceIp"
      method    = "$context.httpMethod"
      path      = "$context.path"
      status    = "$context.status"
      clientId  = "$context.authorizer.claims.client_id"
      error     = "$context.authorizer.error"
    })
  }

  tags = local.tags
}

resource "aws_lambda_permission" "admin_api" {
  statement_id  = "AdminHttpApi"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.this["admin-api"].function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.admin.execution_arn}/*/*"
}
