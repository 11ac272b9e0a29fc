/**
 * What can be checked before Pulumi creates anything: the kube context
 * exists and its API server answers, and pachd answers with a 2.x version. A
 * plan or an up that would fail halfway (repos created in pachd, then the
 * Namespace refused) stops here instead, naming what failed.
 */
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { chmod, writeFile } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import { request as httpsRequest, type RequestOptions } from "node:https";
import { homedir } from "node:os";
import { delimiter, join } from "node:path";
import { parse as parseYaml } from "yaml";
import { KaosError, describeError } from "../../core/errors.js";
import { PachdClient } from "./pachd.js";
import type { ClusterSettings } from "./settings.js";

interface KubeconfigFile {
  "current-context"?: string;
  contexts?: { name?: string; context?: { cluster?: string; user?: string } }[];
  clusters?: {
    name?: string;
    cluster?: {
      server?: string;
      "certificate-authority-data"?: string;
      "certificate-authority"?: string;
      "insecure-skip-tls-verify"?: boolean;
    };
  }[];
  users?: { name?: string; user?: { token?: string; "client-certificate-data"?: string; "client-key-data"?: string } }[];
}

export interface KubeTarget {
  /** The kubeconfig file read. */
  path: string;
  /** Its text. */
  text: string;
  context: string;
  server: string;
}

/** The kubeconfig kubectl would read: the first file of KUBECONFIG that exists, else ~/.kube/config. */
export function kubeconfigPath(env: NodeJS.ProcessEnv): { path: string | undefined; looked: string[] } {
  const listed = (env["KUBECONFIG"] ?? "").split(delimiter).filter((entry) => entry !== "");
  const looked = listed.length > 0 ? listed : [join(env["HOME"] ?? homedir(), ".kube", "config")];
  return { path: looked.find((candidate) => existsSync(candidate)), looked };
}

/** The stack's kube context, from the kubeconfig: STACK_INVALID naming what is missing. */
export function kubeTarget(settings: ClusterSettings, env: NodeJS.ProcessEnv): KubeTarget {
  const { path, looked } = kubeconfigPath(env);
  const stack = `stack '${settings.stack}'`;
  if (path === undefined) {
    throw new KaosError("STACK_INVALID", `${stack} needs a kube context, and there is no kubeconfig at ${looked.join(", ")}`, {
      hint: "point KUBECONFIG at your cluster's kubeconfig (`kubectl config current-context` must name the cluster), or set kubeContext in the stack file",
    });
  }
  const text = readFileSync(path, "utf8");
  let parsed: KubeconfigFile;
  try {
    parsed = (parseYaml(text) ?? {}) as KubeconfigFile;
  } catch (error) {
    throw new KaosError("STACK_INVALID", `the kubeconfig ${path} is not YAML: ${describeError(error)}`);
  }
  const context = settings.kubeContext ?? parsed["current-context"];
  if (context === undefined || context === "") {
    throw new KaosError("STACK_INVALID", `${stack} names no kubeContext, and ${path} has no current-context`, {
      hint: "`kubectl config use-context NAME`, or set kubeContext in the stack file",
    });
  }
  const entry = parsed.contexts?.find((candidate) => candidate.name === context)?.context;
  if (!entry) {
    throw new KaosError("STACK_INVALID", `kube context '${context}' of ${stack} is not in ${path}`, {
      hint: `\`kubectl config get-contexts\` lists the contexts of ${path}`,
    });
  }
  const server = parsed.clusters?.find((candidate) => candidate.name === entry.cluster)?.cluster?.server;
  if (server === undefined) {
    throw new KaosError(
      "STACK_INVALID",
      `kube context '${context}' in ${path} names cluster '${entry.cluster ?? ""}', which has no server`,
    );
  }
  return { path, text, context, server };
}

