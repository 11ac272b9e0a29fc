/**
 * A kubernetes stack with every default applied, in one place, so the specs,
 * the manifests, the Pulumi program and the API clients agree on them.
 */
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { KaosError } from "../../core/errors.js";
import type { KubernetesStack, ResolvedConfig, ResolvedStack, Toleration } from "../../core/types.js";

export const DEFAULT_TOKEN_ENV = "PACHYDERM_TOKEN";
export const DEFAULT_PROJECT = "default";
export const DEFAULT_REGISTRY_SECRET = "kaos-registry";
export const DEFAULT_GPU_RESOURCE = "nvidia.com/gpu";
export const DEFAULT_PASSPHRASE_ENV = "PULUMI_CONFIG_PASSPHRASE";
/** Set by kaos for the Pulumi CLI (and so its provider process): pachd's address in this run's stack. */
export const PACHD_ADDRESS_ENV = "KAOS_PACHD_ADDRESS";
export const DEFAULT_BUILDER_IMAGE = "moby/buildkit:v0.16.0-rootless";

export interface ClusterSettings {
  /** Name given to `--stack`. */
  stack: string;
  namespace: string;
  kubeContext: string | undefined;
  pachyderm: { address: string; tokenEnv: string; project: string };
  registry: { url: string; secretName: string; usernameEnv: string | undefined; passwordEnv: string | undefined };
  gpu: { resourceName: string; nodeSelector: Record<string, string>; tolerations: Toleration[] };
  pulumi: { backendUrl: string; stackName: string; passphraseEnv: string; projectName: string; workDir: string };
  builderImage: string;
  /** Prefix of every repo and pipeline name, from the workspace. */
  prefix: string;
}

/** The kubernetes stack of `stack`, or a clear error when it names another backend. */
export function kubernetesStack(stack: ResolvedStack): KubernetesStack {
  if (stack.config.backend !== "kubernetes") {
    throw new KaosError("STACK_INVALID", `stack '${stack.name}' uses the ${stack.config.backend} backend, not kubernetes`, {
      hint: 'pick a stack file whose defineStack has backend: "kubernetes" (see stacks/cluster.ts)',
    });
  }
  return stack.config;
}

export function clusterSettings(config: ResolvedConfig, stack: ResolvedStack): ClusterSettings {
  const k8s = kubernetesStack(stack);
  const pulumiDir = join(config.root, ".kaos", "pulumi");
  return {
    stack: stack.name,
    namespace: k8s.namespace,
    kubeContext: k8s.kubeContext,
    pachyderm: {
      address: k8s.pachyderm.address.replace(/\/+$/, ""),
      tokenEnv: k8s.pachyderm.tokenEnv ?? DEFAULT_TOKEN_ENV,
      project: k8s.pachyderm.project ?? DEFAULT_PROJECT,
    },
    registry: {
      url: k8s.registry.url.replace(/\/+$/, ""),
      secretName: k8s.registry.secretName ?? DEFAULT_REGISTRY_SECRET,
      usernameEnv: k8s.registry.usernameEnv,
      passwordEnv: k8s.registry.passwordEnv,
    },
    gpu: {
      resourceName: k8s.gpu?.resourceName ?? DEFAULT_GPU_RESOURCE,
      nodeSelector: { ...(k8s.gpu?.nodeSelector ?? {}) },
      tolerations: [...(k8s.gpu?.tolerations ?? [])],
    },
    pulumi: {
      backendUrl: k8s.pulumi?.backendUrl ?? pathToFileURL(pulumiDir).href,
      stackName: k8s.pulumi?.stackName ?? stack.name,
      passphraseEnv: k8s.pulumi?.passphraseEnv ?? DEFAULT_PASSPHRASE_ENV,
      projectName: pulumiName(`kaos-${config.workspace}`),
      workDir: join(pulumiDir, "workspaces", pulumiName(k8s.pulumi?.stackName ?? stack.name)),
    },
    builderImage: k8s.builderImage ?? DEFAULT_BUILDER_IMAGE,
    prefix: pachydermName(config.workspace),
  };
}

/** Pachyderm names allow letters, digits, `_` and `-`; anything else becomes `-`. */
export function pachydermName(value: string): string {
  const cleaned = value.replace(/[^A-Za-z0-9_-]+/g, "-").replace(/^-+|-+$/g, "");
  return cleaned === "" ? "kaos" : cleaned;
}

/** Pulumi project and stack names allow letters, digits, `_`, `.` and `-`. */
function pulumiName(value: string): string {
  const cleaned = value.replace(/[^A-Za-z0-9_.-]+/g, "-").replace(/^-+|-+$/g, "");
  return cleaned === "" ? "kaos" : cleaned;
}
