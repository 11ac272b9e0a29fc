// Builds the real engines the cluster path is tested against, from the Go
// module proxy, into .cache/engines/<name>-<version>/ (ignored by git). A
// folder holding a `built` stamp is reused as is, so only the first run pays
// for the builds.
//
//   node scripts/engines/build.mjs [pulumi|etcd|kubernetes|provider|all]...
//
// Versions: the Pulumi CLI follows the @pulumi/pulumi of package.json, the
// Kubernetes provider plugin is installed under the @pulumi/kubernetes version
// the npm SDK asks for; the rest are pinned below.
import { spawnSync } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const root = fileURLToPath(new URL("../..", import.meta.url));
// KAOS_ENGINES_CACHE moves the cache, e.g. to a folder that outlives clones.
export const cacheRoot = process.env.KAOS_ENGINES_CACHE || join(root, ".cache", "engines");

const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const exactVersion = (range) => range.replace(/^[\^~=v]+/, "");

export const versions = {
  pulumi: exactVersion(pkg.devDependencies["@pulumi/pulumi"]),
  kubernetes: "1.36.2",
  // The etcd that k8s.io/kubernetes of that version requires.
  etcd: "3.6.8",
  // Served by the proxy as a pseudo-version of a 2026-01-15 commit, not at the
  // release tags; installed under the version the npm SDK asks for.
  providerModule: "v4.0.0-20260115033456-f47bc2d6f199",
  provider: exactVersion(pkg.devDependencies["@pulumi/kubernetes"]),
};

/** @param {string} name @param {string} version */
export function engineDir(name, version) {
  return join(cacheRoot, `${name}-${version}`);
}

function log(message) {
  process.stderr.write(`[engines] ${message}\n`);
}

/** Runs go with the machine's proxy settings; dependencies resolve as go.mod says. */
function go(args, cwd, extraEnv = {}) {
  const result = spawnSync("go", args, {
    cwd,
    env: { ...process.env, GOFLAGS: "-mod=mod -buildvcs=false", GOWORK: "off", ...extraEnv },
    stdio: ["ignore", "pipe", "pipe"],
    encoding: "utf8",
    maxBuffer: 256 * 1024 * 1024,
  });
  if (result.status !== 0) {
    throw new Error(`go ${args.join(" ")} failed in ${cwd}:\n${result.stderr}${result.stdout}`);
  }
  return result.stdout;
}

/**
 * `go build` for test engines: without optimisation or inlining and without
 * symbol tables, which cuts the compile by about a third (etcd: 101 to 72 s of
 * CPU) at a cost in speed these engines never feel under a test's load.
 */
function goBuild(work, { ldflags = "", output, packages = ["."], env = {} }) {
  go(["build", "-gcflags=all=-N -l", "-ldflags", `-s -w ${ldflags}`.trim(), "-o", output, ...packages], work, env);
}

function download(modulePath, version, cwd) {
  return JSON.parse(go(["mod", "download", "-json", `${modulePath}@${version}`], cwd));
}

/**
 * The replace directives of a dependency's go.mod that point at other modules
 * (not at folders of its own repository): Go ignores a dependency's replaces,
 * so a main module that builds it must repeat them.
 * @returns {Array<{from: string, to: string}>}
 */
export function moduleReplaces(goModText) {
  const replaces = [];
  const lines = goModText.split("\n").map((line) => line.replace(/\/\/.*$/, "").trim());
  let inBlock = false;
  for (const line of lines) {
    if (line === "replace (") {
      inBlock = true;
      continue;
    }
    if (inBlock && line === ")") {
      inBlock = false;
      continue;
    }
    const body = inBlock ? line : line.startsWith("replace ") ? line.slice("replace ".length) : null;
    if (!body) continue;
    const match = /^(\S+)(?:\s+\S+)?\s*=>\s*(\S+)(?:\s+(\S+))?$/.exec(body);
    if (!match) continue;
    const [, from, target, version] = match;
    replaces.push({ from, to: version ? `${target}@${version}` : target });
  }
  return replaces;
}

