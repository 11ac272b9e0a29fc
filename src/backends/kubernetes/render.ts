/**
 * `kaos render --stack S -o DIR`: every Pachyderm pipeline spec and
 * Kubernetes manifest of the cluster stack, written offline (no cluster, no
 * Pulumi CLI). Specs are checked against Pachyderm's schema first; nothing
 * is written if any is invalid. The folder is kaos's: what an earlier render
 * wrote there and this one does not (the specs of a pipeline since removed)
 * is removed, and nothing else is touched (see `writeOwnedFolder`).
 */
import { join } from "node:path";
import { stringify } from "yaml";
import type { RenderedFolder } from "../../core/backend.js";
import { writeOwnedFolder } from "../../core/destination.js";
import { KaosError } from "../../core/errors.js";
import type { ResolvedConfig, ResolvedStack } from "../../core/types.js";
import { planCluster, type ClusterPipelineInput, type ClusterPlan } from "./cluster-plan.js";
import { namespaceManifest, PLACEHOLDER_DOCKER_CONFIG, registrySecretManifest, type KubernetesObject } from "./manifests.js";
import { validatePipelineSpec } from "./schema.js";

/** The file a stage's spec is rendered to, relative to the output directory. */
export function specFileName(pipeline: string, stage: string): string {
  return join("pachyderm", `${pipeline}-${stage}.json`);
}

/** Refuses a plan with any spec that Pachyderm's schema rejects, naming the file and the keys. */
export function assertValidSpecs(plan: ClusterPlan): void {
  const problems: string[] = [];
  for (const pipeline of plan.pipelines) {
    for (const spec of pipeline.specs) {
      const result = validatePipelineSpec(spec.spec);
      if (!result.valid) {
        problems.push(`${specFileName(pipeline.name, spec.stage)}:\n  ${result.errors.join("\n  ")}`);
      }
    }
  }
  if (problems.length > 0) {
    throw new KaosError(
      "STACK_INVALID",
      `generated Pachyderm specs do not match Pachyderm's CreatePipelineRequest schema:\n${problems.join("\n")}`,
      {
        hint: "check the resources and gpu settings named above in kaos.config.ts and the stack file",
      },
    );
  }
}

export async function renderCluster(
  config: ResolvedConfig,
  stack: ResolvedStack,
  inputs: readonly ClusterPipelineInput[],
  outDir: string,
): Promise<RenderedFolder> {
  const plan = await planCluster(config, stack, inputs);
  assertValidSpecs(plan);

  const files = new Map<string, string>();
  for (const pipeline of plan.pipelines) {
    for (const spec of pipeline.specs) {
      files.set(specFileName(pipeline.name, spec.stage), `${JSON.stringify(spec.spec, null, 2)}\n`);
    }
  }
  const { settings } = plan;
  files.set(
    join("kubernetes", "namespace.yaml"),
    manifestYaml(namespaceManifest(settings), "The namespace Pachyderm runs pipelines in (kaos adopts it if it exists)."),
  );
  files.set(
    join("kubernetes", "registry-secret.yaml"),
    manifestYaml(
      registrySecretManifest(settings, PLACEHOLDER_DOCKER_CONFIG),
      `Registry credentials for builds (push) and train pods (pull): a placeholder.\n` +
        `Create the real one with:\n` +
        `  kubectl -n ${settings.namespace} create secret docker-registry ${settings.registry.secretName} \\\n` +
        `    --docker-server=<registry> --docker-username=<user> --docker-password=<password>`,
    ),
  );

  const changes = writeOwnedFolder(outDir, files);
  return { files: [...files.keys()].sort().map((path) => join(outDir, path)), ...changes };
}

function manifestYaml(object: KubernetesObject, comment: string): string {
  const header = comment
    .split("\n")
    .map((line) => `# ${line}`.trimEnd())
    .join("\n");
  return `${header}\n${stringify(object, { lineWidth: 0 })}`;
}
