# tollgate in a VPC that already exists, beside an agentgateway that already logs to its own
# group: the subnets and networks are given, the alarms go to an existing topic.

data "aws_vpc" "this" {
  id = var.vpc_id
}

module "tollgate" {
  source = "../.."

  name                        = "tollgate"
  vpc_id                      = data.aws_vpc.this.id
  public_subnet_ids           = var.public_subnet_ids
  private_subnet_ids          = var.private_subnet_ids
  webhook_allowed_cidr_blocks = var.agentgateway_cidr_blocks
  certificate_arn             = var.certificate_arn
  container_image             = var.container_image
  cpu_architecture            = "ARM64"
  cognito_domain_prefix       = var.cognito_domain_prefix
  provider_secret_arns        = var.provider_secret_arns
  lambda_artifacts_dir        = var.lambda_artifacts_dir
  agentgateway_log_group_name = var.agentgateway_log_group_name
  alarm_actions               = [var.alarm_topic_arn]
  fail_mode                   = "closed"

  # An enforcing guardrail holds answers back, which only the four-phase attachment can (the
  # default; "fast" with "enforce" fails the plan).
  envoy_attachment = "four_phase"
  guardrail = {
    mode = "enforce"
  }

  tags = {
    Service = "llm-gateway"
  }
}
