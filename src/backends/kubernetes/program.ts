/**
 * The Pulumi program of a kubernetes stack, run inline by the Automation API
 * (automation.ts) and, in tests, under `pulumi.runtime.setMocks`.
 *
 * It declares, from a ClusterPlan and nothing else:
 * - a Kubernetes provider (the stack's kube context; an existing namespace or
 *   secret is adopted rather than refused),
 * - the namespace (kept on destroy: it may hold Pachyderm itself) and, when
 *   the stack names registry credentials that are set, the docker-registry
 *   secret (its content a Pulumi secret, encrypted in the state),
 * - per kaos pipeline: its input repos, one bundle commit per input (pushed
 *   only when the bundle's key changed) and its build, ingest and train
 *   pipelines (updated only when their spec changed).
 */
import * as k8s from "@pulumi/kubernetes";
import * as pulumi from "@pulumi/pulumi";
import type { BundlePlan, ClusterPlan } from "./cluster-plan.js";
import { dockerConfigFromEnv, namespaceManifest, registrySecretManifest } from "./manifests.js";
import {
  defaultImplUrl,
  PachydermBundle,
  PachydermPipeline,
  PachydermRepo,
  pachydermProviders,
  type BundleSource,
  type PachdConnection,
} from "./provider.js";

export interface ClusterProgramOptions {
  /** Where the dynamic providers load their implementation from; default provider-impl beside provider.js. */
  implUrl?: string;
  /** Read for the registry credentials. Default process.env. */
  env?: NodeJS.ProcessEnv;
  /** The kubeconfig file for the Kubernetes provider; default what KUBECONFIG names. */
  kubeconfig?: string;
}

export interface DeclaredCluster {
  namespace: k8s.core.v1.Namespace;
  registrySecret: k8s.core.v1.Secret | undefined;
  repos: Map<string, PachydermRepo>;
  bundles: Map<string, PachydermBundle>;
  pipelines: Map<string, PachydermPipeline>;
}

/** The inline program: declares the cluster and exports what it made. */
export function clusterProgram(plan: ClusterPlan, options: ClusterProgramOptions = {}): () => Promise<Record<string, unknown>> {
  return async () => {
    const declared = declareCluster(plan, options);
    return {
      namespace: declared.namespace.metadata.name,
      pipelines: [...declared.pipelines.keys()],
      images: Object.fromEntries(plan.pipelines.map((pipeline) => [pipeline.name, pipeline.image])),
    };
  };
}

export function declareCluster(plan: ClusterPlan, options: ClusterProgramOptions = {}): DeclaredCluster {
  const { settings } = plan;
  const env = options.env ?? process.env;
  const providers = pachydermProviders(options.implUrl ?? defaultImplUrl());

  const kubernetes = new k8s.Provider("kubernetes", {
    ...(options.kubeconfig !== undefined ? { kubeconfig: options.kubeconfig } : {}),
    ...(settings.kubeContext !== undefined ? { context: settings.kubeContext } : {}),
    enableServerSideApply: true,
    upsertExistingObjects: true,
  });
  const namespaceObject = namespaceManifest(settings);
  const namespace = new k8s.core.v1.Namespace(
    "namespace",
    { metadata: namespaceObject.metadata },
    { provider: kubernetes, retainOnDelete: true },
  );

  const dockerConfig = dockerConfigFromEnv(settings, env);
  let registrySecret: k8s.core.v1.Secret | undefined;
  if (dockerConfig !== undefined) {
    const secretObject = registrySecretManifest(settings, "");
    registrySecret = new k8s.core.v1.Secret(
      "registry-secret",
      {
        metadata: secretObject.metadata,
        type: secretObject.type,
        stringData: { ".dockerconfigjson": pulumi.secret(dockerConfig) },
      },
      { provider: kubernetes, dependsOn: [namespace] },
    );
  }
  const secretDeps: pulumi.Resource[] = registrySecret ? [registrySecret] : [namespace];

  const connection: PachdConnection = {
    address: settings.pachyderm.address,
    project: settings.pachyderm.project,
    tokenEnv: settings.pachyderm.tokenEnv,
  };
  const repos = new Map<string, PachydermRepo>();
  const bundles = new Map<string, PachydermBundle>();
  const pipelines = new Map<string, PachydermPipeline>();

  for (const pipeline of plan.pipelines) {
    for (const repo of pipeline.repos) {
      repos.set(repo.name, new PachydermRepo(repo.id, { ...connection, name: repo.name, description: repo.description }, providers.repo));
    }
    for (const bundle of pipeline.bundles) {
      const repo = repos.get(bundle.repo);
      bundles.set(
        bundle.repo,
        new PachydermBundle(
          bundle.id,
          { ...connection, repo: bundle.repo, key: bundle.key, source: bundleSource(bundle) },
          providers.bundle,
          { dependsOn: repo ? [repo] : [] },
        ),
      );
    }
    const { names } = pipeline;
    for (const spec of pipeline.specs) {
      const after: pulumi.Resource[] = [];
      const need = (resource: pulumi.Resource | undefined): void => {
        if (resource) after.push(resource);
      };
      // A pipeline waits for the commits of the bundles it reads (each after
      // its repo): an edit is pushed before the spec that expects it.
      if (spec.stage === "build") {
        need(bundles.get(names.source));
        after.push(...secretDeps);
      } else if (spec.stage === "ingest") {
        need(bundles.get(names.manifest ?? ""));
      } else {
        need(names.data !== undefined ? bundles.get(names.data) : pipelines.get(names.ingest ?? ""));
        need(pipelines.get(names.build));
        need(bundles.get(names.params));
        after.push(...secretDeps);
      }
      pipelines.set(
        spec.name,
        new PachydermPipeline(spec.name, { ...connection, name: spec.name, spec: spec.json }, providers.pipeline, { dependsOn: after }),
      );
    }
  }
  return { namespace, registrySecret, repos, bundles, pipelines };
}

function bundleSource(bundle: BundlePlan): BundleSource {
  switch (bundle.kind) {
    case "archive":
      return { kind: "archive", dir: bundle.dir, files: bundle.files ?? null, path: bundle.path };
    case "files":
      return { kind: "files", dir: bundle.dir };
    case "params":
      return { kind: "params", files: bundle.files };
  }
}
