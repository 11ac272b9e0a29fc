import { defineStack } from "kaos-ml";

// Kubernetes + Pachyderm, applied through Pulumi: `kaos up --stack cluster`.
// `kaos render --stack cluster -o DIR` writes what this stack would apply,
// without a cluster or the Pulumi CLI. See docs/kubernetes.md in the kaos-ml
// package (node_modules/kaos-ml/docs/kubernetes.md).
export default defineStack({
  backend: "kubernetes",

  // Namespace Pachyderm runs its pipeline workers in (where pachd is
  // deployed): the registry secret must live there. Created when missing,
  // adopted when it exists, never deleted by kaos.
  namespace: "pachyderm",

  // Kubeconfig context to use; the current context when unset.
  // kubeContext: "my-gpu-cluster",

  pachyderm: {
    // pachd's HTTP API (the server on pachd's port 1659 that serves /api/), as
    // reachable from this machine: after `kubectl -n pachyderm port-forward
    // deploy/pachd 1659`, http://localhost:1659; or an address that routes to it.
    address: "http://localhost:1659",
    // Environment variable holding a Pachyderm auth token (when auth is on).
    // Read at run time, never written to state or logs. Default PACHYDERM_TOKEN.
    tokenEnv: "PACHYDERM_TOKEN",
    // Pachyderm project holding the repos and pipelines. Default "default".
    project: "default",
  },

  registry: {
    // Image repository prefix; images are <url>/<workspace>-<pipeline>:<env key>-<source key>.
    url: "registry.example.com/ml",
    // docker-registry secret used to push (builds) and pull (training). Default "kaos-registry".
    secretName: "kaos-registry",
    // Environment variables with the registry credentials. When both are set,
    // kaos creates the secret (encrypted in Pulumi's state with the
    // passphrase); otherwise create it yourself (see kaos-ml's docs/kubernetes.md).
    usernameEnv: "KAOS_REGISTRY_USERNAME",
    passwordEnv: "KAOS_REGISTRY_PASSWORD",
  },

  // Where pipelines with resources.gpu > 0 run. Build and ingest never ask for GPUs.
  gpu: {
    // Extended resource name of the GPUs. Default "nvidia.com/gpu".
    resourceName: "nvidia.com/gpu",
    // Node labels a GPU pod must match.
    nodeSelector: { "cloud.google.com/gke-accelerator": "nvidia-tesla-t4" },
    // Taints of GPU nodes that GPU pods tolerate.
    tolerations: [{ key: "nvidia.com/gpu", operator: "Exists", effect: "NoSchedule" }],
  },

  pulumi: {
    // Pulumi state backend. Default: a file backend in .kaos/pulumi beside kaos.config.ts.
    // backendUrl: "s3://my-bucket/kaos-state",
    // Pulumi stack name. Default: the stack file's name ("cluster").
    // stackName: "cluster",
    // Environment variable with the secrets passphrase. Default PULUMI_CONFIG_PASSPHRASE.
    passphraseEnv: "PULUMI_CONFIG_PASSPHRASE",
  },

  // Image that builds the source bundle's Dockerfile inside the cluster:
  // rootless BuildKit by default; an image whose name contains "kaniko" is run as kaniko.
  builderImage: "moby/buildkit:v0.16.0-rootless",
});
