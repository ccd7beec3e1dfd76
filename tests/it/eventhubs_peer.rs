//! An Azure Event Hubs test peer on `fe2o3-amqp`'s acceptor: the closest thing to Event Hubs that
//! runs here, so the official client (`azure_messaging_eventhubs`) is tested over a real socket.
//!
//! It speaks what the client needs: SASL ANONYMOUS; a `$cbs` node answering put-token with 202; a
//! `$management` node answering READ for `com.microsoft:eventhub` and `com.microsoft:partition`;
//! sender links advertising `max-message-size`; batched messages (format 0x80013700) unpacked; one
//! log per partition with sequence numbers, offsets and enqueued times; receivers honouring the
//! offset / sequence-number start filter and the owner level (`com.microsoft:epoch`: a higher one
//! steals the partition with `amqp:link:stolen`).
//!
//! Faults a test can order: a partition whose reader stalls ([`Peer::stall_next_reader`]), a hub
//! that throttles its senders as the service does (`com.microsoft:server-busy`,
//! [`Peer::throttle`]), and a namespace that cannot be reached ([`Peer::unreachable_for`]: every
//! connection cut, new ones closed as soon as they are accepted).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerSessionHandle, SaslAnonymousMechanism,
    SessionAcceptor,
};
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::types::definitions::{self, LinkError};
use fe2o3_amqp::types::messaging::message::__private::Deserializable;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageAnnotations, Properties,
};
use fe2o3_amqp::types::primitives::{Array, OrderedMap, SimpleValue, Timestamp, Value};
use fe2o3_amqp::{Receiver, Sender};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How a stalled reader link behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stall {
    /// It answers the client's detach, as the service's links do.
    AnswersDetach,
    /// Wedged entirely: the client's detach goes unanswered.
    Deaf,
}

/// The message format of a batch: data sections, each an encoded message.
const BATCH_FORMAT: u32 = 0x8001_3700;
const MAX_MESSAGE_SIZE: u64 = 1024 * 1024;

/// How long the peer waits before settling a message the client sent, as a network round trip
/// to Azure would. `fe2o3-amqp` 0.16 (under the official client) sends a transfer first and only
/// then records it in its unsettled map (`send_payload_with_transfer`): a disposition that comes
/// back through loopback before that insert is dropped, and the client's `send` waits forever.
/// A real hub is at least a millisecond away; on a loaded two-core machine the sending thread can
/// be descheduled for longer than that, so the peer gives it a comfortable margin.
const SETTLE_DELAY: std::time::Duration = std::time::Duration::from_millis(25);

/// The namespace the connection string names: part of every checkpoint's and transaction's id.
pub const NAMESPACE: &str = "peer.servicebus.windows.net";

/// One event as the peer stores it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub sequence_number: i64,
    pub offset: i64,
    pub enqueued_millis: i64,
    pub partition_key: Option<String>,
    pub message: Message<Body<Value>>,
}

/// A hub's partitions, each its log of events.
type Partitions = Vec<Mutex<Vec<StoredEvent>>>;

struct State {
    hubs: HashMap<String, Partitions>,
    /// Bumped on every append, so receivers wake up.
    appended: watch::Sender<u64>,
    /// Per consumer group and partition: the current owner level and the token that stops its link.
    owners: Mutex<HashMap<String, (i64, CancellationToken)>>,
    round_robin: AtomicUsize,
    /// A handle on every accepted socket, so a test can cut them all.
    sockets: Mutex<Vec<std::net::TcpStream>>,
    /// Per hub, consumer group and partition: the client address of the reader that owns it.
    readers: Mutex<HashMap<String, SocketAddr>>,
    /// The client addresses of the connections open now.
    open: Mutex<std::collections::HashSet<SocketAddr>>,
    /// Every `$cbs` put-token: the token's type and the token.
    tokens: Mutex<Vec<(String, String)>>,
    /// Per `hub/partition`: the next reader link delivers this many events, then nothing more
    /// while it stays open (what a wedged receiver looks like from the client), and whether it
    /// still answers a detach.
    stalls: Mutex<HashMap<String, (usize, Stall)>>,
    /// Per hub: sends to it are refused as throttled until then.
    throttled_until: Mutex<HashMap<String, std::time::Instant>>,
    /// Connections are closed on arrival until then.
    down_until: Mutex<Option<std::time::Instant>>,
}

