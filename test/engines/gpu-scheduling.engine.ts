/**
 * GPU scheduling on a real API server and kube-scheduler: a GPU node that
 * advertises `nvidia.com/gpu` and carries the GPU taint, and a CPU node. A pod
 * with exactly the resources, node selector and tolerations of kaos's GPU
 * train spec is bound to the GPU node; CPU-only pods never land on it.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { planCluster } from "../../src/backends/kubernetes/cluster-plan.js";
import type { CreatePipelineRequestSpec, ResourceSpecJson, TolerationSpec } from "../../src/backends/kubernetes/specs.js";
import { makeClusterProject, type ClusterProject } from "../fixtures/kubernetes/project.js";
// @ts-expect-error plain JavaScript module of the engine scripts
import { apiRequest, startCluster, watchUntil } from "../../scripts/engines/cluster.mjs";

interface Cluster {
  server: string;
  token: string;
  version: string;
  stop(): Promise<void>;
}
interface Pod {
  metadata: { name: string };
  spec: { nodeName?: string };
  status?: { conditions?: { type: string; status: string; reason?: string }[] };
}

const NAMESPACE = "kaos-gpu";
let cluster: Cluster;
let project: ClusterProject;
let train: CreatePipelineRequestSpec;

async function create(path: string, body: unknown): Promise<void> {
  const response = await apiRequest(cluster, "POST", path, body);
  expect(response.status, response.body).toBe(201);
}

function node(name: string, options: { gpu: boolean }): unknown {
  const now = new Date().toISOString();
  const resources = { cpu: "8", memory: "32Gi", pods: "110", ...(options.gpu ? { "nvidia.com/gpu": "1" } : {}) };
  return {
    apiVersion: "v1",
    kind: "Node",
    metadata: {
      name,
      labels: { "kubernetes.io/hostname": name, ...(options.gpu ? { "cloud.google.com/gke-accelerator": "nvidia-tesla-t4" } : {}) },
    },
    spec: options.gpu ? { taints: [{ key: "nvidia.com/gpu", value: "present", effect: "NoSchedule" }] } : {},
    // Nodes take their status on create, as a kubelet registers them.
    status: {
      capacity: resources,
      allocatable: resources,
      conditions: [
        { type: "Ready", status: "True", reason: "KubeletReady", message: "ready", lastHeartbeatTime: now, lastTransitionTime: now },
      ],
    },
  };
}

/** Pachyderm's resource spec as a container's requests or limits. */
function quantities(spec: ResourceSpecJson | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (spec?.cpu !== undefined) out["cpu"] = String(spec.cpu);
  if (spec?.memory !== undefined) out["memory"] = spec.memory;
  if (spec?.gpu !== undefined) out[spec.gpu.type] = String(spec.gpu.number);
  return out;
}

/** Pachyderm's toleration enums in Kubernetes' spelling. */
function toleration(spec: TolerationSpec): Record<string, unknown> {
  const effect = { NO_SCHEDULE: "NoSchedule", PREFER_NO_SCHEDULE: "PreferNoSchedule", NO_EXECUTE: "NoExecute" } as const;
  return {
    ...(spec.key !== undefined ? { key: spec.key } : {}),
    ...(spec.operator !== undefined ? { operator: spec.operator === "EXISTS" ? "Exists" : "Equal" } : {}),
    ...(spec.value !== undefined ? { value: spec.value } : {}),
    ...(spec.effect !== undefined ? { effect: effect[spec.effect] } : {}),
    ...(spec.tolerationSeconds !== undefined ? { tolerationSeconds: spec.tolerationSeconds } : {}),
  };
}

function pod(
  name: string,
  spec: Record<string, unknown>,
  resources: { requests: Record<string, string>; limits: Record<string, string> },
): unknown {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name },
    spec: { ...spec, containers: [{ name: "user", image: "registry.example.com/ml/mnist-svm:train", resources }] },
  };
}

const bound = (name: string) => (object: Pod) => object.metadata.name === name && object.spec.nodeName !== undefined;
const unschedulable = (name: string) => (object: Pod) =>
  object.metadata.name === name &&
  (object.status?.conditions ?? []).some((c) => c.type === "PodScheduled" && c.status === "False" && c.reason === "Unschedulable");

beforeAll(async () => {
  cluster = (await startCluster({ scheduler: true })) as Cluster;
  project = makeClusterProject([{ name: "svm", gpu: 1, cpu: 2, memory: "4Gi" }], {
    gpu: {
      nodeSelector: { "cloud.google.com/gke-accelerator": "nvidia-tesla-t4" },
      tolerations: [{ key: "nvidia.com/gpu", operator: "Exists", effect: "NoSchedule" }],
    },
  });
  const plan = await planCluster(project.config, project.stack, project.inputs);
  train = plan.pipelines[0]!.specs.find((spec) => spec.stage === "train")!.spec;
  await create("/api/v1/namespaces", { apiVersion: "v1", kind: "Namespace", metadata: { name: NAMESPACE } });
  await create("/api/v1/nodes", node("gpu-node", { gpu: true }));
  await create("/api/v1/nodes", node("cpu-node", { gpu: false }));
  process.stdout.write(`engines: GPU scheduling on kube-apiserver and kube-scheduler ${cluster.version}\n`);
});

afterAll(async () => {
  await cluster?.stop();
  project?.remove();
});

describe("GPU scheduling of kaos's train spec (real kube-apiserver and kube-scheduler)", () => {
  it("binds a pod with the train spec's resources, node selector and tolerations to the GPU node", async () => {
    expect(train.resourceLimits?.gpu).toEqual({ type: "nvidia.com/gpu", number: 1 });
    const spec = {
      nodeSelector: train.schedulingSpec?.nodeSelector,
      tolerations: (train.tolerations ?? []).map(toleration),
    };
    const watching = watchUntil(cluster, `/api/v1/namespaces/${NAMESPACE}/pods`, bound("gpu-train"));
    await create(
      `/api/v1/namespaces/${NAMESPACE}/pods`,
      pod("gpu-train", spec, { requests: quantities(train.resourceRequests), limits: quantities(train.resourceLimits) }),
    );
    const scheduled = (await watching) as Pod;
    expect(scheduled.spec.nodeName).toBe("gpu-node");
  });

  it("places a CPU-only pod on the CPU node, never on the tainted GPU node", async () => {
    const watching = watchUntil(cluster, `/api/v1/namespaces/${NAMESPACE}/pods`, bound("cpu-build"));
    await create(
      `/api/v1/namespaces/${NAMESPACE}/pods`,
      pod("cpu-build", {}, { requests: { cpu: "1", memory: "1Gi" }, limits: { cpu: "1", memory: "1Gi" } }),
    );
    expect(((await watching) as Pod).spec.nodeName).toBe("cpu-node");
    // Aimed at the GPU node without the toleration: the taint keeps it off, and it stays unschedulable.
    const refused = watchUntil(cluster, `/api/v1/namespaces/${NAMESPACE}/pods`, unschedulable("cpu-on-gpu"));
    await create(
      `/api/v1/namespaces/${NAMESPACE}/pods`,
      pod("cpu-on-gpu", { nodeSelector: train.schedulingSpec?.nodeSelector }, { requests: { cpu: "1" }, limits: { cpu: "1" } }),
    );
    const pending = (await refused) as Pod;
    expect(pending.spec.nodeName).toBeUndefined();
  });
});
