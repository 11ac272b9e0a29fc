import { defineConfig } from "kaos-ml";

// This repository's own pipeline: the mnist example on the local backend.
export default defineConfig({
  workspace: "mnist",
  pipelines: {
    svm: {
      source: "examples/mnist/model-train/mnist",
      data: "examples/mnist/data/features",
      // manifest: "examples/mnist/data_manifest_micro", // the same data, fetched over HTTP
      hyperparams: "examples/mnist/hyperopt/params.json",
      resources: { cpu: 1, memory: "1Gi", gpu: 0 },
      parallelism: 2,
    },
  },
});
