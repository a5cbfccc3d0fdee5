//! The worker survives a real RabbitMQ restart in the middle of a stream of events: the test
//! runs its own single-node broker (never the shared one), stops and starts it between two
//! halves of the stream, and every event, including those queued before the restart, is
//! processed and acked, leaving exactly the top N models.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use model_pruner::broker::Broker;
use model_pruner::settings::Settings;
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestApp, run_finished, same_queues, settings};
use crate::support::app::start_worker;
use crate::support::eventually::eventually_every;
use crate::support::world::{Layout, World};

/// The Debian package's scripts; `/usr/sbin`'s wrappers `su` to the rabbitmq user when run
/// as root, which would lose our environment and cookie.
const BIN: &str = "/usr/lib/rabbitmq/bin";
/// Booting a node takes a few seconds, more on a busy machine.
const NODE_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_around_a_broker_restart_are_all_processed() {
    assert!(
        Path::new(BIN).join("rabbitmq-server").exists(),
        "no RabbitMQ server in {BIN} (scripts/stack.sh up installs Debian's rabbitmq-server)"
    );
    // The guard stops the node and removes its directory even if an assertion fails.
    let node = tokio::task::spawn_blocking(PrivateNode::start)
        .await
        .expect("start the private node");
    let world = World::new("worker");
    let exp = world.experiment().await;
    let values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
    let runs = world.ranked_runs(&exp, Layout::Classic, &values).await;
    let kept = [4, 5];

    let base = on(&node, settings());
    let before = TestApp::without_worker(&base).await;
    let shutdown = CancellationToken::new();
    let worker = start_worker(on(&node, same_queues(&base)), shutdown.clone()).task;

    let events: Vec<Vec<u8>> = (0..12)
        .map(|i| run_finished(&exp, &runs[i % runs.len()], 2))
        .collect();
    for body in &events[..6] {
        before.publish("run.finished", body).await;
    }
    // Confirmed persistent messages in a quorum queue: they must outlive the node.
    let node = tokio::task::spawn_blocking(move || {
        node.stop();
        node.boot();
        node
    })
    .await
    .expect("restart the private node");
    drop(before);

    // The test's own connection died with the node; publish the rest on a new one.
    let after = TestApp::without_worker(&on(&node, same_queues(&base))).await;
    for body in &events[6..] {
        after.publish("run.finished", body).await;
    }

    world
        .wait_pruned(&runs, &kept, Duration::from_secs(120))
        .await;
    let work = after.topology.work_queue.clone();
    wait_empty(&base, &work, Duration::from_secs(120)).await;
    assert!(
        !worker.is_finished(),
        "the worker is still running after the restart"
    );
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("the worker stops in time")
        .expect("the worker task does not panic");
    assert!(stopped.is_ok(), "the worker stops cleanly: {stopped:?}");

    world.assert_kept(&runs, &kept).await;
    // With the worker gone nothing is unacked: whatever is left is ready and counted.
    assert_eq!(ready(&base, &work).await, 0, "every event was acked");
    let dead = after.topology.dead_letter_queue.clone();
    assert_eq!(ready(&base, &dead).await, 0, "nothing was dead-lettered");
    let _ = after.broker.close().await;
    exp.delete().await.expect("delete experiment");
}

/// `s` pointed at `node` instead of the shared broker.
fn on(node: &PrivateNode, mut s: Settings) -> Settings {
    s.broker.url = node.url().parse().unwrap();
    s
}

/// Ready messages in `queue`, over a fresh connection (so it works across restarts).
async fn ready(settings: &Settings, queue: &str) -> u32 {
    let broker = Broker::connect(&settings.broker, "model-pruner restart test")
        .await
        .expect("connect to the private node");
    let count = broker
        .ready_messages(queue)
        .await
        .expect("passive queue.declare");
    let _ = broker.close().await;
    count
}

