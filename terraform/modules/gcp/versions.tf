terraform {
  # 1.11: ephemeral resources and write-only arguments keep every generated secret
  # out of the state.
  required_version = ">= 1.11.0"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 6.23: write-only password_wo and secret_data_wo; 6.8: invoker_iam_disabled.
      version = ">= 6.23.0, < 8.0.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.7.0, < 4.0.0"
    }
  }
}
