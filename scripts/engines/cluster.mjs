// Starts a throwaway Kubernetes control plane on loopback: etcd, kube-apiserver
// (self-signed serving certificate, a static admin token, AlwaysAllow
// authorization) and, when asked, kube-scheduler. Everything lives in one temp
// folder and on free ports of 127.0.0.1; stop() ends the processes it started
// and removes the folder.
//
//   node scripts/engines/cluster.mjs      starts one, prints its kubeconfig path, stops on Ctrl-C
import { spawn } from "node:child_process";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildEtcd, buildKubernetes } from "./build.mjs";

/** A port of 127.0.0.1 that nothing listens on right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * A child process whose output is kept, and that can be waited on for a line
 * or for its end. `waitFor` settles on an output event, never on a timer.
 */
function startProcess(name, command, args, logFile) {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const listeners = new Set();
  const notify = () => {
    for (const listener of listeners) listener();
  };
  for (const stream of [child.stdout, child.stderr]) {
    stream.setEncoding("utf8").on("data", (chunk) => {
      output += chunk;
      if (output.length > 4_000_000) output = output.slice(-2_000_000);
      notify();
    });
  }
  let exit;
  child.on("close", (code, signal) => {
    exit = { code, signal };
    writeFileSync(logFile, output);
    notify();
  });
  return {
    name,
    child,
    output: () => output,
    /** Resolves when `check()` answers true, re-checking after every output; rejects if the process ends first. */
    until(check) {
      return new Promise((resolve, reject) => {
        let busy = false;
        let again = false;
        const attempt = async () => {
          if (busy) {
            again = true;
            return;
          }
          busy = true;
          try {
            do {
              again = false;
              if (await check()) {
                listeners.delete(attempt);
                resolve();
                return;
              }
            } while (again);
            if (exit) {
              listeners.delete(attempt);
              reject(new Error(`${name} exited (${exit.code ?? exit.signal}) before it was ready:\n${output.slice(-4000)}`));
            }
          } catch (error) {
            listeners.delete(attempt);
            reject(error);
          } finally {
            busy = false;
          }
        };
        listeners.add(attempt);
        void attempt();
      });
    },
    stop() {
      if (exit) return Promise.resolve(exit);
      return new Promise((resolve) => {
        child.once("close", (code, signal) => resolve({ code, signal }));
        child.kill("SIGTERM");
      });
    },
  };
}

/** One GET on the API server with the admin token; answers status and body, never throws for a refused connection. */
export function apiGet(cluster, path) {
  return apiRequest(cluster, "GET", path);
}

export function apiRequest(cluster, method, path, body) {
  return new Promise((resolve) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = request(
      `${cluster.server}${path}`,
      {
        method,
        rejectUnauthorized: false,
        headers: {
          authorization: `Bearer ${cluster.token}`,
          accept: "application/json",
          ...(payload ? { "content-type": "application/json", "content-length": Buffer.byteLength(payload) } : {}),
        },
      },
      (response) => {
        let text = "";
        response.setEncoding("utf8").on("data", (chunk) => (text += chunk));
        response.on("end", () => resolve({ status: response.statusCode ?? 0, body: text }));
      },
    );
    req.on("error", (error) => resolve({ status: 0, body: String(error) }));
    req.end(payload);
  });
}

/**
 * Watches `path` (a list URL) and resolves with the first object for which
 * `predicate` is true: the API server's own watch events, no polling.
 */
export function watchUntil(cluster, path, predicate) {
  return new Promise((resolve, reject) => {
    const separator = path.includes("?") ? "&" : "?";
    const req = request(
      `${cluster.server}${path}${separator}watch=true`,
      { rejectUnauthorized: false, headers: { authorization: `Bearer ${cluster.token}`, accept: "application/json" } },
      (response) => {
        let buffered = "";
        response.setEncoding("utf8").on("data", (chunk) => {
          buffered += chunk;
          let newline = buffered.indexOf("\n");
          while (newline >= 0) {
            const line = buffered.slice(0, newline);
            buffered = buffered.slice(newline + 1);
            newline = buffered.indexOf("\n");
            if (line.trim() === "") continue;
            const event = JSON.parse(line);
            if (event.object && predicate(event.object)) {
              req.destroy();
              resolve(event.object);
              return;
            }
          }
        });
        response.on("end", () => reject(new Error(`watch of ${path} ended first`)));
      },
    );
    req.on("error", (error) => {
      if (!req.destroyed || error.code !== "ECONNRESET") reject(error);
    });
    req.end();
  });
}

/**
 * Starts etcd and kube-apiserver (and kube-scheduler with `scheduler: true`).
 * Answers { server, token, kubeconfig, dir, versions, stop() }.
 */
