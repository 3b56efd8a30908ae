# Least privilege: each role gets exactly the calls its code makes, on the resources it makes
# them on. Nothing is granted on "*" that the service lets us scope.

locals {
  # The DynamoDB calls tollgate makes at run time (src/store/dynamodb.rs): UpdateItem (admission),
  # BatchGetItem (cached counters), GetItem/PutItem/DeleteItem/Query (teams, prices, usage), and
  # TransactWriteItems, which IAM authorises as the PutItem and UpdateItem it contains.
  # CreateTable/DescribeTable/UpdateTimeToLive are `tollgate admin init-table` only: Terraform
  # makes the table.
  dynamodb_actions = [
    "dynamodb:BatchGetItem",
    "dynamodb:DeleteItem",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
    "dynamodb:UpdateItem",
  ]

  guardrail_arns = [for g in aws_bedrock_guardrail.this : g.guardrail_arn]

  # The private ECR repositories the images come from (account.dkr.ecr.region.amazonaws.com/repo):
  # tollgate's, and Envoy's or the collector's when they are mirrored there (Docker Hub limits
  # anonymous pulls). Public registries need no permission.
  image_registries = [
    for image in [var.container_image, var.envoy_image, var.adot_image] :
    regex("^(?:(?P<account>[0-9]{12})\\.dkr\\.ecr\\.(?P<region>[a-z0-9-]+)\\.amazonaws\\.com/(?P<repository>[^:@]+))?", image)
  ]
  ecr_repository_arns = sort(distinct([
    for m in local.image_registries :
    "arn:${local.partition}:ecr:${m.region}:${m.account}:repository/${m.repository}" if m.account != null
  ]))
}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

################################################################################
# ECS task execution role: pull the image, write container logs, read the provider keys
################################################################################

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "execution" {
  dynamic "statement" {
    for_each = length(local.ecr_repository_arns) == 0 ? [] : [1]
    content {
      sid       = "PullImages"
      actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
      resources = local.ecr_repository_arns
    }
  }

  dynamic "statement" {
    for_each = length(local.ecr_repository_arns) == 0 ? [] : [1]
    content {
      sid       = "EcrLogin"
      actions   = ["ecr:GetAuthorizationToken"]
      resources = ["*"] # GetAuthorizationToken has no resource to scope to
    }
  }

  statement {
    sid       = "ContainerLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [for g in aws_cloudwatch_log_group.container : "${g.arn}:*"]
  }

  statement {
    sid       = "ProviderKeys"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = values(var.provider_secret_arns)
  }

  dynamic "statement" {
    for_each = var.provider_secrets_kms_key_arn == null ? [] : [var.provider_secrets_kms_key_arn]
    content {
      sid       = "ProviderKeysDecrypt"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["secretsmanager.${local.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "execution"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

################################################################################
# ECS task role: tollgate (DynamoDB, Bedrock) and the ADOT collector (EMF logs)
################################################################################

resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "task" {
  statement {
    sid       = "Table"
    actions   = local.dynamodb_actions
    resources = [aws_dynamodb_table.this.arn]
  }

  statement {
    sid       = "TableKey"
    actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["dynamodb.${local.region}.amazonaws.com"]
    }
  }

  dynamic "statement" {
    for_each = length(local.guardrail_arns) > 0 ? [1] : []
    content {
      sid       = "Guardrail"
      actions   = ["bedrock:ApplyGuardrail"]
      resources = local.guardrail_arns
    }
  }

  statement {
    sid       = "MetricsEmf"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.metrics.arn}:*"]
  }
}

resource "aws_iam_role_policy" "task" {
  name   = "tollgate"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}

################################################################################
# Lambda roles, one per function
################################################################################

resource "aws_iam_role" "lambda" {
  for_each = local.functions

  name               = "${var.name}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "lambda" {
  for_each = local.functions

  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.lambda[each.key].arn}:*"]
  }

  statement {
    sid       = "Table"
    actions   = local.dynamodb_actions
    resources = [aws_dynamodb_table.this.arn]
  }

  # The table's key through DynamoDB, and the environment's (the webhook secret) through Lambda.
  statement {
    sid       = "Key"
    actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values = concat(
        ["dynamodb.${local.region}.amazonaws.com", "lambda.${local.region}.amazonaws.com"],
        each.key == "usage-recorder" ? ["sqs.${local.region}.amazonaws.com"] : [],
      )
    }
  }

  # budget-enforcement guards prompts and answers; admin-api serves POST /admin/guardrail/test.
  dynamic "statement" {
    for_each = contains(["budget-enforcement", "admin-api"], each.key) && length(local.guardrail_arns) > 0 ? [1] : []
    content {
      sid       = "Guardrail"
      actions   = ["bedrock:ApplyGuardrail"]
      resources = local.guardrail_arns
    }
  }

  dynamic "statement" {
    for_each = each.key == "usage-recorder" ? [1] : []
    content {
      sid       = "FailureDestination"
      actions   = ["sqs:SendMessage"]
      resources = [aws_sqs_queue.usage_failures.arn]
    }
  }
}

resource "aws_iam_role_policy" "lambda" {
  for_each = local.functions

  name   = "tollgate"
  role   = aws_iam_role.lambda[each.key].id
  policy = data.aws_iam_policy_document.lambda[each.key].json
}
