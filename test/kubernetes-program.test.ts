import { describe, it, expect, afterEach } from "vitest";
import * as pulumi from "@pulumi/pulumi";
import { planCluster } from "../src/backends/kubernetes/cluster-plan.js";
import { declareCluster } from "../src/backends/kubernetes/program.js";
import { makeClusterProject, sha, withDataKey, withSourceKey, type ClusterProject } from "./fixtures/kubernetes/project.js";
import type { ClusterPipelineInput } from "../src/backends/kubernetes/index.js";

const TOKEN = "pachyderm-token-7c1e";
const ENV = {
  KAOS_TEST_PACHYDERM_TOKEN: TOKEN,
  KAOS_TEST_REGISTRY_USER: "robot",
  KAOS_TEST_REGISTRY_PASSWORD: "registry-password-55",
};

/** How Pulumi marks a secret value in serialized inputs (sdk/nodejs/runtime/rpc.ts). */
const SECRET_SIGNATURE_KEY = "4dabf18193072939515e22adb298388d";
const SECRET_SIGNATURE = "1b47061264138c4ac30d75fd1eb44270";

interface Declared {
  type: string;
  name: string;
  inputs: Record<string, unknown>;
}

const projects: ClusterProject[] = [];
afterEach(() => {
  for (const project of projects.splice(0)) project.remove();
});

function twoPipelines(): ClusterProject {
  const project = makeClusterProject([
    { name: "svm", grid: { kernel: ["linear", "poly"], C: [1, 10] } },
    { name: "cnn", gpu: 2, manifest: true, memory: "8Gi" },
  ]);
  projects.push(project);
  return project;
}

/** Runs the program under Pulumi's mocks and answers every resource it registered, with its inputs. */
async function declare(project: ClusterProject, inputs: ClusterPipelineInput[], env: NodeJS.ProcessEnv = ENV): Promise<Declared[]> {
  const registered: Declared[] = [];
  await pulumi.runtime.setMocks(
    {
      newResource(args) {
        registered.push({ type: args.type, name: args.name, inputs: args.inputs as Record<string, unknown> });
        return { id: `${args.name}-id`, state: args.inputs };
      },
      call(args) {
        return args.inputs;
      },
    },
    "kaos-mnist",
    "cluster",
    false,
  );
  const plan = await planCluster(project.config, project.stack, inputs);
  const declared = declareCluster(plan, { env, implUrl: "file:///opt/kaos/dist/backends/kubernetes/provider-impl.js" });
  const resources: pulumi.CustomResource[] = [
    declared.namespace,
    ...(declared.registrySecret ? [declared.registrySecret] : []),
    ...declared.repos.values(),
    ...declared.bundles.values(),
    ...declared.pipelines.values(),
  ];
  await Promise.all(resources.map((resource) => new Promise((resolve) => resource.urn.apply(resolve))));
  return registered;
}

function ofType(declared: Declared[], type: string): Declared[] {
  return declared.filter((resource) => resource.type === type);
}

function byName(declared: Declared[], name: string): Declared {
  const found = declared.find((resource) => resource.name === name);
  if (!found) throw new Error(`no resource ${name} among ${declared.map((resource) => resource.name).join(", ")}`);
  return found;
}

/** Inputs without the serialized provider source, keyed by type and name. */
function inputsByResource(declared: Declared[]): Map<string, string> {
  return new Map(
    declared.map((resource) => {
      const { __provider: _provider, ...inputs } = resource.inputs;
      return [`${resource.type}::${resource.name}`, JSON.stringify(inputs)];
    }),
  );
}

