# Log groups (encrypted, with retention) and the alarms an operator needs: the store is down,
# debits wait in the spool, clients get 5xx, a function fails. tollgate's own metrics reach
# CloudWatch through the ADOT collector in each task (EMF, namespace = var.name, dimension
# Service = var.name).

resource "aws_cloudwatch_log_group" "container" {
  for_each = toset(["tollgate", "envoy", "adot"])

  name              = "/${var.name}/ecs/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_cloudwatch_log_group" "metrics" {
  #checkov:skip=CKV_AWS_338:EMF records only feed CloudWatch metrics (kept 15 months by CloudWatch); a year of the raw records is cost without use
  name              = "/${var.name}/metrics"
  retention_in_days = 7
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_cloudwatch_log_group" "lambda" {
  for_each = local.functions

  name              = "/aws/lambda/${var.name}-${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_cloudwatch_log_group" "admin_api_access" {
  name              = "/${var.name}/admin-api-access"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

locals {
  # Alarms on tollgate's own metrics (namespace var.name, dimension Service = var.name).
  tollgate_alarms = {
    store-down = {
      description = "tollgate cannot reach DynamoDB (tollgate_store_up = 0): requests follow fail_mode. Runbook: docs/operations.md, DynamoDB outage."
      metric      = "tollgate_store_up"
      statistic   = "Minimum"
      periods     = 2
      threshold   = 1
      comparison  = "LessThanThreshold"
      # No data means no task reports at all: as bad as a store that is down.
      missing = "breaching"
    }
    spool-pending = {
      description = "Debits wait in a task's spool (tollgate_spool_pending > 0): DynamoDB refuses or times out on writes."
      metric      = "tollgate_spool_pending"
      statistic   = "Maximum"
      periods     = 3
      threshold   = 0
      comparison  = "GreaterThanThreshold"
      missing     = "notBreaching"
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "tollgate" {
  for_each = local.tollgate_alarms

  alarm_name          = "${var.name}-${each.key}"
  alarm_description   = each.value.description
  namespace           = var.name
  metric_name         = each.value.metric
  dimensions          = { Service = var.name }
  statistic           = each.value.statistic
  period              = 60
  evaluation_periods  = each.value.periods
  threshold           = each.value.threshold
  comparison_operator = each.value.comparison
  treat_missing_data  = each.value.missing
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "http_5xx" {
  alarm_name          = "${var.name}-5xx-rate"
  alarm_description   = "More than ${var.alarm_5xx_percent}% of requests through the public ALB end in 5xx (ALB or Envoy/tollgate)."
  evaluation_periods  = 1
  threshold           = var.alarm_5xx_percent
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions

  metric_query {
    id          = "rate"
    expression  = "100 * (FILL(target5xx, 0) + FILL(elb5xx, 0)) / requests"
    label       = "5xx percent"
    return_data = true
  }

  dynamic "metric_query" {
    for_each = {
      target5xx = "HTTPCode_Target_5XX_Count"
      elb5xx    = "HTTPCode_ELB_5XX_Count"
      requests  = "RequestCount"
    }
    content {
      id = metric_query.key
      metric {
        namespace   = "AWS/ApplicationELB"
        metric_name = metric_query.value
        dimensions  = { LoadBalancer = aws_lb.public.arn_suffix }
        stat        = "Sum"
        period      = 300
      }
    }
  }

  tags = local.tags
}

resource "aws_cloudwatch_metric_alarm" "lambda_errors" {
  for_each = local.functions

  alarm_name          = "${var.name}-${each.key}-errors"
  alarm_description   = "tollgate's ${each.key} function fails invocations."
  namespace           = "AWS/Lambda"
  metric_name         = "Errors"
  dimensions          = { FunctionName = aws_lambda_function.this[each.key].function_name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "usage_failures" {
  alarm_name          = "${var.name}-usage-failures"
  alarm_description   = "Access-log batches the usage recorder could not write after retries wait in ${aws_sqs_queue.usage_failures.name}: spend not yet counted."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.usage_failures.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = local.tags
}
