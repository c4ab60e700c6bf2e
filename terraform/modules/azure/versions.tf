terraform {
  # 1.11: ephemeral resources and write-only arguments keep every generated secret
  # out of the state.
  required_version = ">= 1.11.0"

  required_providers {
    azurerm = {
      source = "hashicorp/azurerm"
      # 4.23: write-only value_wo on Key Vault secrets (4.21: administrator_password_wo).
      version = ">= 4.23.0, < 5.0.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.7.0, < 4.0.0"
    }
  }
}
