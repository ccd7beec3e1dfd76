//! A TCP relay in front of Azurite that cuts chosen requests short, as a flaky network or a server
//! closing a kept-alive connection does: before the request reaches Azurite, or after Azurite has
//! carried it out but before its answer reaches the client (the connection closed, or reset).
//!
//! The last two are the hard ones for a client: the request took effect, and the client cannot
//! tell. The relay is a byte pipe; it reads HTTP only to find each request's first line, which
//! starts the client's first write of a request (a client waits for one answer before it sends
//! the next request).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Where a request is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The connection is reset before the request reaches Azurite.
    BeforeRequest,
    /// Azurite carries the request out; the client's connection is closed before the answer.
    AnswerClosed,
    /// Azurite carries the request out; the client's connection is reset before the answer.
    AnswerReset,
}

/// Cut the `nth` (from 1) PUT whose path ends with `path_end`.
#[derive(Debug)]
pub struct Rule {
    pub path_end: String,
    pub nth: usize,
    pub cut: Cut,
    seen: usize,
}

impl Rule {
    pub fn put(path_end: &str, nth: usize, cut: Cut) -> Rule {
        Rule {
            path_end: path_end.to_string(),
            nth,
            cut,
            seen: 0,
        }
    }

    fn fired(&self) -> bool {
        self.seen >= self.nth
    }
}

pub struct CuttingProxy {
    pub port: u16,
    rules: Arc<Mutex<Vec<Rule>>>,
}

impl CuttingProxy {
    /// Relays loopback connections to `upstream_port`, cutting as `rules` say.
    pub async fn start(upstream_port: u16, rules: Vec<Rule>) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let rules = Arc::new(Mutex::new(rules));
        let shared = rules.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream_port, shared.clone()));
            }
        });
        CuttingProxy { port, rules }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The rules that never met their request: a test whose cuts did not happen proves nothing.
    pub fn unfired(&self) -> Vec<String> {
        self.rules
            .lock()
            .unwrap()
            .iter()
            .filter(|rule| !rule.fired())
            .map(|rule| format!("{rule:?}"))
            .collect()
    }
}

async fn relay(
    mut client: TcpStream,
    upstream_port: u16,
    rules: Arc<Mutex<Vec<Rule>>>,
) -> std::io::Result<()> {
    let mut upstream = TcpStream::connect(("127.0.0.1", upstream_port)).await?;
    let mut from_client = vec![0; 64 * 1024];
    let mut from_upstream = vec![0; 64 * 1024];
    let mut cut_answer = None;
    loop {
        tokio::select! {
            read = client.read(&mut from_client) => {
                let chunk = &from_client[..read?];
                if chunk.is_empty() {
                    return Ok(());
                }
                match cut_for(chunk, &rules) {
                    Some(Cut::BeforeRequest) => {
                        client.set_zero_linger()?;
                        return Ok(());
                    }
                    Some(cut) => cut_answer = Some(cut),
                    None => {}
                }
                upstream.write_all(chunk).await?;
            }
            read = upstream.read(&mut from_upstream) => {
                let chunk = &from_upstream[..read?];
                if chunk.is_empty() {
                    return Ok(());
                }
                if let Some(cut) = cut_answer.take() {
                    if cut == Cut::AnswerReset {
                        client.set_zero_linger()?;
                    }
                    return Ok(());
                }
                client.write_all(chunk).await?;
            }
        }
    }
}

/// The cut for the request `chunk` starts, if it starts one a rule is waiting for.
fn cut_for(chunk: &[u8], rules: &Mutex<Vec<Rule>>) -> Option<Cut> {
    let line = chunk.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/") {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);
    let mut rules = rules.lock().unwrap();
    let mut cut = None;
    for rule in rules.iter_mut() {
        if method == "PUT" && path.ends_with(&rule.path_end) && !rule.fired() {
            rule.seen += 1;
            if rule.fired() {
                cut.get_or_insert(rule.cut);
            }
        }
    }
    cut
}