export async function startCluster(options = {}) {
  const etcdDir = buildEtcd();
  const kubeDir = buildKubernetes();
  const dir = mkdtempSync(join(tmpdir(), "kaos-engines-cluster-"));
  const processes = [];
  // A test run that ends without stop() (killed, crashed) leaves no server behind.
  const orphans = () => {
    for (const started of processes) started.child.kill("SIGKILL");
  };
  process.once("exit", orphans);
  const stop = async () => {
    process.removeListener("exit", orphans);
    for (const started of processes.reverse()) await started.stop();
    if (!options.keep) rmSync(dir, { recursive: true, force: true });
  };
  try {
    const [etcdClient, etcdPeer, apiPort, schedulerPort] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
    const etcd = startProcess(
      "etcd",
      join(etcdDir, "bin", "etcd"),
      [
        "--name",
        "kaos",
        "--data-dir",
        join(dir, "etcd"),
        "--listen-client-urls",
        `http://127.0.0.1:${etcdClient}`,
        "--advertise-client-urls",
        `http://127.0.0.1:${etcdClient}`,
        "--listen-peer-urls",
        `http://127.0.0.1:${etcdPeer}`,
        "--initial-advertise-peer-urls",
        `http://127.0.0.1:${etcdPeer}`,
        "--initial-cluster",
        `kaos=http://127.0.0.1:${etcdPeer}`,
        "--unsafe-no-fsync",
      ],
      join(dir, "etcd.log"),
    );
    processes.push(etcd);
    await etcd.until(() => /ready to serve client requests/.test(etcd.output()));

    const token = randomBytes(16).toString("hex");
    mkdirSync(join(dir, "pki"), { recursive: true });
    const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    writeFileSync(join(dir, "pki", "sa.pub"), publicKey.export({ type: "spki", format: "pem" }));
    writeFileSync(join(dir, "pki", "sa.key"), privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600 });
    writeFileSync(join(dir, "pki", "tokens.csv"), `${token},kaos-admin,kaos-admin,"system:masters"\n`, { mode: 0o600 });
    const server = `https://127.0.0.1:${apiPort}`;
    const apiserver = startProcess(
      "kube-apiserver",
      join(kubeDir, "bin", "kube-apiserver"),
      [
        "--etcd-servers",
        `http://127.0.0.1:${etcdClient}`,
        "--bind-address",
        "127.0.0.1",
        "--advertise-address",
        "127.0.0.1",
        "--secure-port",
        String(apiPort),
        // No TLS files: the API server makes a self-signed certificate here.
        "--cert-dir",
        join(dir, "pki", "serving"),
        "--token-auth-file",
        join(dir, "pki", "tokens.csv"),
        "--authorization-mode",
        "AlwaysAllow",
        "--service-account-issuer",
        "https://kubernetes.default.svc",
        "--service-account-key-file",
        join(dir, "pki", "sa.pub"),
        "--service-account-signing-key-file",
        join(dir, "pki", "sa.key"),
        "--service-cluster-ip-range",
        "10.96.0.0/24",
        "--endpoint-reconciler-type",
        "none",
        "--enable-priority-and-fairness=false",
        "--disable-admission-plugins",
        "ServiceAccount,TaintNodesByCondition",
        "--profiling=false",
        // Logs every request, so each readiness probe brings the output event that checks again.
        "--v=3",
      ],
      join(dir, "kube-apiserver.log"),
    );
    processes.push(apiserver);
    const cluster = { server, token, dir };
    await apiserver.until(async () => (await apiGet(cluster, "/readyz")).status === 200);

    const kubeconfig = join(dir, "kubeconfig");
    writeFileSync(kubeconfig, kubeconfigText({ server, token, context: options.context ?? "kaos-engines" }), { mode: 0o600 });
    const version = JSON.parse((await apiGet(cluster, "/version")).body);

    if (options.scheduler) {
      const scheduler = startProcess(
        "kube-scheduler",
        join(kubeDir, "bin", "kube-scheduler"),
        [
          "--kubeconfig",
          kubeconfig,
          "--authentication-kubeconfig",
          kubeconfig,
          "--authorization-kubeconfig",
          kubeconfig,
          "--bind-address",
          "127.0.0.1",
          "--secure-port",
          String(schedulerPort),
          "--cert-dir",
          join(dir, "pki", "scheduler"),
          "--leader-elect=false",
          "--profiling=false",
        ],
        join(dir, "kube-scheduler.log"),
      );
      processes.push(scheduler);
      await scheduler.until(() =>
        /Serving securely|Starting Kubernetes Scheduler|Successfully acquired|"Starting"/.test(scheduler.output()),
      );
    }
    return { ...cluster, kubeconfig, context: options.context ?? "kaos-engines", version: version.gitVersion, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

export function kubeconfigText({ server, token, context }) {
  return [
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    `- name: ${context}`,
    "  cluster:",
    `    server: ${server}`,
    "    insecure-skip-tls-verify: true",
    "users:",
    `- name: ${context}-admin`,
    "  user:",
    `    token: ${token}`,
    "contexts:",
    `- name: ${context}`,
    "  context:",
    `    cluster: ${context}`,
    `    user: ${context}-admin`,
    `current-context: ${context}`,
    "",
  ].join("\n");
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const cluster = await startCluster({ scheduler: true });
  process.stdout.write(`Kubernetes ${cluster.version} at ${cluster.server}\nKUBECONFIG=${cluster.kubeconfig}\n`);
  const end = async () => {
    await cluster.stop();
    process.exit(0);
  };
  process.on("SIGINT", end);
  process.on("SIGTERM", end);
}
