terraform {
  required_version = ">= 1.11.0"

  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = ">= 4.23.0, < 5.0.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.7.0, < 4.0.0"
    }
  }
}

provider "azurerm" {
  subscription_id = var.subscription_id
  # The storage account has shared keys off: the provider uses Entra ID for it.
  storage_use_azuread = true
  features {}
}
