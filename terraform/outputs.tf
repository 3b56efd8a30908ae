################################################################################
# Calling the gateway
################################################################################

output "gateway_dns_name" {
  description = "DNS name of the public ALB: point the certificate's name at it (CNAME or Route 53 alias)."
  value       = aws_lb.public.dns_name
}

output "gateway_zone_id" {
  description = "Hosted zone id of the public ALB, for a Route 53 alias record."
  value       = aws_lb.public.zone_id
}

output "token_endpoint" {
  description = "Cognito token endpoint: POST grant_type=client_credentials with a client's id and secret."
  value       = "https://${aws_cognito_user_pool_domain.this.domain}.auth.${local.region}.amazoncognito.com/oauth2/token"
}

output "invoke_scope" {
  description = "Scope to request for LLM calls."
  value       = local.scopes.invoke
}

output "admin_scope" {
  description = "Scope to request for the admin API."
  value       = local.scopes.admin
}

output "client_ids" {
  description = "App client ids by name: register each with a team through the admin API."
  value       = { for k, c in aws_cognito_user_pool_client.this : k => c.id }
}

output "client_secrets" {
  description = "App client secrets by name (terraform output -json client_secrets)."
  value       = { for k, c in aws_cognito_user_pool_client.this : k => c.client_secret }
  sensitive   = true
}

output "admin_api_url" {
  description = "Base URL of the admin API (tollgate admin --url ...): /admin/teams, /admin/prices, ..."
  value       = aws_apigatewayv2_api.admin.api_endpoint
}

################################################################################
# agentgateway
################################################################################

output "webhook_url" {
  description = "agentgateway's promptGuard webhook target (internal ALB; use a name the webhook certificate covers)."
  value       = "https://${aws_lb.webhook.dns_name}"
}

output "webhook_secret" {
  description = "Shared secret agentgateway must send in x-tollgate-webhook-secret."
  value       = random_password.webhook_secret.result
  sensitive   = true
}

output "agentgateway_log_group_name" {
  description = "Log group agentgateway's JSON access log must go to (the usage recorder is subscribed to it)."
  value       = local.agentgateway_log_group_name
}

################################################################################
# Issuer and state
################################################################################

output "cognito_user_pool_id" {
  description = "The Cognito user pool."
  value       = aws_cognito_user_pool.this.id
}

output "issuer" {
  description = "Issuer of the pool's access tokens (checked by the ALB, Envoy and tollgate)."
  value       = module.render.issuer
}

output "dynamodb_table_name" {
  description = "tollgate's DynamoDB table."
  value       = aws_dynamodb_table.this.name
}

output "guardrail_id" {
  description = "Bedrock guardrail id (null when guardrails are off)."
  value       = try(aws_bedrock_guardrail.this[0].guardrail_id, null)
}

output "guardrail_version" {
  description = "Published guardrail version tollgate calls (null when guardrails are off)."
  value       = try(aws_bedrock_guardrail_version.this[0].version, null)
}

output "kms_key_arn" {
  description = "Customer managed key of the table, logs, Lambda environments and failure queue."
  value       = aws_kms_key.this.arn
}

################################################################################
# Operations
################################################################################

output "ecs_cluster_name" {
  description = "ECS cluster of the tasks."
  value       = aws_ecs_cluster.this.name
}

output "ecs_service_name" {
  description = "ECS service running Envoy + tollgate."
  value       = aws_ecs_service.this.name
}

output "lambda_function_names" {
  description = "Lambda function names by role (budget-enforcement, admin-api, usage-recorder)."
  value       = { for k, f in aws_lambda_function.this : k => f.function_name }
}

output "usage_failures_queue_url" {
  description = "SQS queue holding access-log batches the usage recorder failed on after retries."
  value       = aws_sqs_queue.usage_failures.url
}

output "web_acl_arn" {
  description = "WAF web ACL on the public ALB."
  value       = aws_wafv2_web_acl.this.arn
}
