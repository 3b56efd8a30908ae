# One customer managed key for tollgate's data at rest: the DynamoDB table, the log groups
# (agentgateway's holds bearer tokens), the Lambda environments (the webhook secret), the usage
# recorder's failure queue and the guardrail.

resource "aws_kms_key" "this" {
  description             = "${var.name}: DynamoDB table, logs, Lambda environments, failure queue, guardrail"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:a key policy's Resource "*" is this key only; administration stays with the account
  #checkov:skip=CKV_AWS_111:a key policy's Resource "*" is this key only; administration stays with the account
  #checkov:skip=CKV_AWS_356:a key policy's Resource "*" is this key only (the policy is attached to it)
  # The account administers the key; roles get their use of it from their own IAM policies.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"] # in a key policy, "*" is this key
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  # CloudWatch Logs encrypts this deployment's log groups with it, and nothing else.
  statement {
    sid       = "CloudWatchLogsEncryptsTheseLogGroups"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"] # in a key policy, "*" is this key
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values = [
        "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/${var.name}/*",
        "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/aws/lambda/${var.name}-*",
        "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:aws-waf-logs-${var.name}",
      ]
    }
  }
}
