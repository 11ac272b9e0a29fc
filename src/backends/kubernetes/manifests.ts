/**
 * The Kubernetes objects the cluster stack owns: the namespace and the
 * registry secret that builds push with and train pods pull with. The same
 * objects feed `kaos render` (with placeholder credentials) and the Pulumi
 * program (with credentials from the environment, as a Pulumi secret).
 *
 * Pachyderm starts pipeline workers in its own namespace, so secrets that a
 * pipeline mounts or pulls with must live there: `namespace` in the stack is
 * that namespace (see docs/kubernetes.md).
 */
import type { ClusterSettings } from "./settings.js";

export interface KubernetesObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  type?: string;
  stringData?: Record<string, string>;
}

export const MANAGED_BY = { "app.kubernetes.io/managed-by": "kaos" };

/** What a docker-registry secret holds when no credentials are given. */
export const PLACEHOLDER_DOCKER_CONFIG = '{"auths":{}}';

export function namespaceManifest(settings: ClusterSettings): KubernetesObject {
  return { apiVersion: "v1", kind: "Namespace", metadata: { name: settings.namespace, labels: { ...MANAGED_BY } } };
}

export function registrySecretManifest(settings: ClusterSettings, dockerConfigJson: string): KubernetesObject {
  return {
    apiVersion: "v1",
    kind: "Secret",
    metadata: { name: settings.registry.secretName, namespace: settings.namespace, labels: { ...MANAGED_BY } },
    type: "kubernetes.io/dockerconfigjson",
    stringData: { ".dockerconfigjson": dockerConfigJson },
  };
}

/** The registry host a docker config is keyed by: the first path segment of the registry URL. */
export function registryHost(url: string): string {
  const host = url.replace(/^[a-z]+:\/\//i, "").split("/")[0] ?? url;
  // Docker Hub images have no host part (or docker.io); its credentials live under the v1 index URL.
  if (host === "docker.io" || host === "index.docker.io" || (!/[.:]/.test(host) && host !== "localhost")) {
    return "https://index.docker.io/v1/";
  }
  return host;
}

/**
 * The `.dockerconfigjson` for the registry from the stack's credential
 * variables, or undefined when the stack names none or they are unset.
 */
export function dockerConfigFromEnv(settings: ClusterSettings, env: NodeJS.ProcessEnv): string | undefined {
  const { usernameEnv, passwordEnv, url } = settings.registry;
  if (usernameEnv === undefined || passwordEnv === undefined) return undefined;
  const username = env[usernameEnv];
  const password = env[passwordEnv];
  if (username === undefined || username === "" || password === undefined || password === "") return undefined;
  const auth = Buffer.from(`${username}:${password}`).toString("base64");
  return JSON.stringify({ auths: { [registryHost(url)]: { username, password, auth } } });
}