impl State {
    fn is_down(&self) -> bool {
        self.down_until
            .lock()
            .unwrap()
            .is_some_and(|until| std::time::Instant::now() < until)
    }

    fn is_throttled(&self, hub: &str) -> bool {
        self.throttled_until
            .lock()
            .unwrap()
            .get(hub)
            .is_some_and(|until| std::time::Instant::now() < *until)
    }
}

impl State {
    fn partitions(&self, hub: &str) -> Result<&Partitions, String> {
        self.hubs
            .get(hub)
            .ok_or_else(|| format!("unknown entity {hub}"))
    }
}

/// A running peer on a loopback port; stops when dropped. It runs on a runtime of its own, so a
/// test that blocks its own threads (waiting for a child process) never stalls the peer.
pub struct Peer {
    pub port: u16,
    state: Arc<State>,
    listener: JoinHandle<()>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.listener.abort();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Peer {
    pub async fn start(hub: &str, partitions: usize) -> Peer {
        Peer::start_hubs(&[hub], partitions).await
    }

    /// A namespace with several hubs, each with `partitions` partitions.
    pub async fn start_hubs(hubs: &[&str], partitions: usize) -> Peer {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("TEST_LOG"))
            .with_test_writer()
            .try_init();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            hubs: hubs
                .iter()
                .map(|hub| {
                    let logs = (0..partitions).map(|_| Mutex::new(Vec::new())).collect();
                    (hub.to_string(), logs)
                })
                .collect(),
            appended: watch::channel(0).0,
            owners: Mutex::new(HashMap::new()),
            round_robin: AtomicUsize::new(0),
            sockets: Mutex::default(),
            readers: Mutex::default(),
            open: Mutex::default(),
            tokens: Mutex::default(),
            stalls: Mutex::default(),
            throttled_until: Mutex::default(),
            down_until: Mutex::default(),
        });
        let accepting = state.clone();
        let listener = runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            while let Ok((stream, client)) = listener.accept().await {
                let state = accepting.clone();
                if state.is_down() {
                    drop(stream);
                    continue;
                }
                let socket = stream.into_std().unwrap();
                state
                    .sockets
                    .lock()
                    .unwrap()
                    .push(socket.try_clone().unwrap());
                let stream = TcpStream::from_std(socket).unwrap();
                state.open.lock().unwrap().insert(client);
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, client, state.clone()).await {
                        eprintln!("eventhubs peer: connection ended: {e}");
                    }
                    state.open.lock().unwrap().remove(&client);
                });
            }
        });
        Peer {
            port,
            state,
            listener,
            runtime: Some(runtime),
        }
    }

    /// The endpoint the client connects to: `with_custom_endpoint(peer.endpoint())`.
    pub fn endpoint(&self) -> String {
        format!("amqp://127.0.0.1:{}", self.port)
    }

    /// A namespace connection string (the hub is named by each command); the key is never
    /// checked (SASL ANONYMOUS, any token).
    pub fn connection_string(&self) -> String {
        format!("Endpoint=sb://{NAMESPACE}/;SharedAccessKeyName=test;SharedAccessKey=dGVzdA==")
    }

    /// Every event of a partition of the first hub, in order.
    pub fn events(&self, partition: usize) -> Vec<StoredEvent> {
        let first = self.state.hubs.keys().min().unwrap();
        self.events_of(first, partition)
    }

    pub fn events_of(&self, hub: &str, partition: usize) -> Vec<StoredEvent> {
        self.state.hubs[hub][partition].lock().unwrap().clone()
    }

    /// Cuts every client connection, as a network failure or a service restart would.
    pub fn drop_connections(&self) {
        for socket in self.state.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Whether the client at `address` is still connected.
    pub fn is_connected(&self, address: &SocketAddr) -> bool {
        self.state.open.lock().unwrap().contains(address)
    }

    /// Every token the clients put to `$cbs`: (`type`, token), as `jwt` for Entra ID.
    pub fn tokens(&self) -> Vec<(String, String)> {
        self.state.tokens.lock().unwrap().clone()
    }

    /// The next reader of `partition` of `hub` receives `after` events, then nothing, though the
    /// partition has more and its link stays open; readers after it are served as usual.
    pub fn stall_next_reader(&self, hub: &str, partition: usize, after: usize, stall: Stall) {
        self.state
            .stalls
            .lock()
            .unwrap()
            .insert(format!("{hub}/{partition}"), (after, stall));
    }

    /// Sends to `hub` are refused for `duration` with `com.microsoft:server-busy`, as the service
    /// refuses them when a namespace exceeds its throughput units.
    pub fn throttle(&self, hub: &str, duration: std::time::Duration) {
        self.state
            .throttled_until
            .lock()
            .unwrap()
            .insert(hub.to_string(), std::time::Instant::now() + duration);
    }

    /// The namespace cannot be reached for `duration`: every connection is cut now, and those
    /// that arrive before it ends are closed at once.
    pub fn unreachable_for(&self, duration: std::time::Duration) {
        *self.state.down_until.lock().unwrap() = Some(std::time::Instant::now() + duration);
        self.drop_connections();
    }

    /// The namespace can be reached again.
    pub fn reachable(&self) {
        *self.state.down_until.lock().unwrap() = None;
    }

    /// The client address reading each partition (`hub/group/partition`), as last attached.
    pub fn readers(&self) -> HashMap<String, SocketAddr> {
        self.state.readers.lock().unwrap().clone()
    }
}

