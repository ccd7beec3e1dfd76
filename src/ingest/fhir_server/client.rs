//! The FHIR Bulk Data Access conversation (<https://hl7.org/fhir/uv/bulkdata/export.html>):
//! kick-off, status polls, the completion manifest, downloads, and deleting the job.
//!
//! Every request goes through [`Server::send`], which holds the retry policy: a `401` gets a new
//! token once; `429` and (where the request may be repeated) `5xx` and broken connections are
//! retried, waiting as long as `Retry-After` says or backing off; anything else is returned for the
//! caller to read. A download that breaks off is started again in a new file.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use url::Url;

use super::FhirServerError;
use super::auth::{Auth, Token};

/// How hard requests are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Tries of one request before its failure is final.
    pub attempts: u32,
    /// The first wait when the server gives no `Retry-After`; doubled each time.
    pub backoff: Duration,
    /// The longest wait between status polls, and the cap on any `Retry-After`.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            backoff: Duration::from_secs(1),
            max_wait: Duration::from_secs(120),
        }
    }
}

/// `base` joined with a relative `path`, whether or not `base` ends in `/`.
pub fn join(base: &Url, path: &str) -> Url {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    base.join(path).expect("a relative path joins a base URL")
}

/// A FHIR server and a way to sign in to it.
pub struct Server {
    http: reqwest::Client,
    base: Url,
    auth: Arc<Auth>,
    token: Mutex<Option<Token>>,
    retry: RetryPolicy,
}

/// The answer to one status poll.
pub enum Status {
    /// Still running; `X-Progress` if the server said, and when to ask again.
    InProgress {
        progress: Option<String>,
        wait: Duration,
    },
    Complete(Manifest),
    /// The server no longer knows the job (deleted, or expired).
    Gone,
    /// The job failed; the server's message.
    Failed(String),
}

/// The completion manifest.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The instant the export reflects: the `_since` of the next incremental export.
    pub transaction_time: String,
    #[serde(default)]
    pub requires_access_token: bool,
    #[serde(default)]
    pub output: Vec<OutputFile>,
    /// Files of OperationOutcomes the server wrote about resources it could not export.
    #[serde(default)]
    pub error: Vec<OutputFile>,
    /// Bundles of deleted resources (Bulk Data 2.0, with `_since`).
    #[serde(default)]
    pub deleted: Vec<OutputFile>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct OutputFile {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub url: String,
}

/// A file on local disk, as the server sent it.
pub struct Download {
    pub bytes: u64,
    pub sha256: String,
}

