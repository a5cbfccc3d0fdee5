//! One test's world: the shared MLflow/S3 world (`support::world`) plus the engine built from
//! the stack's settings, which a test may adjust first; and a pass held at its listings while
//! the test changes the world.

use std::ops::Deref;
use std::time::Duration;

use model_pruner::domain::event::Event;
use model_pruner::engine::{Engine, PassReport, PruneError};
use model_pruner::metrics::Metrics;
use model_pruner::settings::Settings;

use crate::support::mlflow_fixtures::Mlflow;
use crate::support::proxy::Proxy;
pub use crate::support::world::{
    BUCKET, Layout, METRIC, keep, mlflow2_uri, proxied_destination, run_finished, sweep,
};

pub struct World {
    world: crate::support::world::World,
    pub settings: Settings,
}

impl Deref for World {
    type Target = crate::support::world::World;

    fn deref(&self) -> &Self::Target {
        &self.world
    }
}

pub fn settings() -> Settings {
    if std::env::var_os("TEST_LOG").is_some() {
        model_pruner::telemetry::init(model_pruner::settings::LogFormat::Pretty, false);
    }
    let mut s =
        Settings::load(None).expect("settings load (run: eval \"$(scripts/stack.sh env)\")");
    s.policy.metric = METRIC.into();
    s.policy.keep_top = 2;
    s.store.allowed_buckets = vec![BUCKET.into()];
    s.retry.in_process_attempts = 2;
    s.retry.initial_backoff = Duration::from_millis(10);
    s.retry.max_backoff = Duration::from_millis(50);
    s
}

impl World {
    pub fn new() -> World {
        World {
            world: crate::support::world::World::new("engine"),
            settings: settings(),
        }
    }

    /// A world on the stack's tracking server with proxied artifacts (`mlflow-artifacts:/`
    /// URIs), the engine set up as for a production server of that kind.
    pub fn proxied() -> World {
        let uri = std::env::var("MODEL_PRUNER_TEST_PROXIED_MLFLOW_URI")
            .expect("MODEL_PRUNER_TEST_PROXIED_MLFLOW_URI (eval \"$(scripts/stack.sh env)\")");
        let mut settings = settings();
        settings.mlflow.tracking_uri = uri.parse().expect("a URL");
        settings.store.artifacts_destination = proxied_destination().parse().expect("a URL");
        World {
            world: crate::support::world::World::on("engine", Mlflow::new(&uri)),
            settings,
        }
    }

    /// A world on the stack's MLflow 2.x tracking server (no logged-models API).
    pub fn mlflow2() -> World {
        let mut settings = settings();
        settings.mlflow.tracking_uri = mlflow2_uri().parse().expect("a URL");
        World {
            world: crate::support::world::World::mlflow2("engine"),
            settings,
        }
    }

    pub fn engine(&self) -> Engine {
        Engine::new(&self.settings, &Metrics::new()).expect("engine builds")
    }
}

pub async fn handle(engine: &Engine, event: Event) -> Result<PassReport, PruneError> {
    engine.handle(&event).await
}

/// ListObjectsV2 on the store, path style: `GET /<bucket>?list-type=2&...`.
const LIST_OBJECTS: (&str, &str) = ("GET", "list-type=2");

/// Runs `event` with every store listing held until `change` is done: the pass has ranked and
/// planned, and is about to list the files it will delete.
pub async fn changed_while_listing(
    w: &World,
    proxy: &Proxy,
    event: Event,
    change: impl Future<Output = ()>,
) -> Result<PassReport, PruneError> {
    let mut held = proxy.hold(LIST_OBJECTS, None);
    let writer = async {
        let release = held.recv().await.expect("the pass lists files");
        change.await;
        release.send(()).expect("the pass waits");
        // The other walks' listings, and any later page, go on at once.
        tokio::spawn(async move {
            while let Some(release) = held.recv().await {
                let _ = release.send(());
            }
        });
    };
    let engine = w.engine();
    let (report, ()) = tokio::join!(handle(&engine, event), writer);
    report
}
