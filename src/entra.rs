//! Microsoft Entra ID sign-in from the environment, one chain for every Azure service we call
//! (Event Hubs, Azure Health Data Services' FHIR service).
//!
//! The identity is whichever the environment describes, in this order: a service principal
//! (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`), workload identity on AKS
//! (`AZURE_FEDERATED_TOKEN_FILE`), else the managed identity of the Azure compute it runs on
//! (`AZURE_CLIENT_ID` picks a user-assigned one). Secrets come only from the environment.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;

/// The credential the environment describes (see the module docs).
pub fn credential_from_env() -> azure_core::Result<Arc<dyn TokenCredential>> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    Ok(
        match (
            var("AZURE_TENANT_ID"),
            var("AZURE_CLIENT_ID"),
            var("AZURE_CLIENT_SECRET"),
        ) {
            (Some(tenant), Some(client), Some(secret)) => {
                azure_identity::ClientSecretCredential::new(&tenant, client, secret.into(), None)?
            }
            _ if var("AZURE_FEDERATED_TOKEN_FILE").is_some() => {
                azure_identity::WorkloadIdentityCredential::new(None)?
            }
            (_, client, _) => {
                let options = azure_identity::ManagedIdentityCredentialOptions {
                    user_assigned_id: client.map(azure_identity::UserAssignedId::ClientId),
                    ..Default::default()
                };
                azure_identity::ManagedIdentityCredential::new(Some(options))?
            }
        },
    )
}
