# Everything tollgate's containers and functions read at run time, and nothing else: the task's
# container definitions (with Envoy's bootstrap and the ADOT collector's config inside), and the
# Lambda functions' environments. The root module passes these outputs to the AWS resources
# unchanged; tests apply this module alone and hand the same outputs to `envoy --mode validate`,
# `tollgate config` / `tollgate check` and botocore's ECS ContainerDefinition shape.

locals {
  # Ports inside the task (awsvpc: the containers share 127.0.0.1). Only Envoy's listener is
  # reachable from outside the task, and only from the ALB's security group.
  listener_port      = 8080
  tollgate_grpc_port = 50051
  tollgate_http_port = 9090
  envoy_admin_port   = 9901

  # The ALB's health check: Envoy serves it from tollgate's /readyz, so a target is healthy only
  # when both containers are. The public listener never forwards this path (only /v1/*).
  health_check_path = "/tollgate/readyz"

  issuer    = "https://cognito-idp.${var.region}.amazonaws.com/${var.cognito_user_pool_id}"
  jwks_host = "cognito-idp.${var.region}.amazonaws.com"
  jwks_url  = "${local.issuer}/.well-known/jwks.json"

  # A volume (the root file system is read-only): debits DynamoDB could not take yet survive a
  # container restart within the task.
  spool_dir  = "/var/lib/tollgate"
  spool_path = "${local.spool_dir}/spool.redb"

  # Above shutdown_grace_seconds, so in-flight exchanges finish and debits are flushed before
  # SIGKILL.
  stop_timeout = var.shutdown_grace_seconds + 10

  # A container that exits is restarted in place, inside the same task: the task's volume, and so
  # the spool and its journal of calls admitted but not yet charged, survive a crash or an OOM
  # kill, and the restarted tollgate charges those calls before it listens. Without it an
  # essential container's exit stops the whole task, and its replacement starts with an empty
  # volume. ECS restarts a container only after it ran this long (crash-loop protection); a
  # container that fails sooner stops the task as before.
  restart_policy = { enabled = true, restartAttemptPeriod = 60 }

  # The `scope` claim of a Cognito client-credentials token, space separated.
  invoke_scope = "https://gateway.internal/invoke"
  admin_scope  = "https://gateway.internal/admin"

  # Where each provider's calls go, and how its key replaces the caller's Cognito token (read from
  # the task's environment, injected from Secrets Manager). The first matching prefix wins.
  provider_routes = [
    { prefix = "/v1/messages", cluster = "anthropic", key_header = "x-api-key", key_value = "%ENVIRONMENT(ANTHROPIC_API_KEY)%" },
    { prefix = "/v1/", cluster = "openai", key_header = "authorization", key_value = "Bearer %ENVIRONMENT(OPENAI_API_KEY)%" },
  ]

  # The fast attachment's usage, as Envoy reads it from the response: the dotted paths tollgate's
  # src/llm/usage.rs reads (REPORTED_JSON_NUMBERS: numbers of a JSON body; REPORTED_EVENT_OBJECTS:
  # objects of an event stream), each copied under its path as the key. tests/terraform fails when
  # these and usage.rs differ.
  usage_json_numbers = [
    "usage.prompt_tokens",
    "usage.completion_tokens",
    "usage.prompt_tokens_details.cached_tokens",
    "usage.input_tokens",
    "usage.output_tokens",
    "usage.input_tokens_details.cached_tokens",
    "usage.cache_read_input_tokens",
    "usage.cache_creation_input_tokens",
  ]
  usage_event_objects = ["usage", "message.usage", "response.usage"]

  envoy_yaml = templatefile("${path.module}/templates/envoy.yaml.tftpl", {
    fast                = var.envoy_attachment == "fast"
    issuer              = local.issuer
    jwks_host           = local.jwks_host
    jwks_url            = local.jwks_url
    listener_port       = local.listener_port
    admin_port          = local.envoy_admin_port
    tollgate_grpc_port  = local.tollgate_grpc_port
    tollgate_http_port  = local.tollgate_http_port
    health_check_path   = local.health_check_path
    provider_routes     = local.provider_routes
    usage_json_numbers  = local.usage_json_numbers
    usage_event_objects = local.usage_event_objects
  })

  adot_yaml = templatefile("${path.module}/templates/adot.yaml.tftpl", {
    service            = var.name
    namespace          = var.metrics_namespace
    log_group          = var.metrics_log_group
    region             = var.region
    tollgate_http_port = local.tollgate_http_port
  })

  # Settings shared by the sidecar and the functions (TOLLGATE_<SECTION>__<KEY>).
  common_environment = merge(
    {
      TOLLGATE_STORE__BACKEND          = "dynamodb"
      TOLLGATE_STORE__DYNAMODB__TABLE  = var.table_name
      TOLLGATE_STORE__DYNAMODB__REGION = var.region
      TOLLGATE_IDENTITY__ISSUER        = local.issuer
      TOLLGATE_IDENTITY__JWKS_URL      = local.jwks_url
      TOLLGATE_POLICY__FAIL_MODE       = var.fail_mode
      TOLLGATE_LOG__FORMAT             = "json"
      TOLLGATE_LOG__LEVEL              = "info"
    },
    var.team_claim == null ? {} : { TOLLGATE_IDENTITY__TEAM_CLAIM = var.team_claim },
  )

  # A published guardrail version is a number; quoted so that it reads as the string setting it
  # is, whatever tollgate's parser does with bare numbers.
  guardrail_environment = var.guardrail == null ? { TOLLGATE_GUARDRAIL__MODE = "off" } : {
    TOLLGATE_GUARDRAIL__MODE                       = var.guardrail.mode
    TOLLGATE_GUARDRAIL__BEDROCK__GUARDRAIL_ID      = var.guardrail.id
    TOLLGATE_GUARDRAIL__BEDROCK__GUARDRAIL_VERSION = "\"${var.guardrail.version}\""
    TOLLGATE_GUARDRAIL__BEDROCK__REGION            = var.region
  }

  tollgate_environment = merge(local.common_environment, local.guardrail_environment, {
    TOLLGATE_SERVER__GRPC_LISTEN            = "127.0.0.1:${local.tollgate_grpc_port}"
    TOLLGATE_SERVER__HTTP_LISTEN            = "127.0.0.1:${local.tollgate_http_port}"
    TOLLGATE_SERVER__SHUTDOWN_GRACE_SECONDS = tostring(var.shutdown_grace_seconds)
    TOLLGATE_STORE__DYNAMODB__SPOOL_PATH    = local.spool_path
  })

  lambda_environments = {
    budget-enforcement = merge(local.common_environment, local.guardrail_environment, {
      TOLLGATE_WEBHOOK__SECRET = var.webhook_secret
    })
    admin-api      = merge(local.common_environment, local.guardrail_environment)
    usage-recorder = local.common_environment
  }

  log_configuration = {
    for c in ["tollgate", "envoy", "adot"] : c => {
      logDriver = "awslogs"
      options = {
        awslogs-group         = var.log_groups[c]
        awslogs-region        = var.region
        awslogs-stream-prefix = var.name
      }
    }
  }

  container_definitions = [
    {
      name                   = "tollgate"
      image                  = var.images.tollgate
      essential              = true
      command                = ["serve"]
      user                   = "65532:65532"
      readonlyRootFilesystem = true
      stopTimeout            = local.stop_timeout
      restartPolicy          = local.restart_policy
      environment            = [for k, v in local.tollgate_environment : { name = k, value = v }]
      mountPoints            = [{ sourceVolume = "spool", containerPath = local.spool_dir, readOnly = false }]
      healthCheck = {
        command     = ["CMD", "/usr/local/bin/tollgate", "check"]
        interval    = 10
        timeout     = 5
        retries     = 3
        startPeriod = 15
      }
      logConfiguration = local.log_configuration.tollgate
    },
    {
      name                   = "envoy"
      image                  = var.images.envoy
      essential              = true
      entryPoint             = ["/usr/local/bin/envoy"]
      command                = ["--config-yaml", local.envoy_yaml, "--disable-hot-restart", "--log-level", "info"]
      user                   = "101:101"
      readonlyRootFilesystem = true
      stopTimeout            = local.stop_timeout
      restartPolicy          = local.restart_policy
      portMappings           = [{ containerPort = local.listener_port, protocol = "tcp", name = "llm" }]
      secrets                = [for k, arn in var.provider_secret_arns : { name = k, valueFrom = arn }]
      dependsOn              = [{ containerName = "tollgate", condition = "HEALTHY" }]
      ulimits                = [{ name = "nofile", softLimit = 65536, hardLimit = 65536 }]
      logConfiguration       = local.log_configuration.envoy
    },
    {
      name                   = "adot"
      image                  = var.images.adot
      essential              = false
      readonlyRootFilesystem = true
      restartPolicy          = local.restart_policy
      environment            = [{ name = "AOT_CONFIG_CONTENT", value = local.adot_yaml }]
      dependsOn              = [{ containerName = "tollgate", condition = "START" }]
      logConfiguration       = local.log_configuration.adot
    },
  ]

  # agentgateway's JSON access-log records of LLM calls; its other lines (start-up text, admin
  # calls) never reach the usage recorder.
  usage_log_filter_pattern = "{ ($.scope = \"request\") && ($.protocol = \"llm\") }"
}
