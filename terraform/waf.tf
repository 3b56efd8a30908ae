# WAF on the public ALB: AWS managed rule groups (common, known bad inputs, IP reputation,
# anonymous IP with hosting providers only counted: agents run on cloud hosts), and a per-IP rate
# limit. Logs go to CloudWatch with the authorization header redacted.

locals {
  # name => priority, and rules inside the group that only count instead of blocking.
  waf_managed_rule_groups = {
    AWSManagedRulesCommonRuleSet          = { priority = 10, count_only = ["SizeRestrictions_BODY", "CrossSiteScripting_BODY", "GenericLFI_BODY", "GenericRFI_BODY"] }
    AWSManagedRulesKnownBadInputsRuleSet  = { priority = 20, count_only = [] }
    AWSManagedRulesAmazonIpReputationList = { priority = 30, count_only = [] }
    AWSManagedRulesAnonymousIpList        = { priority = 40, count_only = ["HostingProviderIPList"] }
  }
}

resource "aws_wafv2_web_acl" "this" {
  #checkov:skip=CKV_AWS_192:AWSManagedRulesKnownBadInputsRuleSet (Log4j) is a rule, from local.waf_managed_rule_groups, which checkov does not expand; tests/terraform checks it
  name        = var.name
  description = "${var.name}: managed rules and a per-IP rate limit in front of the LLM gateway"
  scope       = "REGIONAL"

  default_action {
    allow {}
  }

  dynamic "rule" {
    for_each = local.waf_managed_rule_groups
    content {
      name     = rule.key
      priority = rule.value.priority

      override_action {
        none {}
      }

      statement {
        managed_rule_group_statement {
          vendor_name = "AWS"
          name        = rule.key

          # Counted, never blocked: LLM prompts are large bodies (SizeRestrictions_BODY blocks
          # above 8 KB) that quote code, HTML and file paths (the *_BODY rules), which nothing
          # behind this ALB renders or opens; cloud hosts are where agents run
          # (HostingProviderIPList).
          dynamic "rule_action_override" {
            for_each = rule.value.count_only
            content {
              name = rule_action_override.value
              action_to_use {
                count {}
              }
            }
          }
        }
      }

      visibility_config {
        cloudwatch_metrics_enabled = true
        metric_name                = "${var.name}-${rule.key}"
        sampled_requests_enabled   = true
      }
    }
  }

  rule {
    name     = "rate-limit-per-ip"
    priority = 50

    action {
      block {}
    }

    statement {
      rate_based_statement {
        limit                 = var.waf_rate_limit
        evaluation_window_sec = 300
        aggregate_key_type    = "IP"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-rate-limit-per-ip"
      sampled_requests_enabled   = true
    }
  }

  visibility_config {
    cloudwatch_metrics_enabled = true
    metric_name                = var.name
    sampled_requests_enabled   = true
  }

  tags = local.tags
}

resource "aws_wafv2_web_acl_association" "public" {
  resource_arn = aws_lb.public.arn
  web_acl_arn  = aws_wafv2_web_acl.this.arn
}

# WAF requires the aws-waf-logs- prefix for a CloudWatch Logs destination.
resource "aws_cloudwatch_log_group" "waf" {
  name              = "aws-waf-logs-${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_wafv2_web_acl_logging_configuration" "this" {
  resource_arn            = aws_wafv2_web_acl.this.arn
  log_destination_configs = [aws_cloudwatch_log_group.waf.arn]

  # Callers' bearer tokens never reach the WAF logs.
  redacted_fields {
    single_header {
      name = "authorization"
    }
  }
}
