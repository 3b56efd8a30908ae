# The public door: HTTPS only (port 80, if any, only redirects). The one rule that forwards,
# /v1/*, validates the caller's Cognito access token first (jwt-validation: signature against the
# pool's JWKS, issuer, expiry, and the invoke scope in the space-separated `scope` claim), so
# nothing reaches the tasks without a token check. Anything else gets a fixed 404.

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "${var.name} public ALB: HTTPS from clients"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each = toset(var.allowed_cidr_blocks)

  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from clients"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "alb_http_redirect" {
  for_each = var.http_redirect ? toset(var.allowed_cidr_blocks) : toset([])

  security_group_id = aws_security_group.alb.id
  description       = "HTTP, answered only with a redirect to HTTPS"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "alb_to_tasks" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To Envoy in the tasks"
  ip_protocol                  = "tcp"
  from_port                    = module.render.listener_port
  to_port                      = module.render.listener_port
  referenced_security_group_id = aws_security_group.tasks.id
}

resource "aws_lb" "public" {
  #checkov:skip=CKV2_AWS_76:the web ACL has AWSManagedRulesKnownBadInputsRuleSet (Log4j) through local.waf_managed_rule_groups, which checkov does not expand; tests/terraform checks it
  name               = "${var.name}-public"
  load_balancer_type = "application"
  internal           = false
  subnets            = var.public_subnet_ids
  security_groups    = [aws_security_group.alb.id]

  idle_timeout               = var.alb_idle_timeout_seconds
  drop_invalid_header_fields = true
  enable_deletion_protection = var.alb_deletion_protection

  dynamic "access_logs" {
    for_each = var.alb_access_logs_bucket == null ? [] : [var.alb_access_logs_bucket]
    content {
      bucket  = access_logs.value
      prefix  = "${var.name}/public"
      enabled = true
    }
  }

  tags = local.tags
}

resource "aws_lb_target_group" "envoy" {
  #checkov:skip=CKV_AWS_378:ALB to Envoy stays inside the VPC (the tasks admit only the ALB's security group); TLS ends at the ALB, which does not verify target certificates
  name                 = "${var.name}-envoy"
  vpc_id               = var.vpc_id
  target_type          = "ip"
  protocol             = "HTTP"
  port                 = module.render.listener_port
  deregistration_delay = var.deregistration_delay_seconds

  # Envoy answers the path from tollgate's /readyz: a target is healthy only when both are.
  health_check {
    enabled             = true
    protocol            = "HTTP"
    port                = "traffic-port"
    path                = module.render.health_check_path
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = local.tags
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.public.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = var.ssl_policy
  certificate_arn   = var.certificate_arn

  default_action {
    type = "fixed-response"
    fixed_response {
      content_type = "application/json"
      message_body = "{\"error\":\"not found\"}"
      status_code  = "404"
    }
  }

  tags = local.tags
}

resource "aws_lb_listener" "http_redirect" {
  count = var.http_redirect ? 1 : 0

  load_balancer_arn = aws_lb.public.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type = "redirect"
    redirect {
      protocol    = "HTTPS"
      port        = "443"
      status_code = "HTTP_301"
    }
  }

  tags = local.tags
}

resource "aws_lb_listener_rule" "llm" {
  listener_arn = aws_lb_listener.https.arn
  priority     = 10

  action {
    type  = "jwt-validation"
    order = 1
    jwt_validation {
      issuer        = module.render.issuer
      jwks_endpoint = module.render.jwks_url
      # Cognito's scope claim is one space-separated string: "string-array" would never match.
      additional_claim {
        name   = "scope"
        format = "space-separated-values"
        values = [local.scopes.invoke]
      }
    }
  }

  action {
    type             = "forward"
    order            = 2
    target_group_arn = aws_lb_target_group.envoy.arn
  }

  condition {
    path_pattern {
      values = ["/v1/*"]
    }
  }

  tags = local.tags
}

################################################################################
# Internal ALB: agentgateway's promptGuard webhook -> budget-enforcement (Lambda)
################################################################################

# agentgateway cannot sign requests (no SigV4), so the function is not behind an IAM-authenticated
# URL: an internal ALB reachable only from the VPC, and the shared webhook secret that the
# function checks on every call (with the caller's token, which it verifies itself).

resource "aws_security_group" "webhook" {
  name        = "${var.name}-webhook"
  description = "${var.name} internal webhook ALB: HTTPS from agentgateway"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "webhook_https" {
  for_each = toset(coalesce(var.webhook_allowed_cidr_blocks, [data.aws_vpc.this.cidr_block]))

  security_group_id = aws_security_group.webhook.id
  description       = "HTTPS from agentgateway"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
}

resource "aws_lb" "webhook" {
  name               = "${var.name}-webhook"
  load_balancer_type = "application"
  internal           = true
  subnets            = var.private_subnet_ids
  security_groups    = [aws_security_group.webhook.id]

  drop_invalid_header_fields = true
  enable_deletion_protection = var.alb_deletion_protection

  dynamic "access_logs" {
    for_each = var.alb_access_logs_bucket == null ? [] : [var.alb_access_logs_bucket]
    content {
      bucket  = access_logs.value
      prefix  = "${var.name}/webhook"
      enabled = true
    }
  }

  tags = local.tags
}

resource "aws_lb_target_group" "budget_enforcement" {
  name        = "${var.name}-webhook"
  target_type = "lambda"
  tags        = local.tags
}

resource "aws_lb_target_group_attachment" "budget_enforcement" {
  target_group_arn = aws_lb_target_group.budget_enforcement.arn
  target_id        = aws_lambda_function.this["budget-enforcement"].arn
  depends_on       = [aws_lambda_permission.webhook_alb]
}

resource "aws_lb_listener" "webhook" {
  load_balancer_arn = aws_lb.webhook.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = var.ssl_policy
  certificate_arn   = coalesce(var.webhook_certificate_arn, var.certificate_arn)

  default_action {
    type = "fixed-response"
    fixed_response {
      content_type = "application/json"
      message_body = "{\"error\":\"not found\"}"
      status_code  = "404"
    }
  }

  tags = local.tags
}

resource "aws_lb_listener_rule" "webhook" {
  listener_arn = aws_lb_listener.webhook.arn
  priority     = 10

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.budget_enforcement.arn
  }

  condition {
    path_pattern {
      values = ["/request", "/response"]
    }
  }

  condition {
    http_request_method {
      values = ["POST"]
    }
  }

  tags = local.tags
}
