//! A FHIR Bulk Data Access server on loopback, for `ingest fhir-server`'s tests.
//!
//! It follows the specification (<https://hl7.org/fhir/uv/bulkdata/export.html>) as a client meets
//! it: the kick-off answers `202 Accepted` with `Content-Location`; polls answer `202` with
//! `X-Progress` and `Retry-After` until the job completes, then `200` with the manifest; a failed
//! job answers an error status with an OperationOutcome; `DELETE` ends a job (later polls: `404`);
//! SMART Backend Services sign-in checks the client's signed JWT. Faults are switched on by
//! [`Behaviour`]: throttling, failed jobs, transfers that break off or stall, tokens that expire.
//! HTTP/1.1 with one request per connection, written by hand so a fault can cut a body mid-way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What an export holds: `(resource type, NDJSON)` per output file, given `_since` and `_type`.
pub type Content = Box<dyn Fn(Option<&str>, &[String]) -> Vec<(String, String)> + Send>;

/// Checks a JWS signature: `(alg, signing input, signature)`.
pub type Verifier = Box<dyn Fn(&str, &[u8], &[u8]) -> bool + Send>;

#[derive(Default)]
pub struct Behaviour {
    /// Polls answered "in progress" before a job completes.
    pub polls_before_done: u32,
    /// `Retry-After` seconds on those answers.
    pub retry_after: u64,
    /// The next kick-offs answered `429 Too Many Requests` (with `Retry-After: 1`).
    pub throttle_kick_offs: u32,
    /// Jobs fail (a `500` with a non-transient OperationOutcome).
    pub fail_jobs: bool,
    /// The kick-off answers `403` (a client without the scope).
    pub forbid: bool,
    /// Every file's first transfer stops half-way and the connection closes.
    pub break_first_download: bool,
    /// Transfers send half the file, then hang (a run can be killed mid-download).
    pub stall_downloads: bool,
    /// Error files (OperationOutcome NDJSON) the manifest lists.
    pub error_file: Option<String>,
    /// SMART Backend Services: the client id and its key's verifier; tokens are then required.
    pub smart: Option<(String, Verifier)>,
    /// Tokens are revoked this long after they are issued, well before the `expires_in` (300 s)
    /// the server announced: the client only learns of it from a `401`.
    pub token_lifetime: Option<std::time::Duration>,
    /// The manifest's `requiresAccessToken`: downloads need the token too.
    pub requires_access_token: bool,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HashMap<String, String>,
}

impl Seen {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Job {
    polls: u32,
    transaction_time: String,
    files: Vec<(String, String)>,
    deleted: bool,
}

struct State {
    behaviour: Behaviour,
    content: Content,
    jobs: Vec<Job>,
    seen: Vec<Seen>,
    tokens: HashMap<String, std::time::Instant>,
    tokens_issued: u32,
    transfers: HashMap<String, u32>,
}

pub struct BulkServer {
    pub base: String,
    state: Arc<Mutex<State>>,
}

impl BulkServer {
    pub async fn start(behaviour: Behaviour, content: Content) -> BulkServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/fhir", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            behaviour,
            content,
            jobs: Vec::new(),
            seen: Vec::new(),
            tokens: HashMap::new(),
            tokens_issued: 0,
            transfers: HashMap::new(),
        }));
        let (shared, origin) = (state.clone(), base.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, shared.clone(), origin.clone()));
            }
        });
        BulkServer { base, state }
    }

    /// Changes the behaviour between runs.
    pub fn behave(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.state.lock().unwrap().behaviour);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn kick_offs(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.ends_with("$export"))
            .collect()
    }

    pub fn tokens_issued(&self) -> u32 {
        self.state.lock().unwrap().tokens_issued
    }

    /// The `transactionTime` of job `n` (from 0).
    pub fn transaction_time(&self, n: usize) -> String {
        self.state.lock().unwrap().jobs[n].transaction_time.clone()
    }

    pub fn job_deleted(&self, n: usize) -> bool {
        self.state.lock().unwrap().jobs[n].deleted
    }

    pub fn transfers_started(&self) -> u32 {
        self.state.lock().unwrap().transfers.values().sum()
    }
}

struct Reply {
    status: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this much of the body, then close (or hang, with `stall`).
    cut_at: Option<usize>,
    stall: bool,
}

impl Reply {
    fn new(status: &'static str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            cut_at: None,
            stall: false,
        }
    }
    fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
    fn json(self, value: serde_json::Value) -> Reply {
        let mut reply = self.header("Content-Type", "application/json");
        reply.body = value.to_string().into_bytes();
        reply
    }
}