/** A fresh scratch main module in the engine's folder, this process's own. */
function scratchModule(dir, name) {
  const work = join(dir, `src-${process.pid}`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  go(["mod", "init", `kaos.engines/${name}`], work);
  return work;
}

/** Runs `build` unless the engine's folder already holds a finished build. */
function cached(name, version, build) {
  const dir = engineDir(name, version);
  const stamp = join(dir, "built");
  if (existsSync(stamp)) return dir;
  mkdirSync(join(dir, "bin"), { recursive: true });
  const started = Date.now();
  log(`building ${name} ${version} (a few minutes, once)`);
  build(dir);
  rmSync(join(dir, `src-${process.pid}`), { recursive: true, force: true });
  writeFileSync(`${stamp}.tmp`, `${new Date().toISOString()}\n`);
  renameSync(`${stamp}.tmp`, stamp);
  log(`built ${name} ${version} in ${Math.round((Date.now() - started) / 1000)} s`);
  return dir;
}

function copyGoSources(from, to) {
  for (const file of readdirSync(from)) {
    if (!file.endsWith(".go") || file.endsWith("_test.go")) continue;
    copyFileSync(join(from, file), join(to, file));
    chmodSync(join(to, file), 0o644);
  }
}

function writeTools(work, imports) {
  const body = imports.map((path) => `\t_ "${path}"`).join("\n");
  writeFileSync(join(work, "tools.go"), `//go:build tools\n\npackage tools\n\nimport (\n${body}\n)\n`);
}

/**
 * The Pulumi CLI: `NewPulumiCmd` lives in package main of pkg/v3/cmd/pulumi,
 * so that folder's sources are copied into a main module that requires pkg/v3
 * and sdk/v3 at one version, with pkg/v3's replaces repeated.
 */
export function buildPulumi(version = versions.pulumi) {
  return cached("pulumi", version, (dir) => {
    const work = scratchModule(dir, "pulumi");
    const pkgModule = download("github.com/pulumi/pulumi/pkg/v3", `v${version}`, work);
    for (const { from, to } of moduleReplaces(readFileSync(pkgModule.GoMod, "utf8"))) {
      if (to.startsWith(".") || to.startsWith("/")) continue;
      go(["mod", "edit", `-replace=${from}=${to}`], work);
    }
    copyGoSources(join(pkgModule.Dir, "cmd", "pulumi"), work);
    go(["get", `github.com/pulumi/pulumi/pkg/v3@v${version}`, `github.com/pulumi/pulumi/sdk/v3@v${version}`], work);
    go(["mod", "tidy"], work);
    goBuild(work, {
      ldflags: `-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v${version}`,
      output: join(dir, "bin", "pulumi"),
    });
    // Dynamic providers run through this plugin, a script of the npm package.
    const plugin = join(root, "node_modules", "@pulumi", "pulumi", "pulumi-resource-pulumi-nodejs");
    copyFileSync(plugin, join(dir, "bin", "pulumi-resource-pulumi-nodejs"));
    chmodSync(join(dir, "bin", "pulumi-resource-pulumi-nodejs"), 0o755);
  });
}

/** etcd's server binary, package main of go.etcd.io/etcd/server/v3. */
export function buildEtcd(version = versions.etcd) {
  return cached("etcd", version, (dir) => {
    const work = scratchModule(dir, "etcd");
    writeTools(work, ["go.etcd.io/etcd/server/v3"]);
    go(["get", `go.etcd.io/etcd/server/v3@v${version}`], work);
    go(["mod", "tidy"], work);
    goBuild(work, { output: join(dir, "bin", "etcd"), packages: ["go.etcd.io/etcd/server/v3"], env: { CGO_ENABLED: "0" } });
  });
}

/**
 * kube-apiserver and kube-scheduler from k8s.io/kubernetes as a dependency:
 * its go.mod points every k8s.io/* staging module at a folder of its own
 * repository, so the main module replaces each by its published v0.X.Y.
 */
export function buildKubernetes(version = versions.kubernetes) {
  return cached("kubernetes", version, (dir) => {
    const work = scratchModule(dir, "kubernetes");
    const kube = download("k8s.io/kubernetes", `v${version}`, work);
    const staging = `v0.${version.split(".").slice(1).join(".")}`;
    go(["mod", "edit", `-require=k8s.io/kubernetes@v${version}`], work);
    for (const { from, to } of moduleReplaces(readFileSync(kube.GoMod, "utf8"))) {
      const target = to.startsWith("./staging/") ? `${from}@${staging}` : to;
      if (target.startsWith(".") || target.startsWith("/")) continue;
      go(["mod", "edit", `-replace=${from}=${target}`], work);
    }
    writeTools(work, ["k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-scheduler"]);
    go(["mod", "tidy"], work);
    const [major, minor] = version.split(".");
    const ldflags = [
      `-X k8s.io/component-base/version.gitVersion=v${version}`,
      `-X k8s.io/component-base/version.gitMajor=${major}`,
      `-X k8s.io/component-base/version.gitMinor=${minor}`,
      "-X k8s.io/component-base/version.gitTreeState=clean",
    ].join(" ");
    goBuild(work, {
      ldflags,
      output: join(dir, "bin") + "/",
      packages: ["k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-scheduler"],
      env: { CGO_ENABLED: "0" },
    });
  });
}

/**
 * The Kubernetes provider plugin: its main embeds schema-embed.json and
 * terraform-mapping-embed.json, made from the schema.json (with its version
 * set) and terraform-mapping.json shipped beside it in the module.
 */
export function buildProvider(moduleVersion = versions.providerModule, version = versions.provider) {
  return cached("provider-kubernetes", version, (dir) => {
    const work = scratchModule(dir, "provider");
    const modulePath = "github.com/pulumi/pulumi-kubernetes/provider/v4";
    const provider = download(modulePath, moduleVersion, work);
    for (const { from, to } of moduleReplaces(readFileSync(provider.GoMod, "utf8"))) {
      if (to.startsWith(".") || to.startsWith("/")) continue;
      go(["mod", "edit", `-replace=${from}=${to}`], work);
    }
    const cmd = join(provider.Dir, "cmd", "pulumi-resource-kubernetes");
    copyGoSources(cmd, work);
    const schema = JSON.parse(readFileSync(join(cmd, "schema.json"), "utf8"));
    schema.version = version;
    writeFileSync(join(work, "schema-embed.json"), JSON.stringify(schema));
    const mapping = JSON.parse(readFileSync(join(cmd, "terraform-mapping.json"), "utf8"));
    writeFileSync(join(work, "terraform-mapping-embed.json"), JSON.stringify(mapping));
    go(["get", `${modulePath}@${moduleVersion}`], work);
    go(["mod", "tidy"], work);
    goBuild(work, {
      ldflags: `-X ${modulePath}/pkg/version.Version=${version}`,
      output: join(dir, "bin", "pulumi-resource-kubernetes"),
      env: { CGO_ENABLED: "0" },
    });
  });
}

export const builders = { pulumi: buildPulumi, etcd: buildEtcd, kubernetes: buildKubernetes, provider: buildProvider };

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const wanted = process.argv.slice(2);
  const names = wanted.length === 0 || wanted.includes("all") ? Object.keys(builders) : wanted;
  for (const name of names) {
    const builder = builders[name];
    if (!builder) {
      process.stderr.write(`unknown engine ${name}; one of ${Object.keys(builders).join(", ")}\n`);
      process.exit(2);
    }
    try {
      process.stdout.write(`${name}: ${builder()}\n`);
    } catch (error) {
      process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
      process.exit(1);
    }
  }
}