/// Where replies to `$cbs` and `$management` requests go: the client's reply address → a link.
type Replies = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Message<Body<Value>>>>>>;

async fn serve_connection(
    stream: TcpStream,
    client: SocketAddr,
    state: Arc<State>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let acceptor = ConnectionAcceptor::builder()
        .container_id("vitalake-eventhubs-peer")
        .sasl_acceptor(SaslAnonymousMechanism::new())
        .build();
    let mut connection = acceptor.accept(stream).await?;
    let replies: Replies = Arc::default();
    let session_acceptor = SessionAcceptor::new();
    while let Ok(session) = session_acceptor.accept(&mut connection).await {
        tokio::spawn(serve_session(
            session,
            client,
            state.clone(),
            replies.clone(),
        ));
    }
    Ok(())
}

async fn serve_session(
    mut session: ListenerSessionHandle,
    client: SocketAddr,
    state: Arc<State>,
    replies: Replies,
) {
    let links = LinkAcceptor::builder()
        .max_message_size(MAX_MESSAGE_SIZE)
        .build();
    while let Some(attach) = session.next_incoming_attach().await {
        let properties = attach.properties.clone().unwrap_or_default();
        let filter = attach
            .source
            .as_ref()
            .and_then(|s| s.filter.clone())
            .unwrap_or_default();
        match links.accept_incoming_attach(attach, &mut session).await {
            Ok(LinkEndpoint::Receiver(receiver)) => {
                tokio::spawn(serve_incoming(receiver, state.clone(), replies.clone()));
            }
            Ok(LinkEndpoint::Sender(sender)) => {
                let epoch = properties
                    .iter()
                    .find(|(k, _)| k.as_str() == "com.microsoft:epoch")
                    .and_then(|(_, v)| match v {
                        Value::Long(epoch) => Some(*epoch),
                        _ => None,
                    });
                let selector = filter.values().find_map(|v| match v {
                    Value::Described(d) => match &d.value {
                        Value::String(s) => Some(s.clone()),
                        _ => None,
                    },
                    _ => None,
                });
                tokio::spawn(serve_outgoing(
                    sender,
                    client,
                    state.clone(),
                    replies.clone(),
                    epoch,
                    selector,
                ));
            }
            Err(e) => eprintln!("eventhubs peer: attach refused: {e}"),
        }
    }
}

