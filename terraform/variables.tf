################################################################################
# General
################################################################################

variable "name" {
  description = "Name of the deployment; prefixes every resource it creates."
  type        = string
  default     = "tollgate"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}[a-z0-9]$", var.name))
    error_message = "name must be 3-22 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

################################################################################
# Network
################################################################################

variable "vpc_id" {
  description = "VPC the load balancers and tasks run in."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "public_subnet_ids" {
  description = "Subnets of the internet-facing ALB (at least two Availability Zones)."
  type        = list(string)

  validation {
    condition     = length(var.public_subnet_ids) >= 2 && alltrue([for s in var.public_subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "public_subnet_ids must hold at least two subnet ids (subnet-...)."
  }
}

variable "private_subnet_ids" {
  description = "Subnets of the tasks and of the internal webhook ALB; they need egress to the LLM providers, Cognito, DynamoDB and Bedrock (NAT gateway or VPC endpoints)."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2 && alltrue([for s in var.private_subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "private_subnet_ids must hold at least two subnet ids (subnet-...)."
  }
}

variable "allowed_cidr_blocks" {
  description = "Client networks allowed to reach the public ALB on 443."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.allowed_cidr_blocks) > 0 && alltrue([for c in var.allowed_cidr_blocks : can(cidrhost(c, 0))])
    error_message = "allowed_cidr_blocks must be a non-empty list of CIDR blocks."
  }
}

################################################################################
# Load balancers
################################################################################

variable "certificate_arn" {
  description = "ACM certificate of the public ALB's HTTPS listener (the name clients call)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/.+$", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN."
  }
}

variable "ssl_policy" {
  description = "TLS policy of the HTTPS listeners."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"

  validation {
    condition     = startswith(var.ssl_policy, "ELBSecurityPolicy-TLS13-")
    error_message = "ssl_policy must be a TLS 1.3 policy (ELBSecurityPolicy-TLS13-...)."
  }
}

variable "http_redirect" {
  description = "Add a port 80 listener that only redirects to HTTPS (it forwards nothing)."
  type        = bool
  default     = true
}

variable "alb_idle_timeout_seconds" {
  description = "ALB idle timeout: longer than the longest pause in an LLM stream (a model thinking before its first token)."
  type        = number
  default     = 600

  validation {
    condition     = var.alb_idle_timeout_seconds >= 300 && var.alb_idle_timeout_seconds <= 4000
    error_message = "alb_idle_timeout_seconds must be 300..4000: shorter cuts long LLM streams."
  }
}

variable "alb_deletion_protection" {
  description = "Deletion protection of both load balancers."
  type        = bool
  default     = true
}

variable "alb_access_logs_bucket" {
  description = "S3 bucket for ALB access logs (SSE-S3, with the ELB log delivery policy), or null for none."
  type        = string
  default     = null
}

variable "deregistration_delay_seconds" {
  description = "How long the ALB lets in-flight requests (LLM streams) finish on a task being replaced."
  type        = number
  default     = 120

  validation {
    condition     = var.deregistration_delay_seconds >= 0 && var.deregistration_delay_seconds <= 3600
    error_message = "deregistration_delay_seconds must be 0..3600."
  }
}

variable "webhook_certificate_arn" {
  description = "ACM certificate of the internal webhook ALB's HTTPS listener (a name agentgateway resolves to it); null uses certificate_arn."
  type        = string
  default     = null

  validation {
    condition     = var.webhook_certificate_arn == null || can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/.+$", coalesce(var.webhook_certificate_arn, "x")))
    error_message = "webhook_certificate_arn must be an ACM certificate ARN or null."
  }
}

variable "webhook_allowed_cidr_blocks" {
  description = "Networks allowed to call the internal webhook ALB (where agentgateway runs); null allows the VPC's CIDR."
  type        = list(string)
  default     = null

  validation {
    condition     = var.webhook_allowed_cidr_blocks == null || alltrue([for c in coalesce(var.webhook_allowed_cidr_blocks, []) : can(cidrhost(c, 0))])
    error_message = "webhook_allowed_cidr_blocks must be CIDR blocks or null."
  }
}

################################################################################
# WAF
################################################################################

variable "waf_rate_limit" {
  description = "Requests one IP may send in 5 minutes before WAF blocks it (the limit documented to users)."
  type        = number
  default     = 2000

  validation {
    condition     = var.waf_rate_limit >= 100 && var.waf_rate_limit <= 2000000000
    error_message = "waf_rate_limit must be at least 100 (WAF's minimum)."
  }
}

################################################################################
# ECS
################################################################################

variable "container_image" {
  description = "tollgate's container image (an ECR URI with a tag or digest, built from the repository's Dockerfile)."
  type        = string

  validation {
    condition     = can(regex("^[^\\s]+(:[\\w.-]+|@sha256:[0-9a-f]{64})$", var.container_image))
    error_message = "container_image must name a tag or a digest."
  }
}

variable "envoy_image" {
  description = "Envoy's container image (the version the repository's tests validate the config with)."
  type        = string
  default     = "envoyproxy/envoy:v1.40.0"
}

variable "adot_image" {
  description = "AWS Distro for OpenTelemetry collector image (tollgate's metrics to CloudWatch)."
  type        = string
  default     = "public.ecr.aws/aws-observability/aws-otel-collector:v0.40.0"
}

variable "cpu_architecture" {
  description = "CPU architecture of the tasks; the images must have it (the Dockerfile builds both)."
  type        = string
  default     = "ARM64"

  validation {
    condition     = contains(["ARM64", "X86_64"], var.cpu_architecture)
    error_message = "cpu_architecture must be ARM64 or X86_64."
  }
}

variable "task_cpu" {
  description = "Task CPU units (Envoy, tollgate and the collector share them)."
  type        = number
  default     = 1024

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.task_cpu)
    error_message = "task_cpu must be a Fargate CPU size (256 ... 16384)."
  }
}