describe("Pulumi program (under pulumi.runtime.setMocks)", () => {
  it("declares the namespace, the registry secret, the repos, the bundle commits and the pipelines", async () => {
    const project = twoPipelines();
    const declared = await declare(project, project.inputs);

    const provider = ofType(declared, "pulumi:providers:kubernetes")[0];
    expect(provider?.inputs).toMatchObject({ enableServerSideApply: "true", upsertExistingObjects: "true" });
    expect(byName(declared, "namespace")).toMatchObject({
      type: "kubernetes:core/v1:Namespace",
      inputs: { metadata: { name: "pachyderm", labels: { "app.kubernetes.io/managed-by": "kaos" } } },
    });
    const secret = byName(declared, "registry-secret");
    expect(secret.type).toBe("kubernetes:core/v1:Secret");
    expect(secret.inputs).toMatchObject({
      type: "kubernetes.io/dockerconfigjson",
      metadata: { name: "kaos-registry", namespace: "pachyderm" },
    });
    // The credentials reach Pulumi only as a secret (Pulumi's secret signature wraps them).
    const stringData = secret.inputs["stringData"] as Record<string, unknown>;
    expect(stringData[SECRET_SIGNATURE_KEY]).toBe(SECRET_SIGNATURE);
    const dockerConfig = JSON.parse(String((stringData["value"] as Record<string, unknown>)[".dockerconfigjson"])) as {
      auths: Record<string, { username: string; password: string }>;
    };
    expect(dockerConfig.auths["registry.example.com"]).toMatchObject({ username: "robot", password: "registry-password-55" });

    expect(
      ofType(declared, "pulumi-nodejs:dynamic/pachyderm:Repo")
        .map((repo) => repo.name)
        .sort(),
    ).toEqual(["mnist-cnn-manifest", "mnist-cnn-params", "mnist-cnn-source", "mnist-svm-data", "mnist-svm-params", "mnist-svm-source"]);
    const svm = project.inputs[0];
    const bundles = ofType(declared, "pulumi-nodejs:dynamic/pachyderm:Bundle");
    expect(bundles.map((bundle) => bundle.name).sort()).toEqual([
      "mnist-cnn-manifest-bundle",
      "mnist-cnn-params-bundle",
      "mnist-cnn-source-bundle",
      "mnist-svm-data-bundle",
      "mnist-svm-params-bundle",
      "mnist-svm-source-bundle",
    ]);
    expect(byName(declared, "mnist-svm-source-bundle").inputs).toMatchObject({ repo: "mnist-svm-source", key: svm?.keys.source });
    expect(byName(declared, "mnist-svm-data-bundle").inputs).toMatchObject({ repo: "mnist-svm-data", key: svm?.keys.data });
    const params = byName(declared, "mnist-svm-params-bundle").inputs["source"] as { kind: string; files: { path: string }[] };
    expect(params.kind).toBe("params");
    expect(params.files.map((file) => file.path)).toEqual(svm?.jobs.map((job) => `/${job.key}.json`));

    expect(
      ofType(declared, "pulumi-nodejs:dynamic/pachyderm:Pipeline")
        .map((pipeline) => pipeline.name)
        .sort(),
    ).toEqual(["mnist-cnn-build", "mnist-cnn-ingest", "mnist-cnn-train", "mnist-svm-build", "mnist-svm-train"]);
    for (const resource of declared.filter((resource) => resource.type.startsWith("pulumi-nodejs:dynamic/"))) {
      expect(resource.inputs).toMatchObject({
        address: "http://127.0.0.1:30650",
        project: "default",
        tokenEnv: "KAOS_TEST_PACHYDERM_TOKEN",
      });
      expect(typeof resource.inputs["__provider"]).toBe("string");
    }
  });

  it("puts the GPU limits, node selector and tolerations on GPU train pipelines only", async () => {
    const project = twoPipelines();
    const declared = await declare(project, project.inputs);
    const spec = (name: string) => JSON.parse(String(byName(declared, name).inputs["spec"])) as Record<string, unknown>;
    const gpuTrain = spec("mnist-cnn-train");
    expect(gpuTrain["resourceLimits"]).toEqual({ cpu: 1, memory: "8Gi", gpu: { type: "nvidia.com/gpu", number: 2 } });
    expect(gpuTrain["resourceRequests"]).toEqual({ cpu: 1, memory: "8Gi", gpu: { type: "nvidia.com/gpu", number: 2 } });
    expect(gpuTrain["schedulingSpec"]).toEqual({ nodeSelector: { "cloud.google.com/gke-accelerator": "nvidia-tesla-t4" } });
    expect(gpuTrain["tolerations"]).toEqual([
      { effect: "NO_SCHEDULE", key: "nvidia.com/gpu", operator: "EXISTS" },
      { effect: "NO_EXECUTE", key: "dedicated", operator: "EQUAL", tolerationSeconds: 60, value: "ml" },
    ]);
    for (const name of ["mnist-svm-train", "mnist-svm-build", "mnist-cnn-build", "mnist-cnn-ingest"]) {
      const cpuSpec = spec(name);
      expect(JSON.stringify(cpuSpec["resourceLimits"] ?? {})).not.toContain("gpu");
      expect(cpuSpec["schedulingSpec"]).toBeUndefined();
      expect(cpuSpec["tolerations"]).toBeUndefined();
    }
  });

  it("never puts the Pachyderm token into a resource's inputs", async () => {
    const project = twoPipelines();
    const declared = await declare(project, project.inputs);
    expect(JSON.stringify(declared)).not.toContain(TOKEN);
  });

  it("declares no registry secret when the credentials are not set", async () => {
    const project = twoPipelines();
    const declared = await declare(project, project.inputs, { KAOS_TEST_PACHYDERM_TOKEN: TOKEN });
    expect(ofType(declared, "kubernetes:core/v1:Secret")).toEqual([]);
    expect(ofType(declared, "kubernetes:core/v1:Namespace")).toHaveLength(1);
  });

  it("gives identical resource inputs for an unchanged plan", async () => {
    const project = twoPipelines();
    const first = inputsByResource(await declare(project, project.inputs));
    const second = inputsByResource(await declare(project, project.inputs));
    expect(second).toEqual(first);
    const firstProviders = (await declare(project, project.inputs)).map((resource) => resource.inputs["__provider"]);
    const secondProviders = (await declare(project, project.inputs)).map((resource) => resource.inputs["__provider"]);
    expect(secondProviders).toEqual(firstProviders);
  });

  it("changes only the data bundle and the params bundle (whose file names are job keys) when only data changes", async () => {
    const project = twoPipelines();
    const before = inputsByResource(await declare(project, project.inputs));
    const after = inputsByResource(await declare(project, withDataKey(project.inputs, "svm", sha("edited data"))));
    const changed = [...after.keys()].filter((key) => after.get(key) !== before.get(key));
    expect(changed.sort()).toEqual([
      "pulumi-nodejs:dynamic/pachyderm:Bundle::mnist-svm-data-bundle",
      "pulumi-nodejs:dynamic/pachyderm:Bundle::mnist-svm-params-bundle",
    ]);
    expect([...after.keys()].sort()).toEqual([...before.keys()].sort());
  });

  it("changes the source and params bundles and the build and train specs (the image tag), not the data, when only the source changes", async () => {
    const project = twoPipelines();
    const before = inputsByResource(await declare(project, project.inputs));
    const after = inputsByResource(await declare(project, withSourceKey(project.inputs, "svm", sha("edited source"))));
    const changed = [...after.keys()].filter((key) => after.get(key) !== before.get(key));
    expect(changed.sort()).toEqual([
      "pulumi-nodejs:dynamic/pachyderm:Bundle::mnist-svm-params-bundle",
      "pulumi-nodejs:dynamic/pachyderm:Bundle::mnist-svm-source-bundle",
      "pulumi-nodejs:dynamic/pachyderm:Pipeline::mnist-svm-build",
      "pulumi-nodejs:dynamic/pachyderm:Pipeline::mnist-svm-train",
    ]);
  });
});
