variable "name" {
  description = "Name of the deployment; prefixes the log stream names."
  type        = string
}

variable "region" {
  description = "AWS region of the deployment (DynamoDB, Bedrock, CloudWatch Logs, Cognito)."
  type        = string
}

variable "cognito_user_pool_id" {
  description = "Cognito user pool whose access tokens callers present (e.g. eu-west-1_AbCdEf123)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]_[0-9A-Za-z]+$", var.cognito_user_pool_id))
    error_message = "cognito_user_pool_id must look like <region>_<id>."
  }
}

variable "team_claim" {
  description = "Token claim naming the team (added by a pre-token-generation trigger), or null to map teams by client_id."
  type        = string
  default     = null
}

variable "table_name" {
  description = "DynamoDB table tollgate keeps its counters, teams and prices in."
  type        = string
}

variable "guardrail" {
  description = "Bedrock guardrail tollgate applies (id and published version), and the mode; null for none."
  type = object({
    id      = string
    version = string
    mode    = string
  })
  default = null

  validation {
    condition     = var.guardrail == null || contains(["off", "observe", "enforce"], try(var.guardrail.mode, ""))
    error_message = "guardrail.mode must be off, observe or enforce."
  }
}

variable "envoy_attachment" {
  description = "How Envoy attaches tollgate: four_phase (every phase of the exchange; answers can be held for an enforcing guardrail) or fast (one message per request; usage read by Envoy and charged from its access log)."
  type        = string
  default     = "four_phase"

  validation {
    condition     = contains(["four_phase", "fast"], var.envoy_attachment)
    error_message = "envoy_attachment must be four_phase or fast."
  }

  # Answers never pass through tollgate on the fast attachment, so an enforcing guardrail could
  # not hold one back: tollgate would refuse every request with a 503. Refused here instead.
  validation {
    condition     = var.envoy_attachment != "fast" || try(var.guardrail.mode, "off") != "enforce"
    error_message = "envoy_attachment = \"fast\" cannot carry a guardrail in enforce mode (answers never pass through tollgate on it): use envoy_attachment = \"four_phase\", or guardrail mode observe or off."
  }
}

variable "fail_mode" {
  description = "What tollgate does when DynamoDB cannot answer: closed (503) or open (per-instance counters)."
  type        = string
  default     = "closed"

  validation {
    condition     = contains(["closed", "open"], var.fail_mode)
    error_message = "fail_mode must be closed or open."
  }
}

variable "shutdown_grace_seconds" {
  description = "Seconds in-flight exchanges get to finish after SIGTERM; the container's stop timeout is 10 s more."
  type        = number
  default     = 20

  validation {
    condition     = var.shutdown_grace_seconds >= 1 && var.shutdown_grace_seconds <= 110
    error_message = "shutdown_grace_seconds must be 1..110: Fargate's stop timeout is at most 120 s."
  }
}

variable "webhook_secret" {
  description = "Shared secret agentgateway sends to the budget-enforcement function (x-tollgate-webhook-secret)."
  type        = string
  sensitive   = true
}

variable "images" {
  description = "Container images: tollgate, envoy and the ADOT collector."
  type = object({
    tollgate = string
    envoy    = string
    adot     = string
  })
}

variable "provider_secret_arns" {
  description = "Environment variable (OPENAI_API_KEY, ANTHROPIC_API_KEY) => Secrets Manager secret ARN holding that provider key."
  type        = map(string)

  validation {
    condition     = alltrue([for k in keys(var.provider_secret_arns) : contains(["OPENAI_API_KEY", "ANTHROPIC_API_KEY"], k)])
    error_message = "provider_secret_arns keys must be OPENAI_API_KEY or ANTHROPIC_API_KEY (the variables envoy.yaml reads)."
  }
}

variable "log_groups" {
  description = "CloudWatch log group names of the task's containers."
  type = object({
    tollgate = string
    envoy    = string
    adot     = string
  })
}

variable "metrics_namespace" {
  description = "CloudWatch namespace tollgate's metrics are published in (EMF)."
  type        = string
  default     = "tollgate"
}

variable "metrics_log_group" {
  description = "Log group the ADOT collector writes EMF records to."
  type        = string
}