fn address_path(address: &str) -> String {
    url::Url::parse(address)
        .map(|u| u.path().trim_start_matches('/').to_string())
        .unwrap_or_else(|_| address.trim_start_matches('/').to_string())
}

fn application_property(message: &Message<Body<Value>>, key: &str) -> Option<String> {
    message
        .application_properties
        .as_ref()?
        .0
        .get(key)
        .and_then(|v| match v {
            SimpleValue::String(s) => Some(s.clone()),
            _ => None,
        })
}

async fn reply(
    request: &Message<Body<Value>>,
    status: i32,
    body: Value,
    replies: &Replies,
) -> Result<(), String> {
    let properties = request.properties.as_ref();
    let reply_to = properties
        .and_then(|p| p.reply_to.clone())
        .ok_or("request without reply-to")?;
    let mut application_properties = OrderedMap::new();
    application_properties.insert("status-code".to_string(), SimpleValue::Int(status));
    application_properties.insert(
        "status-description".to_string(),
        SimpleValue::String("OK".into()),
    );
    let response = Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(Properties {
            correlation_id: properties.and_then(|p| p.message_id.clone()),
            ..Properties::default()
        }),
        application_properties: Some(ApplicationProperties(application_properties)),
        body: Body::Value(fe2o3_amqp::types::messaging::AmqpValue(body)),
        footer: None,
    };
    // The reply link is attached before the client sends its first request, but its attach may
    // still be on its way through this peer: wait a moment for it.
    for _ in 0..1000 {
        let link = replies.lock().unwrap().get(&reply_to).cloned();
        if let Some(link) = link {
            return link.send(response).map_err(|e| e.to_string());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Err(format!("no reply link for {reply_to}"))
}

/// Why the peer refuses a message.
enum Refusal {
    /// The hub is throttled ([`Peer::throttle`]).
    Throttled,
    Failed(String),
}

/// The client sends: `$cbs` and `$management` requests, or events to the hub or one partition.
async fn serve_incoming(mut receiver: Receiver, state: Arc<State>, replies: Replies) {
    let target = receiver
        .target()
        .as_ref()
        .and_then(|t| t.address.clone())
        .unwrap_or_default();
    let node = address_path(&target);
    let hub = node.split('/').next().unwrap_or_default().to_string();
    loop {
        let delivery = match receiver.recv::<Body<Value>>().await {
            Ok(delivery) => delivery,
            Err(e) => {
                eprintln!("eventhubs peer: receiving on {node} ended: {e:?}");
                return;
            }
        };
        let format = delivery.message_format().unwrap_or(0);
        let info = DeliveryInfo::from(&delivery);
        let message = delivery.into_message();
        let outcome = match node.as_str() {
            "$cbs" => {
                let kind = application_property(&message, "type").unwrap_or_default();
                let token = match &message.body {
                    Body::Value(AmqpValue(Value::String(token))) => token.clone(),
                    _ => String::new(),
                };
                state.tokens.lock().unwrap().push((kind, token));
                reply(&message, 202, Value::Null, &replies)
                    .await
                    .map_err(Refusal::Failed)
            }
            "$management" => match management(&message, &state) {
                Ok((status, body)) => reply(&message, status, body, &replies)
                    .await
                    .map_err(Refusal::Failed),
                Err(e) => Err(Refusal::Failed(e)),
            },
            _ if state.is_throttled(&hub) => Err(Refusal::Throttled),
            _ => append(&node, format, message, &state).map_err(Refusal::Failed),
        };
        tokio::time::sleep(SETTLE_DELAY).await;
        let settled = match outcome {
            Ok(()) => receiver.accept(info).await,
            Err(Refusal::Throttled) => {
                let busy = definitions::Error::new(
                    definitions::ErrorCondition::Custom(
                        fe2o3_amqp::types::primitives::Symbol::from("com.microsoft:server-busy"),
                    ),
                    format!(
                        "The request was terminated because the entity is being throttled. Error code : 50002. Sub error : 102. Reference: {hub}"
                    ),
                    None,
                );
                receiver.reject(info, busy).await
            }
            Err(Refusal::Failed(reason)) => {
                eprintln!("eventhubs peer: rejected a message to {node}: {reason}");
                receiver
                    .reject(
                        info,
                        definitions::Error::new(
                            definitions::AmqpError::InternalError,
                            reason,
                            None,
                        ),
                    )
                    .await
            }
        };
        if settled.is_err() {
            return;
        }
    }
}

fn management(message: &Message<Body<Value>>, state: &State) -> Result<(i32, Value), String> {
    let entity = application_property(message, "type").unwrap_or_default();
    let mut body: OrderedMap<Value, Value> = OrderedMap::new();
    let mut put = |k: &str, v: Value| {
        body.insert(Value::String(k.to_string()), v);
    };
    let hub = application_property(message, "name").unwrap_or_default();
    let partitions = state.partitions(&hub)?;
    put("name", Value::String(hub.clone()));
    match entity.as_str() {
        "com.microsoft:eventhub" => {
            put(
                "created_at",
                Value::Timestamp(Timestamp::from_milliseconds(0)),
            );
            put("partition_count", Value::Int(partitions.len() as i32));
            put(
                "partition_ids",
                Value::Array(Array(
                    (0..partitions.len())
                        .map(|p| Value::String(p.to_string()))
                        .collect(),
                )),
            );
        }
        "com.microsoft:partition" => {
            let partition = application_property(message, "partition").unwrap_or_default();
            let index: usize = partition.parse().map_err(|_| "bad partition")?;
            let events = partitions.get(index).ok_or("no such partition")?;
            let events = events.lock().unwrap();
            put("type", Value::String(entity.clone()));
            put("partition", Value::String(partition));
            put("begin_sequence_number", Value::Long(0));
            let last = events.last();
            put(
                "last_enqueued_sequence_number",
                Value::Long(last.map_or(-1, |e| e.sequence_number)),
            );
            put(
                "last_enqueued_offset",
                Value::String(last.map_or(-1, |e| e.offset).to_string()),
            );
            put(
                "last_enqueued_time_utc",
                Value::Timestamp(Timestamp::from_milliseconds(
                    last.map_or(0, |e| e.enqueued_millis),
                )),
            );
            put("is_partition_empty", Value::Bool(events.is_empty()));
            // The client (0.16) refuses partition properties without it (geo-replication epoch;
            // 0 on a namespace without geo-replication).
            put("last_enqueued_sequence_number_epoch", Value::Long(0));
        }
        other => return Err(format!("unknown entity type {other}")),
    }
    Ok((200, Value::Map(body)))
}

fn annotation_text(message: &Message<Body<Value>>, key: &str) -> Option<String> {
    message
        .message_annotations
        .as_ref()?
        .0
        .iter()
        .find(|(k, _)| matches!(k, fe2o3_amqp::types::messaging::annotations::OwnedKey::Symbol(s) if s.as_str() == key))
        .and_then(|(_, v)| match v {
            Value::String(s) => Some(s.clone()),
            _ => None,
        })
}

/// Stores a message (or each message of a batch) in its partition.
fn append(
    node: &str,
    format: u32,
    envelope: Message<Body<Value>>,
    state: &State,
) -> Result<(), String> {
    let parts: Vec<&str> = node.split('/').collect();
    let partitions = state.partitions(parts[0])?;
    let envelope_key = annotation_text(&envelope, "x-opt-partition-key");
    let messages = if format == BATCH_FORMAT {
        let Body::Data(sections) = &envelope.body else {
            return Err("a batch without data sections".into());
        };
        sections
            .iter()
            .map(|data| {
                serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(&data.0)
                    .map(|d| d.0)
                    .map_err(|e| format!("a batched message does not decode: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?
    } else {
        vec![envelope]
    };
    for message in messages {
        let key = annotation_text(&message, "x-opt-partition-key").or(envelope_key.clone());
        let partition = match (parts.get(1), parts.get(2), &key) {
            (Some(&"Partitions"), Some(p), _) => p.parse::<usize>().map_err(|_| "bad partition")?,
            (_, _, Some(key)) => {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                key.hash(&mut hasher);
                hasher.finish() as usize % partitions.len()
            }
            _ => state.round_robin.fetch_add(1, Ordering::Relaxed) % partitions.len(),
        };
        let mut events = partitions
            .get(partition)
            .ok_or("no such partition")?
            .lock()
            .unwrap();
        let (sequence_number, offset) = events.last().map_or((0, 0), |e| {
            (
                e.sequence_number + 1,
                e.offset + body_len(&e.message) as i64,
            )
        });
        events.push(StoredEvent {
            sequence_number,
            offset,
            enqueued_millis: chrono::Utc::now().timestamp_millis(),
            partition_key: key,
            message,
        });
    }
    state.appended.send_modify(|n| *n += 1);
    Ok(())
}

fn body_len(message: &Message<Body<Value>>) -> usize {
    match &message.body {
        Body::Data(sections) => sections.iter().map(|d| d.0.len()).sum(),
        _ => 1,
    }
}

/// Where a receiver starts, from its selector filter: the index of the first event to deliver.
fn start_index(selector: Option<&str>, events: &[StoredEvent]) -> usize {
    let Some(selector) = selector else {
        return events.len();
    };
    let value = selector.split('\'').nth(1).unwrap_or_default().to_string();
    let inclusive = selector.contains(">=");
    let position = |key: &dyn Fn(&StoredEvent) -> i64, at: i64| {
        events
            .iter()
            .position(|e| if inclusive { key(e) >= at } else { key(e) > at })
            .unwrap_or(events.len())
    };
    if value == "@latest" {
        return events.len();
    }
    let number: i64 = value.parse().unwrap_or(-1);
    if selector.contains("x-opt-sequence-number") {
        position(&|e| e.sequence_number, number)
    } else if selector.contains("x-opt-enqueued-time") {
        position(&|e| e.enqueued_millis, number)
    } else {
        position(&|e| e.offset, number)
    }
}

/// The client receives: replies from `$cbs` / `$management`, or a partition's events.
async fn serve_outgoing(
    mut sender: Sender,
    client: SocketAddr,
    state: Arc<State>,
    replies: Replies,
    epoch: Option<i64>,
    selector: Option<String>,
) {
    let source = sender
        .source()
        .as_ref()
        .and_then(|s| s.address.clone())
        .unwrap_or_default();
    let node = address_path(&source);
    if node == "$cbs" || node == "$management" {
        let reply_to = sender
            .target()
            .as_ref()
            .and_then(|t| t.address.clone())
            .unwrap_or_default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        replies.lock().unwrap().insert(reply_to, tx);
        while let Some(message) = rx.recv().await {
            if sender.send(message).await.is_err() {
                return;
            }
        }
        return;
    }
    // <hub>/ConsumerGroups/<group>/Partitions/<id>
    let parts: Vec<&str> = node.split('/').collect();
    let log = state
        .partitions(parts[0])
        .ok()
        .and_then(|partitions| partitions.get(parts.get(4)?.parse::<usize>().ok()?));
    let (Some(group), Some(log)) = (parts.get(2), log) else {
        let _ = sender
            .close_with_error(definitions::Error::new(
                definitions::AmqpError::NotFound,
                format!("unknown source {node}"),
                None,
            ))
            .await;
        return;
    };
    let stop = CancellationToken::new();
    if let Some(epoch) = epoch {
        let key = format!("{}/{group}/{}", parts[0], parts[4]);
        let current = state.owners.lock().unwrap().get(&key).map(|(c, _)| *c);
        if let Some(current) = current.filter(|c| *c > epoch) {
            let _ = sender
                .close_with_error(definitions::Error::new(
                    LinkError::Stolen,
                    format!("a receiver with the higher epoch {current} owns this partition"),
                    None,
                ))
                .await;
            return;
        }
        let previous = state
            .owners
            .lock()
            .unwrap()
            .insert(key, (epoch, stop.clone()));
        if let Some((_, previous)) = previous {
            previous.cancel();
        }
    }
    let stall = state
        .stalls
        .lock()
        .unwrap()
        .remove(&format!("{}/{}", parts[0], parts[4]));
    let mut sent_on_link = 0;
    let mut appended = state.appended.subscribe();
    // Where it starts is settled before the reader shows: an event sent once a test sees the
    // reader is after a `@latest` start.
    let mut next = start_index(selector.as_deref(), &log.lock().unwrap());
    state
        .readers
        .lock()
        .unwrap()
        .insert(format!("{}/{group}/{}", parts[0], parts[4]), client);
    loop {
        let pending: Vec<StoredEvent> = log.lock().unwrap()[next..].to_vec();
        for event in pending {
            if let Some((after, how)) = stall
                && after == sent_on_link
            {
                // Silent until a newer reader takes the partition over (or, if it answers one,
                // the client detaches).
                let detached = async {
                    match how {
                        Stall::AnswersDetach => drop(sender.on_detach().await),
                        Stall::Deaf => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = detached => return drop(sender.close().await),
                    () = stop.cancelled() => return stolen(sender).await,
                }
            }
            sent_on_link += 1;
            // Pre-settled, as Event Hubs delivers: the receiver's credit paces the link, and no
            // disposition is awaited per event.
            let message = fe2o3_amqp::link::delivery::Sendable::builder()
                .message(delivered(&event))
                .settled(true)
                .build();
            tokio::select! {
                sent = sender.send(message) => if sent.is_err() { return },
                () = stop.cancelled() => return stolen(sender).await,
            }
            next += 1;
        }
        tokio::select! {
            changed = appended.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return stolen(sender).await,
        }
    }
}

async fn stolen(sender: Sender) {
    let _ = sender
        .close_with_error(definitions::Error::new(
            LinkError::Stolen,
            "a receiver with a higher epoch took this partition".to_string(),
            None,
        ))
        .await;
}

/// A stored event as Event Hubs delivers it: annotated with its place in the partition.
fn delivered(event: &StoredEvent) -> Message<Body<Value>> {
    use fe2o3_amqp::types::messaging::annotations::OwnedKey;
    let mut message = event.message.clone();
    let annotations = message
        .message_annotations
        .get_or_insert_with(|| MessageAnnotations(OrderedMap::new()));
    let mut set = |key: &str, value: Value| {
        annotations.0.insert(OwnedKey::Symbol(key.into()), value);
    };
    set("x-opt-sequence-number", Value::Long(event.sequence_number));
    set("x-opt-offset", Value::String(event.offset.to_string()));
    set(
        "x-opt-enqueued-time",
        Value::Timestamp(Timestamp::from_milliseconds(event.enqueued_millis)),
    );
    if let Some(key) = &event.partition_key {
        set("x-opt-partition-key", Value::String(key.clone()));
    }
    message
}
