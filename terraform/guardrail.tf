# The Bedrock guardrail tollgate applies (ApplyGuardrail) to prompts and answers, and a published
# version of it: tollgate calls a fixed version, so an edit takes effect through a new version and
# a new task definition, not silently under running tasks.

resource "aws_bedrock_guardrail" "this" {
  count = local.guardrail_enabled ? 1 : 0

  name                      = var.name
  description               = "${var.name}: prompts and answers of LLM calls through tollgate"
  blocked_input_messaging   = var.guardrail.blocked_input_message
  blocked_outputs_messaging = var.guardrail.blocked_output_message

  dynamic "content_policy_config" {
    for_each = length(var.guardrail.content_filters) > 0 ? [1] : []
    content {
      dynamic "filters_config" {
        for_each = var.guardrail.content_filters
        content {
          type            = filters_config.value.type
          input_strength  = filters_config.value.input_strength
          output_strength = filters_config.value.output_strength
        }
      }
    }
  }

  dynamic "sensitive_information_policy_config" {
    for_each = length(var.guardrail.pii_entities) + length(var.guardrail.regexes) > 0 ? [1] : []
    content {
      dynamic "pii_entities_config" {
        for_each = var.guardrail.pii_entities
        content {
          type   = pii_entities_config.value.type
          action = pii_entities_config.value.action
        }
      }
      dynamic "regexes_config" {
        for_each = var.guardrail.regexes
        content {
          name    = regexes_config.value.name
          pattern = regexes_config.value.pattern
          action  = regexes_config.value.action
        }
      }
    }
  }

  dynamic "word_policy_config" {
    for_each = length(var.guardrail.denied_words) > 0 ? [1] : []
    content {
      dynamic "words_config" {
        for_each = var.guardrail.denied_words
        content {
          text = words_config.value
        }
      }
    }
  }

  tags = local.tags
}

resource "aws_bedrock_guardrail_version" "this" {
  count = local.guardrail_enabled ? 1 : 0

  guardrail_arn = aws_bedrock_guardrail.this[0].guardrail_arn
  description   = "Published by Terraform for ${var.name}"
  # Tasks of the previous deployment may still call the old version while they drain.
  skip_destroy = true

  lifecycle {
    replace_triggered_by = [aws_bedrock_guardrail.this[0]]
  }
}
