//! Signing in to a FHIR server: none, SMART Backend Services, or Microsoft Entra ID.
//!
//! SMART Backend Services (<https://hl7.org/fhir/smart-app-launch/backend-services.html>): the
//! token endpoint comes from `[base]/.well-known/smart-configuration`; the client proves who it is
//! with a JWT signed by its private key (RS384 for an RSA key, ES384 for a P-384 key), exchanged
//! for an access token with `grant_type=client_credentials`. Microsoft Entra ID (Azure Health Data
//! Services) uses the credential chain of [`crate::entra`] and the scope `<FHIR service>/.default`.
//! Secrets come only from the environment or a key file, never from flags or the lake.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use url::Url;

use super::FhirServerError;

pub const CLIENT_ID_VAR: &str = "VITALAKE_FHIR_CLIENT_ID";
pub const KEY_ID_VAR: &str = "VITALAKE_FHIR_KEY_ID";
/// The private key as PEM text ...
pub const PRIVATE_KEY_VAR: &str = "VITALAKE_FHIR_PRIVATE_KEY";
/// ... or the path of a PEM key file.
pub const PRIVATE_KEY_FILE_VAR: &str = "VITALAKE_FHIR_PRIVATE_KEY_FILE";

/// How `vitalake ingest fhir-server` signs in (`--auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthKind {
    /// An open server (a test server, or one behind a network boundary).
    #[default]
    None,
    /// SMART Backend Services: client id and private key from the environment.
    Smart,
    /// Microsoft Entra ID: the identity the environment describes.
    Entra,
}

impl std::str::FromStr for AuthKind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "none" => Ok(AuthKind::None),
            "smart" => Ok(AuthKind::Smart),
            "entra" => Ok(AuthKind::Entra),
            other => Err(format!("'{other}' is not none, smart or entra")),
        }
    }
}

/// A way to get access tokens, ready to use.
pub enum Auth {
    None,
    /// Boxed: the key pair is large, and `None` is the common case.
    Smart(Box<SmartClient>),
    Entra {
        credential: Arc<dyn azure_core::credentials::TokenCredential>,
        scope: String,
    },
}

/// An access token and when to stop using it.
#[derive(Clone)]
pub struct Token {
    pub value: String,
    pub renew_at: Instant,
}

/// A token is renewed this long before it expires, so a request never carries a stale one.
const RENEW_EARLY: Duration = Duration::from_secs(30);

impl Auth {
    /// Sets up `kind` for the FHIR server at `base`; `scope` is the SMART scope asked for.
    pub fn from_env(kind: AuthKind, base: &Url, scope: &str) -> Result<Auth, FhirServerError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        match kind {
            AuthKind::None => Ok(Auth::None),
            AuthKind::Entra => {
                let credential = crate::entra::credential_from_env().map_err(|e| {
                    FhirServerError::Setup(format!("setting up the Entra ID credential: {e}"))
                })?;
                Ok(Auth::Entra {
                    credential,
                    scope: entra_scope(base),
                })
            }
            AuthKind::Smart => {
                let missing = |name: &str| {
                    FhirServerError::Setup(format!(
                        "--auth smart needs {name} in the environment (the client registered with the FHIR server)"
                    ))
                };
                let client_id = var(CLIENT_ID_VAR).ok_or_else(|| missing(CLIENT_ID_VAR))?;
                let key_id = var(KEY_ID_VAR).ok_or_else(|| missing(KEY_ID_VAR))?;
                let pem = match (var(PRIVATE_KEY_VAR), var(PRIVATE_KEY_FILE_VAR)) {
                    (Some(text), _) => text,
                    (None, Some(path)) => std::fs::read_to_string(&path).map_err(|e| {
                        FhirServerError::Setup(format!(
                            "reading the private key file {path} ({PRIVATE_KEY_FILE_VAR}): {e}"
                        ))
                    })?,
                    (None, None) => {
                        return Err(missing(&format!(
                            "{PRIVATE_KEY_FILE_VAR} (a PEM key file) or {PRIVATE_KEY_VAR}"
                        )));
                    }
                };
                Ok(Auth::Smart(Box::new(SmartClient {
                    client_id,
                    key_id,
                    key: SigningKey::from_pem(&pem)?,
                    scope: scope.to_string(),
                })))
            }
        }
    }

    /// A new access token, or `None` for an open server.
    pub async fn token(
        &self,
        http: &reqwest::Client,
        base: &Url,
    ) -> Result<Option<Token>, FhirServerError> {
        match self {
            Auth::None => Ok(None),
            Auth::Smart(client) => client.token(http, base).await.map(Some),
            Auth::Entra { credential, scope } => {
                let token = credential
                    .get_token(&[scope.as_str()], None)
                    .await
                    .map_err(|e| FhirServerError::Auth(format!("Entra ID: {e}")))?;
                let left = token.expires_on - azure_core::time::OffsetDateTime::now_utc();
                let left = Duration::from_secs(left.whole_seconds().max(0) as u64);
                Ok(Some(Token {
                    value: token.token.secret().to_string(),
                    renew_at: Instant::now() + left.saturating_sub(RENEW_EARLY),
                }))
            }
        }
    }
}

