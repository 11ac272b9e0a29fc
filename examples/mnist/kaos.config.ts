import { defineConfig } from "kaos-ml";

// Trains an SVM on scikit-learn's digits, once per combination of the grid.
export default defineConfig({
  workspace: "mnist",
  pipelines: {
    svm: {
      source: "model-train/mnist",
      data: "data/features",
      hyperparams: "hyperopt/params.json",
      resources: { cpu: 1, memory: "1Gi", gpu: 0 },
      parallelism: 2,
    },
  },
});
