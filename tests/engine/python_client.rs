//! Models logged by the real `mlflow` Python client, in both layouts, so the fixtures' idea of
//! where MLflow puts files is checked against MLflow itself.

use std::process::Command;

use model_pruner::domain::event::{Event, ExperimentPrune};
use serde_json::Value;

use crate::support::store_fixtures;
use crate::world::{World, keep};

/// Logs three runs per experiment: pyfunc logged models (MLflow 3) in one, classic
/// `artifacts/model/` folders with the `model_uploaded` param in the other.
const SCRIPT: &str = r#"
import json, os, sys, tempfile, uuid
import mlflow

class Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input):
        return model_input

out = {}
for layout in ("logged", "classic"):
    exp = mlflow.create_experiment(f"python-{layout}-{uuid.uuid4().hex[:8]}")
    runs = []
    for i, acc in enumerate([0.2, 0.9, 0.5]):
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.log_metric("accuracy", acc)
            if layout == "logged":
                info = mlflow.pyfunc.log_model(name="model", python_model=Constant())
                uri = mlflow.get_logged_model(info.model_id).artifact_location
            else:
                with tempfile.TemporaryDirectory() as d:
                    for n in range(3):
                        with open(os.path.join(d, f"weights-{n}.bin"), "w") as f:
                            f.write("w" * 100)
                    mlflow.log_artifacts(d, "model")
                mlflow.log_param("model_uploaded", 1)
                uri = run.info.artifact_uri + "/model"
            runs.append({"run_id": run.info.run_id, "uri": uri})
    out[layout] = {"experiment_id": exp, "runs": runs}
print(json.dumps(out))
"#;

fn log_with_python() -> Value {
    run_python("MODEL_PRUNER_PYTHON", SCRIPT, &[])
}

/// Runs `script` with the Python interpreter named by the variable `python` (set by
/// `scripts/stack.sh env`) and `env` on top, and reads the JSON of its last line.
pub fn run_python(python: &str, script: &str, env: &[(&str, String)]) -> Value {
    let interpreter =
        std::env::var(python).unwrap_or_else(|_| panic!("{python} (set by scripts/stack.sh env)"));
    let output = Command::new(interpreter)
        .arg("-c")
        .arg(script)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run the mlflow Python client");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).expect("the script's JSON")
}

#[tokio::test]
async fn models_logged_by_the_mlflow_client_are_pruned_in_both_layouts() {
    let w = World::new();
    let logged = tokio::task::spawn_blocking(log_with_python).await.unwrap();
    let engine = w.engine();
    for layout in ["logged", "classic"] {
        let exp_id = logged[layout]["experiment_id"].as_str().unwrap().to_owned();
        let prefixes: Vec<(String, String)> = logged[layout]["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let uri = r["uri"].as_str().unwrap();
                let (bucket, key) = uri.strip_prefix("s3://").unwrap().split_once('/').unwrap();
                (bucket.to_owned(), format!("{}/", key.trim_end_matches('/')))
            })
            .collect();
        for (bucket, prefix) in &prefixes {
            let n = store_fixtures::count_objects(&w.s3, bucket, prefix)
                .await
                .unwrap();
            assert!(
                n > 0,
                "{layout}: MLflow wrote nothing under {bucket}/{prefix}"
            );
        }
        let event = sweep_for(&exp_id);
        let report = engine.handle(&event).await.unwrap();
        assert_eq!(report.pruned.len(), 2, "{layout}");
        let mut left = Vec::new();
        for (bucket, prefix) in &prefixes {
            left.push(
                store_fixtures::count_objects(&w.s3, bucket, prefix)
                    .await
                    .unwrap(),
            );
        }
        assert!(
            left[0] == 0 && left[1] > 0 && left[2] == 0,
            "{layout}: {left:?}"
        );
    }
}

fn sweep_for(experiment_id: &str) -> Event {
    Event::ExperimentPrune(ExperimentPrune {
        experiment_id: experiment_id.to_owned(),
        policy: keep(1),
        delete_experiment: false,
        dry_run: false,
        force: false,
    })
}