fn outcome(code: &str, diagnostics: &str) -> serde_json::Value {
    serde_json::json!({"resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]})
}

async fn serve(mut socket: TcpStream, state: Arc<Mutex<State>>, base: String) {
    let Some((seen, body)) = read_request(&mut socket).await else {
        return;
    };
    let reply = answer(&state, &base, &seen, &body);
    state.lock().unwrap().seen.push(seen);
    let mut head = format!("HTTP/1.1 {}\r\nConnection: close\r\n", reply.status);
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", reply.body.len()));
    let _ = socket.write_all(head.as_bytes()).await;
    let end = reply.cut_at.unwrap_or(reply.body.len());
    let _ = socket.write_all(&reply.body[..end]).await;
    let _ = socket.flush().await;
    if reply.stall {
        tokio::time::sleep(std::time::Duration::from_secs(600)).await;
    }
}

async fn read_request(socket: &mut TcpStream) -> Option<(Seen, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = url::Url::parse(&format!("http://x{}", request_line.next()?)).ok()?;
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let seen = Seen {
        method,
        path: target.path().to_string(),
        query: target.query_pairs().into_owned().collect(),
        headers,
    };
    Some((seen, body))
}

fn answer(state: &Mutex<State>, base: &str, seen: &Seen, body: &[u8]) -> Reply {
    let mut state = state.lock().unwrap();
    let path = seen.path.strip_prefix("/fhir/").unwrap_or(&seen.path);
    if path == ".well-known/smart-configuration" {
        return Reply::new("200 OK").json(serde_json::json!({
            "token_endpoint": format!("{base}/auth/token"),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        }));
    }
    if path == "auth/token" {
        return issue_token(&mut state, base, body);
    }
    let needs_token = state.behaviour.smart.is_some()
        && (!path.starts_with("files/") || state.behaviour.requires_access_token);
    if needs_token {
        let token = seen
            .headers
            .get("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_string();
        let lifetime = state.behaviour.token_lifetime;
        match state.tokens.get(&token) {
            Some(issued) if lifetime.is_none_or(|l| issued.elapsed() < l) => {}
            _ => {
                return Reply::new("401 Unauthorized")
                    .header("WWW-Authenticate", "Bearer error=\"invalid_token\"")
                    .json(outcome("login", "token missing, unknown or expired"));
            }
        }
    }
    if path.ends_with("$export") && seen.method == "GET" {
        return kick_off(&mut state, base, seen);
    }
    if let Some(job) = path.strip_prefix("status/") {
        let Ok(n) = job.parse::<usize>() else {
            return Reply::new("404 Not Found");
        };
        return status(&mut state, base, n, &seen.method);
    }
    if let Some(file) = path.strip_prefix("files/") {
        return download(&mut state, file);
    }
    Reply::new("404 Not Found").json(outcome("not-found", "no such endpoint"))
}

fn kick_off(state: &mut State, base: &str, seen: &Seen) -> Reply {
    if state.behaviour.forbid {
        return Reply::new("403 Forbidden")
            .json(outcome("forbidden", "client lacks system/*.read"));
    }
    if state.behaviour.throttle_kick_offs > 0 {
        state.behaviour.throttle_kick_offs -= 1;
        return Reply::new("429 Too Many Requests")
            .header("Retry-After", "1")
            .json(outcome("throttled", "too many exports"));
    }
    let async_asked = seen.headers.get("prefer").map(String::as_str) == Some("respond-async");
    let format_ok = seen
        .param("_outputFormat")
        .is_none_or(|f| ["application/fhir+ndjson", "application/ndjson", "ndjson"].contains(&f));
    if !async_asked || !format_ok {
        return Reply::new("400 Bad Request")
            .json(outcome("invalid", "needs Prefer: respond-async"));
    }
    let types: Vec<String> = seen
        .param("_type")
        .map(|t| t.split(',').map(String::from).collect())
        .unwrap_or_default();
    let files = (state.content)(seen.param("_since"), &types);
    let n = state.jobs.len();
    // An offset and milliseconds, to check the client hands the instant back as written.
    let transaction_time = format!("2026-12-06T09:{n:02}:00.125+01:00");
    state.jobs.push(Job {
        polls: 0,
        transaction_time,
        files,
        deleted: false,
    });
    Reply::new("202 Accepted").header("Content-Location", format!("{base}/status/{n}"))
}

fn status(state: &mut State, base: &str, n: usize, method: &str) -> Reply {
    let (polls_before_done, retry_after, fail) = (
        state.behaviour.polls_before_done,
        state.behaviour.retry_after,
        state.behaviour.fail_jobs,
    );
    let error_file = state.behaviour.error_file.is_some();
    let requires_access_token = state.behaviour.requires_access_token;
    let Some(job) = state.jobs.get_mut(n).filter(|j| !j.deleted) else {
        return Reply::new("404 Not Found").json(outcome("not-found", "no such job"));
    };
    if method == "DELETE" {
        job.deleted = true;
        return Reply::new("202 Accepted");
    }
    if fail {
        return Reply::new("500 Internal Server Error")
            .json(outcome("exception", "the export ran out of disk"));
    }
    if job.polls < polls_before_done {
        job.polls += 1;
        return Reply::new("202 Accepted")
            .header(
                "X-Progress",
                format!("{}% done", job.polls * 100 / (polls_before_done + 1)),
            )
            .header("Retry-After", retry_after.to_string());
    }
    let output: Vec<serde_json::Value> = job
        .files
        .iter()
        .enumerate()
        .map(|(i, (resource_type, _))| {
            serde_json::json!({"type": resource_type, "url": format!("{base}/files/{n}-{i}")})
        })
        .collect();
    let error: Vec<serde_json::Value> = error_file
        .then(|| serde_json::json!({"type": "OperationOutcome", "url": format!("{base}/files/{n}-error")}))
        .into_iter()
        .collect();
    Reply::new("200 OK")
        .header("Expires", "Mon, 07 Dec 2026 09:00:00 GMT")
        .json(serde_json::json!({
            "transactionTime": job.transaction_time,
            "request": format!("{base}/$export"),
            "requiresAccessToken": requires_access_token,
            "output": output,
            "error": error,
        }))
}

fn download(state: &mut State, file: &str) -> Reply {
    let Some((job, index)) = file.split_once('-') else {
        return Reply::new("404 Not Found");
    };
    let Some(job) = job.parse::<usize>().ok().and_then(|n| state.jobs.get(n)) else {
        return Reply::new("404 Not Found");
    };
    let text = if index == "error" {
        state.behaviour.error_file.clone()
    } else {
        index
            .parse::<usize>()
            .ok()
            .and_then(|i| job.files.get(i))
            .map(|(_, text)| text.clone())
    };
    let Some(text) = text else {
        return Reply::new("404 Not Found");
    };
    let transfers = state.transfers.entry(file.to_string()).or_insert(0);
    *transfers += 1;
    let mut reply = Reply::new("200 OK").header("Content-Type", "application/fhir+ndjson");
    reply.body = text.into_bytes();
    if state.behaviour.stall_downloads {
        reply.cut_at = Some(reply.body.len() / 2);
        reply.stall = true;
    } else if state.behaviour.break_first_download && *transfers == 1 {
        reply.cut_at = Some(reply.body.len() / 2);
    }
    reply
}

/// SMART Backend Services' token endpoint: checks the client assertion, then issues a token.
fn issue_token(state: &mut State, base: &str, body: &[u8]) -> Reply {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let refuse = |why: &str| {
        Reply::new("401 Unauthorized")
            .json(serde_json::json!({"error": "invalid_client", "error_description": why}))
    };
    let Some((client_id, verify)) = &state.behaviour.smart else {
        return refuse("no SMART clients here");
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return refuse("grant_type or client_assertion_type");
    }
    let Some(jwt) = form.get("client_assertion") else {
        return refuse("no client_assertion");
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return refuse("not a JWS");
    }
    let decode = |p: &str| -> Option<serde_json::Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).ok()?).ok()
    };
    let (Some(header), Some(claims), Ok(signature)) = (
        decode(parts[0]),
        decode(parts[1]),
        URL_SAFE_NO_PAD.decode(parts[2]),
    ) else {
        return refuse("undecodable JWS");
    };
    let alg = header["alg"].as_str().unwrap_or_default();
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    let now = chrono::Utc::now().timestamp();
    let exp = claims["exp"].as_i64().unwrap_or(0);
    if header["kid"].as_str().is_none()
        || claims["iss"] != client_id.as_str()
        || claims["sub"] != client_id.as_str()
        || claims["aud"] != format!("{base}/auth/token").as_str()
        || claims["jti"].as_str().is_none()
        || exp <= now
        || exp > now + 300
    {
        return refuse("claims");
    }
    if !verify(alg, signing_input.as_bytes(), &signature) {
        return refuse("signature");
    }
    state.tokens_issued += 1;
    let token = format!("token-{}", state.tokens_issued);
    state
        .tokens
        .insert(token.clone(), std::time::Instant::now());
    Reply::new("200 OK").json(serde_json::json!({
        "access_token": token, "token_type": "bearer", "expires_in": 300,
        "scope": form.get("scope").cloned().unwrap_or_default(),
    }))
}
