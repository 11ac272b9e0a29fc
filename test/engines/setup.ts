/**
 * Builds the engines once (or finds them in .cache/engines), installs the
 * Kubernetes provider plugin into a Pulumi home of this run, and hands the
 * paths to the tests; prints the versions the tier runs.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestProject } from "vitest/node";
// @ts-expect-error plain JavaScript module of the build scripts
import { buildEtcd, buildKubernetes, buildProvider, buildPulumi, versions } from "../../scripts/engines/build.mjs";

export interface Engines {
  pulumiBin: string;
  pulumiHome: string;
  etcdDir: string;
  kubernetesDir: string;
  pulumiVersion: string;
  providerVersion: string;
  /** Why there is no provider plugin, when it could not be built. */
  providerMissing: string | undefined;
}

declare module "vitest" {
  export interface ProvidedContext {
    engines: Engines;
  }
}

export default function setup(project: TestProject): () => void {
  const started = Date.now();
  const pulumiDir: string = buildPulumi();
  const etcdDir: string = buildEtcd();
  const kubernetesDir: string = buildKubernetes();
  const pulumiHome = mkdtempSync(join(tmpdir(), "kaos-engines-pulumi-home-"));
  const pulumi = join(pulumiDir, "bin", "pulumi");
  let providerMissing: string | undefined;
  try {
    const providerDir: string = buildProvider();
    execFileSync(
      pulumi,
      [
        "plugin",
        "install",
        "resource",
        "kubernetes",
        `v${versions.provider}`,
        "-f",
        join(providerDir, "bin", "pulumi-resource-kubernetes"),
      ],
      {
        env: { ...process.env, PULUMI_HOME: pulumiHome, PULUMI_SKIP_UPDATE_CHECK: "true" },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
  } catch (error) {
    providerMissing = error instanceof Error ? error.message : String(error);
  }
  const pulumiVersion = execFileSync(pulumi, ["version"], { encoding: "utf8", env: { ...process.env, PULUMI_HOME: pulumiHome } }).trim();
  process.stdout.write(
    `engines: Pulumi CLI ${pulumiVersion}, Kubernetes provider plugin ${providerMissing ? `missing (${providerMissing.split("\n")[0]})` : `v${versions.provider} (${versions.providerModule})`}, ` +
      `kube-apiserver v${versions.kubernetes}, etcd v${versions.etcd}; ready in ${Math.round((Date.now() - started) / 1000)} s\n`,
  );
  project.provide("engines", {
    pulumiBin: join(pulumiDir, "bin"),
    pulumiHome,
    etcdDir,
    kubernetesDir,
    pulumiVersion,
    providerVersion: versions.provider,
    providerMissing,
  });
  return () => rmSync(pulumiHome, { recursive: true, force: true });
}
