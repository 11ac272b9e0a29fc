import { defineConfig } from "vitest/config";

// The real-engine tier (`npm run test:engines`): the Pulumi CLI, etcd,
// kube-apiserver and kube-scheduler built from the Go module proxy (cached in
// .cache/engines) and started on loopback. Apart from `npm test`: the first
// run builds for many minutes.
export default defineConfig({
  test: {
    include: ["test/engines/**/*.engine.ts"],
    globalSetup: ["test/engines/setup.ts"],
    testTimeout: 300_000,
    hookTimeout: 3_600_000,
    pool: "forks",
    maxWorkers: 1,
    fileParallelism: false,
  },
});
