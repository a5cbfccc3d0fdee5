//! Tests that change RabbitMQ's own settings for the whole broker (a short consumer_timeout),
//! so they must not run beside other tests: `scripts/test.sh` runs this module on its own,
//! after the rest of the suite. Each restores the settings it changed.
//!
//! RabbitMQ closes the channel of a consumer that holds a delivery unacked longer than
//! `consumer_timeout`; every unacked delivery on it is then redelivered, and a later ack on
//! that channel goes nowhere.

use std::process::Command;
use std::time::Duration;

use model_pruner::settings::Settings;

use crate::helpers::{TestApp, prune, run_finished, settings, wait_drained};
use crate::support::management::Management;
use crate::support::mlflow_fixtures::ExperimentFixture;
use crate::support::proxy::{Action, Proxy};
use crate::support::world::{Layout, ModelRun, World};

/// ListObjectsV2 on the store, path style: `GET /<bucket>?list-type=2&...`.
const LIST_OBJECTS: (&str, &str) = ("GET", "list-type=2");
/// How long the first listing of a pass is stalled: longer than the consumer timeout below
/// and its check interval.
const SLOW_LISTING: Duration = Duration::from_secs(25);

/// Values of the `rabbit` application's environment, set for a test and put back on drop.
struct BrokerEnv {
    previous: Vec<(&'static str, Option<String>)>,
}

fn rabbitmqctl_eval(expression: &str) -> String {
    let out = Command::new("rabbitmqctl")
        .args(["eval", expression])
        .output()
        .expect("rabbitmqctl runs (RabbitMQ on this machine)");
    assert!(
        out.status.success(),
        "rabbitmqctl eval {expression}: {out:?}"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl BrokerEnv {
    fn set(values: &[(&'static str, u64)]) -> BrokerEnv {
        let mut previous = Vec::new();
        for (key, value) in values {
            let old = rabbitmqctl_eval(&format!("application:get_env(rabbit, {key})."));
            let old = old
                .strip_prefix("{ok,")
                .and_then(|v| v.strip_suffix('}'))
                .map(str::to_owned);
            previous.push((*key, old));
            rabbitmqctl_eval(&format!("application:set_env(rabbit, {key}, {value})."));
        }
        BrokerEnv { previous }
    }
}

impl Drop for BrokerEnv {
    fn drop(&mut self) {
        for (key, old) in &self.previous {
            match old {
                Some(v) => rabbitmqctl_eval(&format!("application:set_env(rabbit, {key}, {v}).")),
                None => rabbitmqctl_eval(&format!("application:unset_env(rabbit, {key}).")),
            };
        }
    }
}

/// A 15 s consumer timeout, checked every second (channels opened from now on).
fn short_consumer_timeout() -> BrokerEnv {
    BrokerEnv::set(&[
        ("consumer_timeout", 15_000),
        ("channel_tick_interval", 1_000),
    ])
}

/// Three runs ranked 0.1, 0.2, 0.3 keeping two, and settings whose store goes through `proxy`
/// (see [`slow_down`]).
async fn slow_scene(world: &World, proxy: &Proxy) -> (ExperimentFixture, Vec<ModelRun>, Settings) {
    let exp = world.experiment().await;
    let runs = world
        .ranked_runs(&exp, Layout::Classic, &[0.1, 0.2, 0.3])
        .await;
    let mut s = settings();
    s.store.endpoint = Some(proxy.url().into());
    s.concurrency.shutdown_grace = Duration::from_secs(40);
    (exp, runs, s)
}

/// Once the worker consumes (its start-up check has listed the buckets): the store stalls the
/// next listing for [`SLOW_LISTING`], so the first pass outlives the consumer timeout.
async fn slow_down(app: &TestApp, proxy: &Proxy) {
    app.wait_consumers(&app.topology.work_queue, 1, Duration::from_secs(30))
        .await;
    proxy.rule(LIST_OBJECTS, Action::Stall(SLOW_LISTING), Some(1));
}

/// Deliveries of `queue` RabbitMQ took back and delivered again, from the management API.
async fn redelivered(queue: &str) -> u64 {
    let q = Management::from_env().queue(queue).await.expect("listed");
    q["message_stats"]["redeliver"].as_u64().unwrap_or(0)
}

/// The value of a counter of the first worker of `app`.
fn counter(app: &TestApp, name: &str, label: (&str, &str)) -> f64 {
    app.metrics()
        .registry()
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == label.0 && l.value() == label.1)
        })
        .map(|m| m.get_counter().value())
        .sum()
}

#[tokio::test]
async fn broker_wide_a_pass_outliving_the_ack_deadline_is_cut_before_the_consumer_timeout() {
    let _env = short_consumer_timeout();
    let world = World::new("worker");
    let proxy = Proxy::store().await;
    let (exp, runs, mut s) = slow_scene(&world, &proxy).await;
    s.broker.ack_deadline = Duration::from_secs(5);
    s.broker.confirm_timeout = Duration::from_secs(2);
    let app = TestApp::spawn(s).await;
    slow_down(&app, &proxy).await;

    // The sweep's pass stalls on the store; the run.finished waits for it.
    app.publish("experiment.prune", &prune(&exp, 2, false))
        .await;
    app.publish("run.finished", &run_finished(&exp, &runs[2], 2))
        .await;
    world
        .wait_pruned(&runs, &[1, 2], Duration::from_secs(90))
        .await;
    wait_drained(&app, Duration::from_secs(60)).await;

    assert_eq!(
        redelivered(&app.topology.work_queue).await,
        0,
        "RabbitMQ never timed the worker out and took an event back"
    );
    assert!(
        counter(&app, "model_pruner_passes_total", ("outcome", "timed_out")) >= 1.0,
        "the stalled pass was cut at the deadline"
    );
    assert!(
        counter(
            &app,
            "model_pruner_messages_finished_total",
            ("outcome", "delayed")
        ) >= 1.0,
        "its event was retried after a delay"
    );
    assert!(
        counter(
            &app,
            "model_pruner_messages_finished_total",
            ("outcome", "handed_back")
        ) >= 1.0,
        "the event waiting for it was handed back"
    );
    assert_eq!(
        counter(&app, "model_pruner_acks_lost_total", ("operation", "ack")),
        0.0
    );
    world.assert_kept(&runs, &[1, 2]).await;
    app.cleanup().await;
    exp.delete().await.expect("delete experiment");
}

#[tokio::test]
async fn broker_wide_an_ack_the_broker_never_got_is_counted_and_the_event_redone() {
    let _env = short_consumer_timeout();
    let world = World::new("worker");
    let proxy = Proxy::store().await;
    let (exp, runs, mut s) = slow_scene(&world, &proxy).await;
    // A deadline past the broker's timeout, as a misconfigured worker would have.
    s.broker.ack_deadline = Duration::from_secs(3600);
    let app = TestApp::spawn(s).await;
    slow_down(&app, &proxy).await;

    app.publish("experiment.prune", &prune(&exp, 2, false))
        .await;
    world
        .wait_pruned(&runs, &[1, 2], Duration::from_secs(90))
        .await;
    wait_drained(&app, Duration::from_secs(90)).await;

    assert!(
        counter(&app, "model_pruner_acks_lost_total", ("operation", "ack")) >= 1.0,
        "the ack sent after the channel closed is counted as lost"
    );
    assert!(
        redelivered(&app.topology.work_queue).await >= 1,
        "RabbitMQ redelivered the event"
    );
    world.assert_kept(&runs, &[1, 2]).await;
    app.cleanup().await;
    exp.delete().await.expect("delete experiment");
}