/** Asks the API server's /version; any HTTP answer means it is reachable (the cluster may refuse anonymous reads). */
async function reachKube(target: KubeTarget): Promise<void> {
  const parsed = (parseYaml(target.text) ?? {}) as KubeconfigFile;
  const entry = parsed.contexts?.find((candidate) => candidate.name === target.context)?.context;
  const cluster = parsed.clusters?.find((candidate) => candidate.name === entry?.cluster)?.cluster ?? {};
  const user = parsed.users?.find((candidate) => candidate.name === entry?.user)?.user ?? {};
  const options: RequestOptions = { method: "GET", timeout: 10_000, headers: { accept: "application/json" } };
  if (cluster["insecure-skip-tls-verify"] === true) options.rejectUnauthorized = false;
  if (cluster["certificate-authority-data"]) options.ca = Buffer.from(cluster["certificate-authority-data"], "base64");
  else if (cluster["certificate-authority"]) options.ca = readFileSync(cluster["certificate-authority"]);
  if (user["client-certificate-data"] && user["client-key-data"]) {
    options.cert = Buffer.from(user["client-certificate-data"], "base64");
    options.key = Buffer.from(user["client-key-data"], "base64");
  }
  if (user.token) options.headers = { ...options.headers, authorization: `Bearer ${user.token}` };
  const url = new URL("/version", target.server);
  const send = url.protocol === "https:" ? httpsRequest : httpRequest;
  await new Promise<void>((resolve, reject) => {
    const request = send(url, options, (response) => {
      response.resume();
      response.on("end", resolve);
    });
    request.on("timeout", () => request.destroy(new Error("no answer within 10 s")));
    request.on("error", (error) =>
      reject(
        new KaosError(
          "CLUSTER_UNREACHABLE",
          `the API server of kube context '${target.context}' (${target.server}, from ${target.path}) does not answer: ${describeError(error)}`,
          {
            hint: "check that the cluster is up and that this kube context reaches it (`kubectl --context " + target.context + " version`)",
          },
        ),
      ),
    );
    request.end();
  });
}

/** pachd answers GetVersion with a 2.x version: PACHD_UNREACHABLE when nothing answers, PACHD_FAILED for another version. */
export async function pachdVersion(settings: ClusterSettings, env: NodeJS.ProcessEnv, fetchImpl?: typeof fetch): Promise<string> {
  const client = new PachdClient({
    address: settings.pachyderm.address,
    token: env[settings.pachyderm.tokenEnv],
    tokenEnv: settings.pachyderm.tokenEnv,
    ...(fetchImpl ? { fetch: fetchImpl } : {}),
  });
  const version = await client.call<{ major?: number; minor?: number; micro?: number }>("versionpb_v2.API", "GetVersion", {});
  const text = `${version.major ?? 0}.${version.minor ?? 0}.${version.micro ?? 0}`;
  if (version.major !== 2) {
    throw new KaosError("PACHD_FAILED", `pachd at ${settings.pachyderm.address} is version ${text}; kaos needs Pachyderm 2.x`, {
      hint: "point `pachyderm.address` in the stack file at a Pachyderm 2.x pachd (kaos is checked against 2.11.6)",
    });
  }
  return text;
}

/** Every check, before Pulumi starts; answers the kube target and pachd's version. */
export async function preflight(settings: ClusterSettings, env: NodeJS.ProcessEnv): Promise<{ kube: KubeTarget; pachd: string }> {
  const kube = kubeTarget(settings, env);
  const [, pachd] = await Promise.all([reachKube(kube), pachdVersion(settings, env)]);
  return { kube, pachd };
}

/**
 * A copy of the kubeconfig named by its content, for the Kubernetes provider's
 * `kubeconfig` input: the same content read from another path is the same
 * input, so Pulumi sees no change of the provider.
 */
export async function stableKubeconfig(target: KubeTarget, workDir: string): Promise<string> {
  const copy = join(workDir, `kubeconfig-${createHash("sha256").update(target.text).digest("hex").slice(0, 16)}`);
  if (!existsSync(copy)) {
    await writeFile(copy, target.text, { mode: 0o600 });
    await chmod(copy, 0o600);
  }
  return copy;
}