variable "task_memory" {
  description = "Task memory (MiB); Fargate allows 2-8 GiB per vCPU."
  type        = number
  default     = 2048

  validation {
    condition     = var.task_memory >= 512 && var.task_memory <= 122880 && var.task_memory % 512 == 0
    error_message = "task_memory must be a multiple of 512 MiB between 512 and 122880."
  }
}

variable "desired_count" {
  description = "Tasks at first deployment; autoscaling moves it between min_capacity and max_capacity."
  type        = number
  default     = 2
}

variable "min_capacity" {
  description = "Fewest tasks (at least two: one per Availability Zone)."
  type        = number
  default     = 2

  validation {
    condition     = var.min_capacity >= 1
    error_message = "min_capacity must be at least 1."
  }
}

variable "max_capacity" {
  description = "Most tasks autoscaling may run."
  type        = number
  default     = 10

  validation {
    condition     = var.max_capacity >= var.min_capacity
    error_message = "max_capacity must be at least min_capacity."
  }
}

variable "autoscaling_cpu_target" {
  description = "Average task CPU (percent) autoscaling keeps."
  type        = number
  default     = 60

  validation {
    condition     = var.autoscaling_cpu_target > 0 && var.autoscaling_cpu_target <= 90
    error_message = "autoscaling_cpu_target must be 1..90."
  }
}

variable "autoscaling_requests_per_target" {
  description = "ALB requests per task per minute autoscaling keeps."
  type        = number
  default     = 3000

  validation {
    condition     = var.autoscaling_requests_per_target > 0
    error_message = "autoscaling_requests_per_target must be positive."
  }
}

variable "provider_secret_arns" {
  description = "Provider API keys, only from Secrets Manager: OPENAI_API_KEY and/or ANTHROPIC_API_KEY => secret ARN."
  type        = map(string)

  validation {
    condition = length(var.provider_secret_arns) > 0 && alltrue([
      for k, v in var.provider_secret_arns :
      contains(["OPENAI_API_KEY", "ANTHROPIC_API_KEY"], k) && can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+$", v))
    ])
    error_message = "provider_secret_arns maps OPENAI_API_KEY / ANTHROPIC_API_KEY to Secrets Manager secret ARNs."
  }
}

variable "provider_secrets_kms_key_arn" {
  description = "KMS key the provider secrets are encrypted with, if not the AWS managed key; the task execution role may decrypt with it."
  type        = string
  default     = null
}

################################################################################
# tollgate settings
################################################################################

variable "fail_mode" {
  description = "When DynamoDB cannot answer: closed refuses (503), open admits on per-instance counters."
  type        = string
  default     = "closed"

  validation {
    condition     = contains(["closed", "open"], var.fail_mode)
    error_message = "fail_mode must be closed or open."
  }
}

