terraform {
  # Cross-variable validation (1.9) and optional object attributes with defaults.
  required_version = ">= 1.9"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.22 is the first with the ALB's jwt-validation action; tests/terraform checks every
      # argument here against both 6.22.1 and the newest 6.x schema.
      version = ">= 6.22, < 7.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.6, < 4.0"
    }
  }
}
