"""Logs a small experiment with the real mlflow client, as a training script would: six finished
runs with an accuracy each and a model each (MLflow 3 logged models), the worst one registered in
the model registry. Prints the experiment id and the run ids as JSON on the last line.

Used by scripts/demo.sh; needs MLFLOW_TRACKING_URI and the S3 settings of the local stack.
"""
import json
import sys
import uuid

import mlflow


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input):
        return model_input


def main():
    name = f"model-pruner-demo-{uuid.uuid4().hex[:6]}"
    experiment_id = mlflow.create_experiment(
        name,
        tags={"model_pruner.metric": "accuracy", "model_pruner.direction": "max",
              "model_pruner.keep_top": "2"},
    )
    runs = []
    for i, accuracy in enumerate([0.61, 0.74, 0.69, 0.91, 0.58, 0.83]):
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"fine-tune-{i}") as run:
            mlflow.log_param("learning_rate", 10 ** -(i % 3 + 3))
            mlflow.log_metric("accuracy", accuracy)
            info = mlflow.pyfunc.log_model(name="model", python_model=Echo())
            runs.append({"run_id": run.info.run_id, "name": f"fine-tune-{i}",
                         "accuracy": accuracy, "model_id": info.model_id})
    # The worst run's model is in the registry: the pruner must keep it anyway.
    worst = min(runs, key=lambda r: r["accuracy"])
    mlflow.register_model(f"models:/{worst['model_id']}", f"{name}-registered")
    print(json.dumps({"experiment_id": experiment_id, "name": name, "runs": runs}))


if __name__ == "__main__":
    sys.exit(main())