variable "shutdown_grace_seconds" {
  description = "Seconds in-flight exchanges get after SIGTERM (tollgate's server.shutdown_grace_seconds); the stop timeout is 10 s more."
  type        = number
  default     = 20

  validation {
    condition     = var.shutdown_grace_seconds >= 1 && var.shutdown_grace_seconds <= 110
    error_message = "shutdown_grace_seconds must be 1..110: Fargate's stop timeout is at most 120 s."
  }
}

variable "envoy_attachment" {
  description = "How Envoy attaches tollgate: four_phase (every phase of the exchange; needed for a guardrail in enforce mode) or fast (one message per request, nothing on the response waits for tollgate; usage is read by Envoy and charged from its access log). docs/envoy.md, \"Two attachments\"."
  type        = string
  default     = "four_phase"

  validation {
    condition     = contains(["four_phase", "fast"], var.envoy_attachment)
    error_message = "envoy_attachment must be four_phase or fast."
  }
}

variable "team_claim" {
  description = "Token claim naming the team (added by the pre-token-generation trigger); null maps teams by client_id through the admin API."
  type        = string
  default     = null
}

################################################################################
# Cognito
################################################################################

variable "cognito_domain_prefix" {
  description = "Prefix of the user pool's domain, which serves the token endpoint (https://<prefix>.auth.<region>.amazoncognito.com/oauth2/token)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$", var.cognito_domain_prefix)) && !can(regex("aws|amazon|cognito", var.cognito_domain_prefix))
    error_message = "cognito_domain_prefix must be lowercase letters, digits and hyphens, without aws, amazon or cognito."
  }
}

variable "cognito_user_pool_tier" {
  description = "User pool feature plan: LITE, ESSENTIALS or PLUS (a V3_0 pre-token-generation trigger needs ESSENTIALS or PLUS)."
  type        = string
  default     = "ESSENTIALS"

  validation {
    condition     = contains(["LITE", "ESSENTIALS", "PLUS"], var.cognito_user_pool_tier)
    error_message = "cognito_user_pool_tier must be LITE, ESSENTIALS or PLUS."
  }
}

variable "cognito_clients" {
  description = "App clients (client_credentials) by name: which scopes each may request (invoke: LLM calls; admin: the admin API), and its access-token lifetime."
  type = map(object({
    scopes                        = optional(list(string), ["invoke"])
    access_token_validity_minutes = optional(number, 60)
  }))
  default = {
    tollgate-admin = { scopes = ["admin"] }
  }

  validation {
    condition = alltrue([
      for c in values(var.cognito_clients) :
      length(c.scopes) > 0 && alltrue([for s in c.scopes : contains(["invoke", "admin"], s)]) &&
      c.access_token_validity_minutes >= 5 && c.access_token_validity_minutes <= 1440
    ])
    error_message = "Each client's scopes must be invoke and/or admin, and its token lifetime 5..1440 minutes."
  }

  validation {
    condition     = anytrue([for c in values(var.cognito_clients) : contains(c.scopes, "admin")])
    error_message = "At least one client needs the admin scope: the admin API (and the first team) is reached with it."
  }
}

variable "pre_token_generation_lambda_arn" {
  description = "Optional pre-token-generation trigger (e.g. one adding a team claim); it runs as V3_0, the only version client-credentials tokens invoke."
  type        = string
  default     = null

  validation {
    condition     = var.pre_token_generation_lambda_arn == null || var.cognito_user_pool_tier != "LITE"
    error_message = "A V3_0 pre-token-generation trigger for access tokens needs cognito_user_pool_tier ESSENTIALS or PLUS."
  }
}

################################################################################
# Bedrock guardrail
################################################################################

