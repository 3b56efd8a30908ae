# Who may call: Cognito app clients with the client_credentials grant. Their access tokens carry
# client_id and a space-separated scope claim; tollgate maps client_id to a team (registered
# through the admin API) unless a pre-token-generation trigger adds a team claim.

locals {
  # tollgate requires exactly these scopes (src/identity): the resource server's identifier is
  # fixed with them.
  resource_server = "https://gateway.internal"
  scopes = {
    invoke = module.render.invoke_scope
    admin  = module.render.admin_scope
  }
  admin_clients = [for name, c in var.cognito_clients : name if contains(c.scopes, "admin")]
}

resource "aws_cognito_user_pool" "this" {
  name                = var.name
  user_pool_tier      = var.cognito_user_pool_tier
  deletion_protection = "ACTIVE"

  # No users sign in here (machine clients only); should any be added, they need strong passwords.
  admin_create_user_config {
    allow_admin_create_user_only = true
  }

  password_policy {
    minimum_length    = 16
    require_lowercase = true
    require_numbers   = true
    require_symbols   = true
    require_uppercase = true
  }

  dynamic "lambda_config" {
    for_each = var.pre_token_generation_lambda_arn == null ? [] : [var.pre_token_generation_lambda_arn]
    content {
      # V3_0: the only trigger version Cognito invokes for client-credentials tokens.
      pre_token_generation_config {
        lambda_arn     = lambda_config.value
        lambda_version = "V3_0"
      }
    }
  }

  tags = local.tags
}

resource "aws_cognito_user_pool_domain" "this" {
  domain       = var.cognito_domain_prefix
  user_pool_id = aws_cognito_user_pool.this.id
}

resource "aws_cognito_resource_server" "this" {
  identifier   = local.resource_server
  name         = "${var.name} gateway"
  user_pool_id = aws_cognito_user_pool.this.id

  scope {
    scope_name        = "invoke"
    scope_description = "Call LLM providers through the gateway"
  }

  scope {
    scope_name        = "admin"
    scope_description = "Manage teams, budgets and prices (admin API)"
  }
}

resource "aws_cognito_user_pool_client" "this" {
  for_each = var.cognito_clients

  name            = each.key
  user_pool_id    = aws_cognito_user_pool.this.id
  generate_secret = true

  allowed_oauth_flows                  = ["client_credentials"]
  allowed_oauth_flows_user_pool_client = true
  allowed_oauth_scopes                 = [for s in each.value.scopes : local.scopes[s]]
  supported_identity_providers         = ["COGNITO"]
  explicit_auth_flows                  = ["ALLOW_REFRESH_TOKEN_AUTH"]
  prevent_user_existence_errors        = "ENABLED"
  enable_token_revocation              = true

  access_token_validity = each.value.access_token_validity_minutes
  token_validity_units {
    access_token = "minutes"
  }

  # Scopes must exist on the resource server before a client may be given them.
  depends_on = [aws_cognito_resource_server.this]
}
