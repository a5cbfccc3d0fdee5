//! A fault-injecting HTTP/1.1 proxy in front of a real server (the S3 store, the tracking
//! server): rules answer matching requests with an error (S3-style XML body), stall them, or
//! hold them until the test releases them, a number of times, and everything else is forwarded
//! unchanged. Request signatures stay valid: the bytes, the Host
//! header included, are those the client signed.
//!
//! Each request is forwarded on a fresh upstream connection with `Connection: close`, and the
//! client's connection is closed after the answer, so framing is never parsed beyond the
//! request head and its `Content-Length` body.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// What a rule does to a matching request.
#[derive(Debug, Clone)]
pub enum Action {
    /// Answer at once with this status and S3 error code.
    Fail(u16, &'static str),
    /// Wait, then forward.
    Stall(Duration),
    /// Hand the test a release (see [`Proxy::hold`]), wait until it is sent, then forward: the
    /// client is held at a known point while the test changes the world.
    Hold(mpsc::UnboundedSender<oneshot::Sender<()>>),
}

#[derive(Debug, Clone)]
struct Rule {
    method: &'static str,
    target_contains: &'static str,
    action: Action,
    /// Requests the rule still applies to; `None`: all.
    remaining: Option<usize>,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<Rule>,
    /// Request lines (`POST /mlflow?delete HTTP/1.1`) in arrival order.
    seen: Vec<String>,
    /// Requests answered or stalled by a rule.
    injected: usize,
}

pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

/// The S3 DeleteObjects request, path style: `POST /<bucket>?delete`.
pub const DELETE_OBJECTS: (&str, &str) = ("POST", "?delete");

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (state, upstream) = (shared.clone(), upstream.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve(client, &upstream, &state).await {
                        tracing::debug!(error = %e, "proxy connection failed");
                    }
                });
            }
        });
        Proxy { addr, state, task }
    }

    /// A proxy in front of the store of `MODEL_PRUNER__STORE__ENDPOINT`.
    pub async fn store() -> Proxy {
        Proxy::in_front_of("MODEL_PRUNER__STORE__ENDPOINT").await
    }

    /// A proxy in front of the tracking server of `MODEL_PRUNER__MLFLOW__TRACKING_URI`.
    pub async fn mlflow() -> Proxy {
        Proxy::in_front_of("MODEL_PRUNER__MLFLOW__TRACKING_URI").await
    }

    /// A proxy in front of the server whose URL the environment variable `var` holds.
    async fn in_front_of(var: &str) -> Proxy {
        let endpoint: url::Url = std::env::var(var)
            .unwrap_or_else(|_| panic!("{var} (eval \"$(scripts/stack.sh env)\")"))
            .parse()
            .expect("a URL");
        let upstream = format!(
            "{}:{}",
            endpoint.host_str().expect("a host"),
            endpoint.port_or_known_default().expect("a port")
        );
        Proxy::start(upstream).await
    }

    pub fn url(&self) -> url::Url {
        format!("http://{}", self.addr).parse().expect("a URL")
    }

    /// Applies `action` to the next `times` requests (`None`: all) with `method` whose target
    /// contains `target_contains`.
    pub fn rule(
        &self,
        (method, target_contains): (&'static str, &'static str),
        action: Action,
        times: Option<usize>,
    ) {
        self.state.lock().unwrap().rules.push(Rule {
            method,
            target_contains,
            action,
            remaining: times,
        });
    }

    /// Holds the next `times` requests (`None`: all) with `method` whose target contains
    /// `target_contains`: each arrives on the returned channel as a release to send once the
    /// test is done with the world; the request is forwarded then.
    pub fn hold(
        &self,
        request: (&'static str, &'static str),
        times: Option<usize>,
    ) -> mpsc::UnboundedReceiver<oneshot::Sender<()>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.rule(request, Action::Hold(tx), times);
        rx
    }

    /// Requests seen with `method` whose target contains `target_contains`.
    pub fn count(&self, (method, target_contains): (&str, &str)) -> usize {
        self.state
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|line| matches(line, method, target_contains))
            .count()
    }

    /// Requests a rule answered or stalled.
    pub fn injected(&self) -> usize {
        self.state.lock().unwrap().injected
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn matches(request_line: &str, method: &str, target_contains: &str) -> bool {
    let mut parts = request_line.split(' ');
    parts.next() == Some(method) && parts.next().is_some_and(|t| t.contains(target_contains))
}

/// One client connection: one request, one answer, then close.
async fn serve(client: TcpStream, upstream: &str, state: &Mutex<State>) -> std::io::Result<()> {
    let mut client = BufReader::new(client);
    let mut request_line = String::new();
    if client.read_line(&mut request_line).await? == 0 {
        return Ok(());
    }
    let mut head = request_line.clone();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if client.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        let name = name.trim().to_ascii_lowercase();
        if name == "content-length" {
            length = value.trim().parse().unwrap_or(0);
        }
        if name == "transfer-encoding" {
            return Err(std::io::Error::other("chunked requests are not supported"));
        }
        if name != "connection" {
            head.push_str(&line);
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut body = vec![0; length];
    client.read_exact(&mut body).await?;

    let action = decide(state, request_line.trim_end());
    let mut client = client.into_inner();
    match action {
        Some(Action::Fail(status, code)) => {
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
                 <Message>injected by the test proxy</Message><RequestId>proxy</RequestId>\
                 </Error>"
            );
            let answer = format!(
                "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{xml}",
                xml.len()
            );
            client.write_all(answer.as_bytes()).await?;
        }
        pause => {
            match pause {
                Some(Action::Stall(wait)) => tokio::time::sleep(wait).await,
                Some(Action::Hold(test)) => {
                    let (release, released) = oneshot::channel();
                    if test.send(release).is_ok() {
                        // A dropped release lets the request go as well.
                        let _ = released.await;
                    }
                }
                _ => {}
            }
            let mut server = TcpStream::connect(upstream).await?;
            server.write_all(head.as_bytes()).await?;
            server.write_all(&body).await?;
            tokio::io::copy(&mut server, &mut client).await?;
        }
    }
    client.shutdown().await
}

/// Records the request and picks the first live rule that matches it.
fn decide(state: &Mutex<State>, request_line: &str) -> Option<Action> {
    let mut state = state.lock().unwrap();
    state.seen.push(request_line.to_owned());
    let rule = state
        .rules
        .iter_mut()
        .find(|r| r.remaining != Some(0) && matches(request_line, r.method, r.target_contains))?;
    if let Some(n) = rule.remaining.as_mut() {
        *n -= 1;
    }
    let action = rule.action.clone();
    state.injected += 1;
    Some(action)
}