/// Waits until `queue` has had no ready messages for 3 s (redeliveries and retries from the
/// delay queue come back within that).
async fn wait_empty(settings: &Settings, queue: &str, timeout: Duration) {
    let mut empty_since = None;
    eventually_every(
        timeout,
        Duration::from_millis(250),
        &format!("{queue} still holds messages"),
        async || {
            let now = tokio::time::Instant::now();
            let len = ready(settings, queue).await;
            if len > 0 {
                empty_since = None;
            } else if now - *empty_since.get_or_insert(now) >= Duration::from_secs(3) {
                return Ok(());
            }
            Err(format!("{len} messages"))
        },
    )
    .await;
}

/// A single RabbitMQ node of the test's own: random name, free ports on 127.0.0.1, no plugins,
/// data, logs and Erlang cookie in a temporary directory. Stopped and removed on drop.
struct PrivateNode {
    name: String,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
}

impl PrivateNode {
    /// Creates the directory and boots the node, waiting until it accepts clients.
    fn start() -> PrivateNode {
        let id = format!("mp-{:08x}", rand::random::<u32>());
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir).expect("create the node's directory");
        let [port, dist_port] = free_ports();
        let node = PrivateNode {
            name: format!("{id}@localhost"),
            port,
            dist_port,
            dir,
        };
        // Our own cookie, found through HOME by the server and rabbitmqctl alike.
        let cookie = node.dir.join(".erlang.cookie");
        std::fs::write(&cookie, format!("{id}{:016x}", rand::random::<u64>())).expect("cookie");
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))
            .expect("cookie permissions");
        // No plugins: the management plugin would want port 15672, held by the shared node.
        std::fs::write(node.dir.join("enabled_plugins"), "[].").expect("plugins file");
        node.boot();
        node
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("node.pid")
    }

    /// Starts the node detached and waits until the rabbit application is up.
    fn boot(&self) {
        let out = self.command("rabbitmq-server").arg("-detached").output();
        let out = out.expect("run rabbitmq-server");
        assert!(out.status.success(), "rabbitmq-server: {}", show(&out));
        // await_startup fails at once while the node is still registering with epmd: retry.
        let deadline = Instant::now() + NODE_TIMEOUT;
        loop {
            let out = self.ctl(&["await_startup", "--timeout", "10"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} not up in {NODE_TIMEOUT:?}: {}\nlog: {}",
                self.name,
                show(&out),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Stops the node and its Erlang VM, waiting until both ports are released.
    fn stop(&self) {
        // Not `stop <pid_file>`: that waits forever when the file is already gone.
        let out = self.ctl(&["stop"]);
        assert!(
            out.status.success(),
            "stop node {}: {}",
            self.name,
            show(&out)
        );
        let deadline = Instant::now() + NODE_TIMEOUT;
        while [self.port, self.dist_port]
            .iter()
            .any(|p| TcpListener::bind(("127.0.0.1", *p)).is_err())
        {
            assert!(
                Instant::now() < deadline,
                "node {} still holds its ports {NODE_TIMEOUT:?} after stop",
                self.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn command(&self, script: &str) -> Command {
        let mut c = Command::new(Path::new(BIN).join(script));
        let dir = &self.dir;
        c.current_dir(dir)
            .env("HOME", dir)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", self.pid_file())
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            // Not the machine's rabbitmq.conf: defaults only.
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"));
        c
    }

    fn ctl(&self, args: &[&str]) -> Output {
        self.command("rabbitmqctl")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("run rabbitmqctl")
    }

    fn log_tail(&self) -> String {
        let log = self.dir.join("log").join(format!("{}.log", self.name));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        let stopped = self.ctl(&["stop"]);
        if !stopped.status.success() {
            // Last resort: the pid the node wrote, if that process is still our node.
            if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
                let pid = pid.trim();
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&self.name) {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Two distinct free ports below Linux's ephemeral range (32768 and up), so no outgoing
/// connection takes one while the node is down. rabbitmqctl listens on the distribution port
/// + 10000 to + 10010, which must stay below 65536.
fn free_ports() -> [u16; 2] {
    let mut held: Vec<TcpListener> = Vec::new();
    while held.len() < 2 {
        let port = rand::random_range(20_000..32_000);
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    let port = |l: &TcpListener| l.local_addr().expect("local address").port();
    [port(&held[0]), port(&held[1])]
}

fn show(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