impl Server {
    pub fn new(base: Url, auth: Arc<Auth>, retry: RetryPolicy) -> Result<Server, FhirServerError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            // A stalled transfer is a broken one; a slow server still has five minutes a read.
            .read_timeout(Duration::from_secs(300))
            .user_agent(concat!("vitalake/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FhirServerError::Setup(format!("setting up the HTTP client: {e}")))?;
        Ok(Server {
            http,
            base,
            auth,
            token: Mutex::new(None),
            retry,
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Starts an export at `request` (the kick-off URL with its parameters); returns the status URL.
    pub async fn kick_off(&self, request: &Url) -> Result<Url, FhirServerError> {
        let response = self
            .send(request, true, true, |http| {
                http.get(request.as_str())
                    .header("Accept", "application/fhir+json")
                    .header("Prefer", "respond-async")
            })
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(status_error(request, response).await);
        }
        let location = response
            .headers()
            .get("Content-Location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| FhirServerError::Protocol {
                url: request.to_string(),
                reason: "202 Accepted without a Content-Location (the status URL)".into(),
            })?;
        request
            .join(location)
            .map_err(|e| FhirServerError::Protocol {
                url: request.to_string(),
                reason: format!("Content-Location '{location}': {e}"),
            })
    }

    /// Asks how the job at `status` is doing.
    pub async fn poll(&self, status: &Url, waited: Duration) -> Result<Status, FhirServerError> {
        // A failed job answers with an error status: those are read here, not retried.
        let response = self
            .send(status, true, false, |http| {
                http.get(status.as_str())
                    .header("Accept", "application/json")
            })
            .await?;
        let code = response.status();
        let retry_after = retry_after(&response);
        match code {
            StatusCode::ACCEPTED => {
                let progress = response
                    .headers()
                    .get("X-Progress")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                // Without Retry-After, ask again soon at first and less often as the job goes on.
                let wait = retry_after
                    .unwrap_or_else(|| (waited / 10).max(self.retry.backoff))
                    .min(self.retry.max_wait);
                Ok(Status::InProgress { progress, wait })
            }
            StatusCode::OK => {
                let bytes = response.bytes().await.map_err(|e| FhirServerError::Http {
                    url: status.to_string(),
                    reason: e.to_string(),
                })?;
                serde_json::from_slice(&bytes)
                    .map(Status::Complete)
                    .map_err(|e| FhirServerError::Protocol {
                        url: status.to_string(),
                        reason: format!("the completion manifest: {e}"),
                    })
            }
            StatusCode::NOT_FOUND | StatusCode::GONE => Ok(Status::Gone),
            _ => {
                let (message, transient) = outcome_of(response).await;
                if transient {
                    // The poll failed, not the job (the spec's `transient` issue code).
                    return Ok(Status::InProgress {
                        progress: None,
                        wait: retry_after.unwrap_or(self.retry.backoff),
                    });
                }
                Ok(Status::Failed(format!("{code}: {message}")))
            }
        }
    }

    /// Downloads `url` into `path`, sending the access token if the manifest asks for it.
    pub async fn download(
        &self,
        url: &Url,
        path: &Path,
        with_token: bool,
    ) -> Result<Download, FhirServerError> {
        let mut attempt = 1;
        loop {
            match self.download_once(url, path, with_token).await {
                Ok(download) => return Ok(download),
                Err(broken @ FhirServerError::Http { .. }) if attempt < self.retry.attempts => {
                    tracing::warn!(attempt, error = %broken, "download broke off; starting it again");
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn download_once(
        &self,
        url: &Url,
        path: &Path,
        with_token: bool,
    ) -> Result<Download, FhirServerError> {
        let response = self
            .send(url, with_token, true, |http| {
                http.get(url.as_str())
                    .header("Accept", "application/fhir+ndjson")
            })
            .await?;
        if !response.status().is_success() {
            return Err(status_error(url, response).await);
        }
        let broken = |reason: String| FhirServerError::Http {
            url: url.to_string(),
            reason,
        };
        let local = |e: std::io::Error| FhirServerError::Download {
            path: path.display().to_string(),
            source: e,
        };
        let mut file = tokio::fs::File::create(path).await.map_err(local)?;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| broken(format!("the transfer broke off: {}", describe(&e))))?;
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(local)?;
        }
        file.flush().await.map_err(local)?;
        Ok(Download {
            bytes,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    /// Tells the server the files are no longer needed. A failure only leaves them to expire.
    pub async fn delete(&self, status: &Url) -> Result<(), FhirServerError> {
        let response = self
            .send(status, true, true, |http| {
                http.request(Method::DELETE, status.as_str())
            })
            .await?;
        if response.status().is_success() || response.status() == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(status_error(status, response).await)
        }
    }

    /// Sends the request `build` makes, signing in and retrying as the module docs say.
    async fn send(
        &self,
        url: &Url,
        with_token: bool,
        retry_server_errors: bool,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, FhirServerError> {
        let mut attempt = 1;
        let mut signed_in_again = false;
        loop {
            let mut request = build(&self.http);
            let token = match with_token {
                true => self.token().await?,
                false => None,
            };
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let last = attempt >= self.retry.attempts;
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) if !last && (e.is_connect() || e.is_timeout() || e.is_request()) => {
                    tracing::warn!(
                        attempt,
                        error = describe(&e),
                        "request failed; trying again"
                    );
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
                Err(e) => {
                    return Err(FhirServerError::Http {
                        url: url.to_string(),
                        reason: format!(
                            "{} (try {attempt} of {})",
                            describe(&e),
                            self.retry.attempts
                        ),
                    });
                }
            };
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && token.is_some() && !signed_in_again {
                // The token expired or was revoked early: one new one, then the 401 stands.
                tracing::info!("the server refused the access token; signing in again");
                self.renew(token.as_deref()).await?;
                signed_in_again = true;
                continue;
            }
            let retryable = status == StatusCode::TOO_MANY_REQUESTS
                || (retry_server_errors && status.is_server_error());
            if retryable && !last {
                let wait = retry_after(&response)
                    .unwrap_or_else(|| self.backoff(attempt))
                    .min(self.retry.max_wait);
                tracing::warn!(
                    attempt,
                    status = status.as_u16(),
                    wait_ms = wait.as_millis() as u64,
                    "the server asked to try again later"
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
                continue;
            }
            return Ok(response);
        }
    }

    /// The current access token, a new one when it is due.
    async fn token(&self) -> Result<Option<String>, FhirServerError> {
        let mut held = self.token.lock().await;
        if held.as_ref().is_none_or(|t| Instant::now() >= t.renew_at) {
            *held = self.auth.token(&self.http, &self.base).await?;
        }
        Ok(held.as_ref().map(|t| t.value.clone()))
    }

    /// Signs in again after `refused` was refused, unless a request running beside this one has
    /// already replaced it: parallel downloads refused together sign in once.
    async fn renew(&self, refused: Option<&str>) -> Result<(), FhirServerError> {
        let mut held = self.token.lock().await;
        if held.as_ref().map(|t| t.value.as_str()) == refused {
            *held = self.auth.token(&self.http, &self.base).await?;
        }
        Ok(())
    }

    fn backoff(&self, attempt: u32) -> Duration {
        (self.retry.backoff * 2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.retry.max_wait)
    }
}

/// A reqwest error with its causes ("connection refused" sits two levels down).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After` as seconds or as an HTTP date.
fn retry_after(response: &Response) -> Option<Duration> {
    let value = response.headers().get("Retry-After")?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or_default(),
    )
}

/// The error for a response the conversation did not expect, in words a person can act on.
async fn status_error(url: &Url, response: Response) -> FhirServerError {
    let status = response.status();
    let (message, _) = outcome_of(response).await;
    let hint = match status {
        StatusCode::UNAUTHORIZED => {
            " (the server refused the sign-in even with a new token: check --auth and the client's credentials)"
        }
        StatusCode::FORBIDDEN => {
            " (signed in, but not allowed: the client needs a scope such as system/*.read, or access to this Group)"
        }
        StatusCode::TOO_MANY_REQUESTS => " (still throttled after every retry: run again later)",
        s if s.is_server_error() => {
            " (the server failed after every retry: run again later; the job resumes)"
        }
        _ => "",
    };
    FhirServerError::Status {
        url: url.to_string(),
        status: status.as_u16(),
        message: format!("{message}{hint}"),
    }
}

/// The issues of an OperationOutcome body as one line, and whether any is `transient`; a body that
/// is no OperationOutcome is quoted (cut short).
async fn outcome_of(response: Response) -> (String, bool) {
    let status = response.status();
    let bytes = response.bytes().await.unwrap_or_default();
    let outcome: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
    let issues = outcome
        .as_ref()
        .filter(|o| o["resourceType"] == "OperationOutcome")
        .and_then(|o| o["issue"].as_array());
    match issues {
        Some(issues) => {
            let transient = issues.iter().any(|i| i["code"] == "transient");
            let text = issues
                .iter()
                .map(|i| {
                    let code = i["code"].as_str().unwrap_or("?");
                    let said = i["diagnostics"]
                        .as_str()
                        .or_else(|| i["details"]["text"].as_str())
                        .unwrap_or("");
                    format!("{code}: {said}")
                })
                .collect::<Vec<_>>()
                .join("; ");
            (text, transient)
        }
        None if bytes.is_empty() => (status.canonical_reason().unwrap_or("").to_string(), false),
        None => (
            String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            false,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_keeps_the_base_path() {
        let with = Url::parse("https://fhir.example.org/r4/").unwrap();
        let without = Url::parse("https://fhir.example.org/r4").unwrap();
        for base in [with, without] {
            assert_eq!(
                join(&base, "Group/g1/$export").as_str(),
                "https://fhir.example.org/r4/Group/g1/$export"
            );
        }
    }

    #[test]
    fn the_manifest_reads_as_the_spec_writes_it() {
        let manifest: Manifest = serde_json::from_str(
            r#"{"transactionTime": "2026-12-01T10:00:00.123+01:00", "request": "x",
                "requiresAccessToken": true,
                "output": [{"type": "Patient", "url": "https://f/1.ndjson", "count": 3}],
                "error": [{"type": "OperationOutcome", "url": "https://f/e.ndjson"}]}"#,
        )
        .unwrap();
        assert_eq!(manifest.transaction_time, "2026-12-01T10:00:00.123+01:00");
        assert!(manifest.requires_access_token);
        assert_eq!(manifest.output[0].resource_type, "Patient");
        assert_eq!(manifest.error.len(), 1);
        assert!(manifest.deleted.is_empty());
    }
}