/// Azure Health Data Services takes tokens for the FHIR service's own origin.
fn entra_scope(base: &Url) -> String {
    format!("{}/.default", base.origin().ascii_serialization())
}

/// A SMART Backend Services client: who it is and the key it signs with.
pub struct SmartClient {
    client_id: String,
    key_id: String,
    key: SigningKey,
    scope: String,
}

impl SmartClient {
    async fn token(&self, http: &reqwest::Client, base: &Url) -> Result<Token, FhirServerError> {
        let token_url = token_endpoint(http, base).await?;
        let assertion = self.assertion(&token_url, chrono::Utc::now().timestamp())?;
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("scope", &self.scope)
            .append_pair("grant_type", "client_credentials")
            .append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            .append_pair("client_assertion", &assertion)
            .finish();
        let response = http
            .post(token_url.as_str())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| FhirServerError::Auth(format!("token request to {token_url}: {e}")))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| FhirServerError::Auth(format!("token response from {token_url}: {e}")))?;
        if !status.is_success() {
            // An OAuth error response names the problem (`invalid_client`, `invalid_scope`).
            let reason = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| {
                    let error = v.get("error")?.as_str()?.to_string();
                    let description = v.get("error_description").and_then(|d| d.as_str());
                    Some(match description {
                        Some(d) => format!("{error}: {d}"),
                        None => error,
                    })
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
            return Err(FhirServerError::Auth(format!(
                "the token endpoint {token_url} refused client '{}' ({status}): {reason}",
                self.client_id
            )));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: String,
            expires_in: Option<u64>,
        }
        let answer: TokenResponse = serde_json::from_slice(&bytes).map_err(|e| {
            FhirServerError::Auth(format!("the token endpoint {token_url} answered: {e}"))
        })?;
        let left = Duration::from_secs(answer.expires_in.unwrap_or(300));
        Ok(Token {
            value: answer.access_token,
            renew_at: Instant::now() + left.saturating_sub(RENEW_EARLY),
        })
    }

    /// The signed JWT that authenticates this client at `token_url`, valid for five minutes (the
    /// longest the specification allows).
    fn assertion(&self, token_url: &Url, now: i64) -> Result<String, FhirServerError> {
        let header =
            serde_json::json!({"alg": self.key.algorithm(), "typ": "JWT", "kid": self.key_id});
        let claims = serde_json::json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_url.as_str(),
            "exp": now + 300,
            "jti": uuid::Uuid::now_v7().to_string(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.key.sign(signing_input.as_bytes())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

/// The server's token endpoint, from its SMART configuration.
async fn token_endpoint(http: &reqwest::Client, base: &Url) -> Result<Url, FhirServerError> {
    let url = super::client::join(base, ".well-known/smart-configuration");
    let failed = |reason: String| {
        FhirServerError::Auth(format!(
            "reading the SMART configuration {url}: {reason} (is this a SMART Backend Services server?)"
        ))
    };
    let response = http
        .get(url.as_str())
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !response.status().is_success() {
        return Err(failed(response.status().to_string()));
    }
    let bytes = response.bytes().await.map_err(|e| failed(e.to_string()))?;
    let configuration: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| failed(e.to_string()))?;
    let endpoint = configuration
        .get("token_endpoint")
        .and_then(|v| v.as_str())
        .ok_or_else(|| failed("no token_endpoint".into()))?;
    Url::parse(endpoint).map_err(|e| failed(format!("token_endpoint '{endpoint}': {e}")))
}

/// A private key that signs client assertions.
pub enum SigningKey {
    /// RS384: RSASSA-PKCS1-v1_5 with SHA-384.
    Rsa(RsaKeyPair),
    /// ES384: ECDSA on P-384 with SHA-384.
    Ec(EcdsaKeyPair),
}

impl SigningKey {
    /// An RSA key (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`) or a P-384 key (PKCS#8).
    pub fn from_pem(text: &str) -> Result<SigningKey, FhirServerError> {
        let bad = |reason: String| FhirServerError::Setup(format!("the private key: {reason}"));
        let pem = pem::parse(text).map_err(|e| bad(format!("not a PEM key ({e})")))?;
        let der = pem.contents();
        match pem.tag() {
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(der)
                .map(SigningKey::Rsa)
                .map_err(|e| bad(format!("not a usable RSA key: {e}"))),
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(der)
                .map(SigningKey::Rsa)
                .or_else(|_| {
                    EcdsaKeyPair::from_pkcs8(
                        &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                        der,
                        &SystemRandom::new(),
                    )
                    .map(SigningKey::Ec)
                })
                .map_err(|_| {
                    bad("neither an RSA key (2048 bits or more) nor an EC P-384 key (SMART asks for RS384 or ES384)".into())
                }),
            "EC PRIVATE KEY" => Err(bad(
                "an EC key in SEC1 form: convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8`".into(),
            )),
            "ENCRYPTED PRIVATE KEY" => Err(bad(
                "encrypted: give an unencrypted PKCS#8 key, kept where only this service reads it".into(),
            )),
            tag => Err(bad(format!("a PEM '{tag}', not a private key"))),
        }
    }

    /// The JWS `alg` this key signs with.
    pub fn algorithm(&self) -> &'static str {
        match self {
            SigningKey::Rsa(_) => "RS384",
            SigningKey::Ec(_) => "ES384",
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, FhirServerError> {
        let failed = |_| FhirServerError::Setup("signing the client assertion failed".into());
        let rng = SystemRandom::new();
        match self {
            SigningKey::Rsa(key) => {
                let mut signature = vec![0; key.public().modulus_len()];
                key.sign(&signature::RSA_PKCS1_SHA384, &rng, message, &mut signature)
                    .map_err(failed)?;
                Ok(signature)
            }
            SigningKey::Ec(key) => Ok(key.sign(&rng, message).map_err(failed)?.as_ref().to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair;

    #[test]
    fn the_client_assertion_is_an_es384_jwt_the_server_can_verify() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .unwrap();
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
        let key = SigningKey::from_pem(&pem).unwrap();
        assert_eq!(key.algorithm(), "ES384");
        let public = match &key {
            SigningKey::Ec(pair) => pair.public_key().as_ref().to_vec(),
            SigningKey::Rsa(_) => unreachable!(),
        };
        let client = SmartClient {
            client_id: "lake-loader".into(),
            key_id: "k1".into(),
            key,
            scope: "system/*.read".into(),
        };
        let token_url = Url::parse("https://auth.example.org/token").unwrap();
        let jwt = client.assertion(&token_url, 1_000_000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |part: &str| -> serde_json::Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
        };
        let (header, claims) = (decode(parts[0]), decode(parts[1]));
        assert_eq!(header["alg"], "ES384");
        assert_eq!(header["kid"], "k1");
        assert_eq!(claims["iss"], "lake-loader");
        assert_eq!(claims["sub"], "lake-loader");
        assert_eq!(claims["aud"], "https://auth.example.org/token");
        assert_eq!(claims["exp"], 1_000_300);
        let signed = format!("{}.{}", parts[0], parts[1]);
        signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, public)
            .verify(
                signed.as_bytes(),
                &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
            )
            .expect("the signature verifies with the public key");
    }

    #[test]
    fn keys_we_cannot_use_say_what_to_do() {
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        let err = SigningKey::from_pem(sec1).err().unwrap().to_string();
        assert!(err.contains("openssl pkcs8 -topk8"), "{err}");
        let p256 = EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &SystemRandom::new(),
        )
        .unwrap();
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", p256.as_ref().to_vec()));
        let err = SigningKey::from_pem(&pem).err().unwrap().to_string();
        assert!(err.contains("RS384 or ES384"), "{err}");
        assert!(SigningKey::from_pem("not pem").is_err());
    }

    #[test]
    fn entra_asks_for_the_fhir_service_itself() {
        let base = Url::parse("https://ws-fhir.fhir.azurehealthcareapis.com/").unwrap();
        assert_eq!(
            entra_scope(&base),
            "https://ws-fhir.fhir.azurehealthcareapis.com/.default"
        );
    }
}
