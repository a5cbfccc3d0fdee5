//! The three services the product talks to answer over real connections.

use lapin::{Connection, ConnectionProperties};
use model_pruner::metrics::Metrics;
use model_pruner::mlflow::MlflowClient;
use model_pruner::store::ObjectStore;

use crate::world::{BUCKET, settings};

#[tokio::test]
async fn rabbitmq_accepts_a_connection() {
    let s = settings();
    let conn = Connection::connect(
        s.broker.url.expose().as_str(),
        ConnectionProperties::default(),
    )
    .await
    .expect("RabbitMQ answers");
    assert!(conn.status().connected());
}

#[tokio::test]
async fn mlflow_answers_its_rest_api() {
    let s = settings();
    let client = MlflowClient::new(&s.mlflow, &Metrics::new()).unwrap();
    let err = client.get_experiment("999999999").await.unwrap_err();
    assert!(err.is_not_found(), "MLflow should answer 404, got: {err}");
    client
        .get_experiment("0")
        .await
        .expect("the Default experiment");
}

#[tokio::test]
async fn the_store_answers_and_has_the_bucket() {
    let s = settings();
    let store = ObjectStore::new(&s.store, &Metrics::new());
    store
        .usage(BUCKET, "no-such-prefix/")
        .await
        .expect("bucket mlflow answers");
}