variable "guardrail" {
  description = "The Bedrock guardrail tollgate applies to prompts and answers; mode off, observe (log only) or enforce."
  type = object({
    enabled                = optional(bool, true)
    mode                   = optional(string, "observe")
    blocked_input_message  = optional(string, "Sorry, I can't help with that request.")
    blocked_output_message = optional(string, "Sorry, I can't share that response.")
    content_filters = optional(list(object({
      type            = string
      input_strength  = optional(string, "HIGH")
      output_strength = optional(string, "HIGH")
      })), [
      { type = "HATE" }, { type = "INSULTS" }, { type = "SEXUAL" }, { type = "VIOLENCE" }, { type = "MISCONDUCT" },
      { type = "PROMPT_ATTACK", output_strength = "NONE" },
    ])
    pii_entities = optional(list(object({
      type   = string
      action = string
      })), [
      { type = "EMAIL", action = "ANONYMIZE" },
      { type = "US_SOCIAL_SECURITY_NUMBER", action = "BLOCK" },
      { type = "CREDIT_DEBIT_CARD_NUMBER", action = "BLOCK" },
      { type = "AWS_SECRET_KEY", action = "BLOCK" },
    ])
    regexes = optional(list(object({
      name    = string
      pattern = string
      action  = string
    })), [])
    denied_words = optional(list(string), [])
  })
  default = {}

  validation {
    condition     = contains(["off", "observe", "enforce"], var.guardrail.mode)
    error_message = "guardrail.mode must be off, observe or enforce."
  }

  validation {
    condition = alltrue(concat(
      [for f in var.guardrail.content_filters : contains(["NONE", "LOW", "MEDIUM", "HIGH"], f.input_strength) && contains(["NONE", "LOW", "MEDIUM", "HIGH"], f.output_strength)],
      [for p in var.guardrail.pii_entities : contains(["BLOCK", "ANONYMIZE"], p.action)],
      [for r in var.guardrail.regexes : contains(["BLOCK", "ANONYMIZE"], r.action)],
    ))
    error_message = "Filter strengths must be NONE, LOW, MEDIUM or HIGH; PII and regex actions BLOCK or ANONYMIZE."
  }
}

################################################################################
# Lambda
################################################################################

variable "lambda_artifacts_dir" {
  description = "Directory holding <function>/bootstrap.zip for budget-enforcement, admin-api and usage-recorder (dev/lambda-build writes $CARGO_TARGET_DIR/lambda)."
  type        = string

  validation {
    condition     = alltrue([for f in ["budget-enforcement", "admin-api", "usage-recorder"] : fileexists("${var.lambda_artifacts_dir}/${f}/bootstrap.zip")])
    error_message = "lambda_artifacts_dir must contain budget-enforcement/, admin-api/ and usage-recorder/bootstrap.zip: run dev/lambda-build."
  }
}

variable "lambda_memory_mb" {
  description = "Memory of each function (CPU scales with it)."
  type        = number
  default     = 256

  validation {
    condition     = var.lambda_memory_mb >= 128 && var.lambda_memory_mb <= 10240
    error_message = "lambda_memory_mb must be 128..10240."
  }
}

variable "lambda_reserved_concurrency" {
  description = "Reserved concurrency of each function: caps what one function can take from the account's pool and what it can spend. The account must keep 100 unreserved; null reserves none."
  type        = number
  default     = 50
  nullable    = true

  validation {
    condition     = var.lambda_reserved_concurrency == null || try(var.lambda_reserved_concurrency >= 1, false)
    error_message = "lambda_reserved_concurrency must be at least 1, or null."
  }
}

variable "agentgateway_log_group_name" {
  description = "agentgateway's access-log group (JSON records with the caller's token) the usage recorder subscribes to; null creates /<name>/agentgateway."
  type        = string
  default     = null
}

################################################################################
# Observability
################################################################################

variable "log_retention_days" {
  description = "Retention of tollgate's, Envoy's, the functions' and WAF's log groups."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a CloudWatch Logs retention value."
  }
}

variable "agentgateway_log_retention_days" {
  description = "Retention of the agentgateway access-log group it creates: short, its records hold bearer tokens."
  type        = number
  default     = 1

  validation {
    condition     = contains([1, 3, 5, 7], var.agentgateway_log_retention_days)
    error_message = "agentgateway_log_retention_days must be 1, 3, 5 or 7: the records hold bearer tokens."
  }
}

variable "alarm_actions" {
  description = "ARNs (e.g. an SNS topic) notified when an alarm fires or clears."
  type        = list(string)
  default     = []
}

variable "alarm_5xx_percent" {
  description = "Share of requests answered 5xx (ALB and targets) over 5 minutes that raises the 5xx alarm."
  type        = number
  default     = 5

  validation {
    condition     = var.alarm_5xx_percent > 0 && var.alarm_5xx_percent <= 100
    error_message = "alarm_5xx_percent must be in (0, 100]."
  }
}
