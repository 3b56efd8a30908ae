# tollgate on AWS: clients hold Cognito client-credentials tokens; a public ALB (WAF in front)
# validates them and forwards /v1/* to ECS Fargate tasks running Envoy with tollgate beside it;
# state in DynamoDB; Bedrock guardrails; three Lambda functions for agentgateway (budget
# enforcement behind an internal ALB, usage from its access logs) and the admin API.

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

data "aws_vpc" "this" {
  id = var.vpc_id
}

locals {
  region     = data.aws_region.current.region
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  tags = merge(var.tags, { "tollgate:deployment" = var.name })

  functions = toset(["budget-enforcement", "admin-api", "usage-recorder"])

  agentgateway_log_group_name = coalesce(var.agentgateway_log_group_name, "/${var.name}/agentgateway")

  guardrail_enabled = var.guardrail.enabled && var.guardrail.mode != "off"
}

# What the containers and functions read, rendered without any provider: see modules/render.
module "render" {
  source = "./modules/render"

  name                 = var.name
  region               = local.region
  cognito_user_pool_id = aws_cognito_user_pool.this.id
  team_claim           = var.team_claim
  table_name           = aws_dynamodb_table.this.name
  fail_mode            = var.fail_mode
  envoy_attachment     = var.envoy_attachment

  shutdown_grace_seconds = var.shutdown_grace_seconds
  webhook_secret         = random_password.webhook_secret.result

  guardrail = local.guardrail_enabled ? {
    id      = aws_bedrock_guardrail.this[0].guardrail_id
    version = aws_bedrock_guardrail_version.this[0].version
    mode    = var.guardrail.mode
  } : null

  images = {
    tollgate = var.container_image
    envoy    = var.envoy_image
    adot     = var.adot_image
  }
  provider_secret_arns = var.provider_secret_arns

  log_groups = {
    tollgate = aws_cloudwatch_log_group.container["tollgate"].name
    envoy    = aws_cloudwatch_log_group.container["envoy"].name
    adot     = aws_cloudwatch_log_group.container["adot"].name
  }
  metrics_namespace = var.name
  metrics_log_group = aws_cloudwatch_log_group.metrics.name
}

# The shared secret agentgateway sends to the budget-enforcement function: the internal ALB does
# not authenticate its callers, and agentgateway cannot sign requests.
resource "random_password" "webhook_secret" {
  length  = 48
  special = false
}
