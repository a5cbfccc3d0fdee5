"""Prints what model-pruner did to the demo experiment: per run its accuracy, what happened
(kept, pruned, protected) with the reason model-pruner recorded, and the model files left in
the store; then the bytes freed against the sizes measured before.

usage: report.py RUNS.json BEFORE.json      (BEFORE.json: {run_id: bytes} from sizes.py)
"""
import json
import sys

import mlflow

from sizes import sizes


def main():
    logged = json.load(open(sys.argv[1]))
    before = json.load(open(sys.argv[2]))
    after = sizes(logged)
    client = mlflow.MlflowClient()
    registered = {v.run_id for v in client.search_model_versions(
        f"name = '{logged['name']}-registered'")}
    print(f"{'run':<12} {'accuracy':>8}  {'outcome':<10} {'model bytes':>11}  reason")
    for r in sorted(logged["runs"], key=lambda r: -r["accuracy"]):
        tags = client.get_run(r["run_id"]).data.tags
        if tags.get("model_pruner.deleted") == "true":
            outcome = "pruned"
        elif r["run_id"] in registered:
            outcome = "protected"
        else:
            outcome = "kept"
        reason = tags.get("model_pruner.reason", "in the top 2" if outcome == "kept" else
                          "a registered model version uses it")
        print(f"{r['name']:<12} {r['accuracy']:>8.2f}  {outcome:<10} "
              f"{after[r['run_id']]:>11}  {reason}")
    freed = sum(before.values()) - sum(after.values())
    print(f"\nfreed {freed} bytes of {sum(before.values())} "
          f"({sum(1 for v in after.values() if v == 0)} of {len(after)} models deleted)")


if __name__ == "__main__":
    sys.exit(main())
