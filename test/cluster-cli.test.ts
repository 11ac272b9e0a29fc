import { type Dirent, existsSync, mkdirSync, readFileSync, readdirSync } from "node:fs";
import { join, relative } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { compileSpecSchema, validatePipelineSpec } from "../src/backends/kubernetes/schema.js";
import { makeProject, REPO_ROOT, runKaos, type Project } from "./helpers/rig.js";
import { trainingProject } from "./helpers/jobs.js";

const projects: Project[] = [];
afterAll(() => {
  for (const project of projects) project.remove();
});

function clusterProject(): Project {
  const project = makeProject(
    trainingProject({
      grid: { score: [1, 2] },
      resources: { cpu: 2, memory: "4Gi", gpu: 1 },
      parallelism: 2,
      extra: { "stacks/cluster.ts": readFileSync(join(REPO_ROOT, "stacks/cluster.ts"), "utf8") },
    }),
  );
  projects.push(project);
  return project;
}

describe("kubernetes stack through the built CLI (no cluster, Pachyderm or Pulumi CLI here)", () => {
  it("kaos render writes Pachyderm specs that validate against Pachyderm's own schema, and Kubernetes manifests", async () => {
    const project = clusterProject();
    const result = await runKaos(["render", "--stack", "cluster", "-o", "out"], { cwd: project.dir });
    expect(result.code, result.stderr).toBe(0);
    const specs = readdirSync(project.path("out/pachyderm")).sort();
    expect(specs).toEqual(["p-build.json", "p-train.json"]);
    const schema = JSON.parse(
      readFileSync(join(REPO_ROOT, "src/backends/kubernetes/CreatePipelineRequest.v2.11.6.schema.json"), "utf8"),
    ) as unknown;
    const validate = compileSpecSchema(schema);
    for (const file of specs) {
      const spec = JSON.parse(readFileSync(project.path("out/pachyderm", file), "utf8")) as unknown;
      expect(validatePipelineSpec(spec, validate).errors, file).toEqual([]);
    }
    const train = JSON.parse(readFileSync(project.path("out/pachyderm/p-train.json"), "utf8")) as {
      parallelismSpec: { constant: string | number };
      resourceLimits: { gpu: { type: string; number: string | number } };
      schedulingSpec?: { nodeSelector?: Record<string, string> };
    };
    expect(Number(train.parallelismSpec.constant)).toBe(2);
    expect(train.resourceLimits.gpu.type).toBe("nvidia.com/gpu");
    expect(Number(train.resourceLimits.gpu.number)).toBe(1);
    const manifests = readdirSync(project.path("out/kubernetes"));
    expect(manifests.length).toBeGreaterThan(0);
    for (const file of manifests) {
      const document = parse(readFileSync(project.path("out/kubernetes", file), "utf8")) as { apiVersion: string; kind: string };
      expect(document.apiVersion, file).toBeTruthy();
      expect(document.kind, file).toBeTruthy();
    }
    const again = await runKaos(["render", "--stack", "cluster", "-o", "out2"], { cwd: project.dir });
    expect(again.code).toBe(0);
    for (const file of specs)
      expect(readFileSync(project.path("out2/pachyderm", file), "utf8")).toBe(readFileSync(project.path("out/pachyderm", file), "utf8"));
  });

  it("plan and up on the cluster stack print kaos's plan, then say the Pulumi CLI is missing and how to install it, exit 1", async () => {
    const project = clusterProject();
    const env = { PATH: "/usr/bin:/bin", HOME: project.dir };
    const plan = await runKaos(["plan", "--stack", "cluster"], { cwd: project.dir, env });
    expect(plan.code).toBe(1);
    expect(plan.stdout).toContain("Plan: 1 stage and 2 jobs to run, 0 skipped.");
    expect(plan.stderr).toContain("error: the Pulumi CLI is required for stack 'cluster'");
    expect(plan.stderr).toContain("hint: install it: curl -fsSL https://get.pulumi.com | sh");
    const up = await runKaos(["up", "--stack", "cluster"], { cwd: project.dir, env });
    expect(up.code).toBe(1);
    expect(up.stderr).toContain("the Pulumi CLI is required");
    const local = await runKaos(["render", "--stack", "local", "-o", "x"], { cwd: project.dir });
    expect(local.code).toBe(1);
    expect(local.stderr).toContain("--stack local: stack uses the local backend; `kaos render` needs a kubernetes stack");
  });

  it("pipeline names Pachyderm would refuse (too long, or one Kubernetes name for two pipelines) stop render and plan before anything is written or applied", async () => {
    const project = clusterProject();
    const pipeline = `{ source: "src", data: "data", hyperparams: "grid.json" }`;
    const long = "resnet50_finetune_on_imagenet_with_augmentation";
    project.write({
      "kaos.config.ts": `import { defineConfig } from "kaos-ml";

export default defineConfig({
  workspace: "Image_Classification",
  pipelines: {
    my_model: ${pipeline},
    "My-Model": ${pipeline},
    ${long}: ${pipeline},
  },
});
`,
    });
    const render = await runKaos(["render", "--stack", "cluster", "-o", "out"], { cwd: project.dir });
    expect(render.code, render.stdout).toBe(1);
    expect(existsSync(project.path("out"))).toBe(false);
    // Pachyderm takes at most 51 characters, and its workers' Kubernetes name `<project>-<pipeline>-v<N>` at most 63.
    expect(render.stderr).toContain(
      `kaos.config.ts:8: pipelines.${long}: the Pachyderm pipeline Image_Classification-${long}-build is 74 characters long; Pachyderm takes at most 51`,
    );
    // Kubernetes names are lowercase with '-' for '_': both would run as the workers of default-image-classification-my-model-build-v1.
    expect(render.stderr).toContain(
      "kaos.config.ts:7: pipelines.My-Model: the Pachyderm pipeline Image_Classification-My-Model-build has the Kubernetes name of Image_Classification-my_model-build (pipelines.my_model)",
    );
    expect(render.stderr).toContain("hint: rename the pipelines named above (or shorten the workspace)");
    const env = { PATH: "/usr/bin:/bin", HOME: project.dir };
    const plan = await runKaos(["plan", "--stack", "cluster"], { cwd: project.dir, env });
    expect(plan.code).toBe(1);
    expect(plan.stderr).toContain(`pipelines.${long}: the Pachyderm pipeline`);
    expect(plan.stderr).not.toContain("Pulumi CLI");
    expect(existsSync(project.path(".kaos/pulumi"))).toBe(false);
  });

  it("odd pipeline names get image references registries take, and two pipelines with one image repository stop render, plan and up before anything is applied", async () => {
    const project = clusterProject();
    const pipeline = `{ source: "src", data: "data", hyperparams: "grid.json" }`;
    const config = (names: string[]) => `import { defineConfig } from "kaos-ml";

export default defineConfig({
  workspace: "vision_",
  pipelines: {
${names.map((name) => `    "${name}": ${pipeline},`).join("\n")}
  },
});
`;
    project.write({ "kaos.config.ts": config(["MNIST", "my_-Model_"]) });
    const render = await runKaos(["render", "--stack", "cluster", "-o", "out"], { cwd: project.dir });
    expect(render.code, render.stderr).toBe(0);
    const validate = compileSpecSchema(
      JSON.parse(readFileSync(join(REPO_ROOT, "src/backends/kubernetes/CreatePipelineRequest.v2.11.6.schema.json"), "utf8")) as unknown,
    );
    // The OCI distribution spec's grammar: registry host, then lowercase path components, then the tag.
    const component = "[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
    const reference = new RegExp(`^registry\\.example\\.com/ml/(${component}):[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`);
    const repositories: string[] = [];
    for (const name of ["MNIST", "my_-Model_"]) {
      const train = JSON.parse(readFileSync(project.path(`out/pachyderm/${name}-train.json`), "utf8")) as { transform: { image: string } };
      const build = JSON.parse(readFileSync(project.path(`out/pachyderm/${name}-build.json`), "utf8")) as { transform: { cmd: string[] } };
      expect(validatePipelineSpec(train, validate).errors, name).toEqual([]);
      expect(train.transform.image, name).toMatch(reference);
      expect(build.transform.cmd[2], name).toContain(`name='${train.transform.image}',push=true`);
      repositories.push(reference.exec(train.transform.image)?.[1] ?? "");
    }
    expect(repositories).toEqual(["vision--mnist", "vision--my--model"]);

    // `model` and `model_` run as different Pachyderm pipelines, but registries would take both images as vision--model.
    project.write({ "kaos.config.ts": config(["model", "model_"]) });
    const refused = await runKaos(["render", "--stack", "cluster", "-o", "refused"], { cwd: project.dir });
    expect(refused.code, refused.stdout).toBe(1);
    expect(existsSync(project.path("refused"))).toBe(false);
    const problem =
      "kaos.config.ts:7: pipelines.model_: the image repository registry.example.com/ml/vision--model is also that of pipelines.model";
    expect(refused.stderr).toContain(problem);
    expect(refused.stderr).toContain("hint: rename the pipelines named above (or shorten the workspace)");
    const env = { PATH: "/usr/bin:/bin", HOME: project.dir };
    for (const command of ["plan", "up"]) {
      const result = await runKaos([command, "--stack", "cluster"], { cwd: project.dir, env });
      expect(result.code, command).toBe(1);
      expect(result.stderr, command).toContain(problem);
      expect(result.stderr, command).not.toContain("Pulumi CLI");
    }
    expect(existsSync(project.path(".kaos/pulumi"))).toBe(false);
  });
  it("render owns its folder: the specs of a pipeline removed from the config go on the next render, listed; a user's file stays", async () => {
    const project = clusterProject();
    const pipeline = `{ source: "src", data: "data", hyperparams: "grid.json" }`;
    const config = (names: string[]) =>
      `import { defineConfig } from "kaos-ml";\n\nexport default defineConfig({\n  pipelines: {\n${names.map((name) => `    ${name}: ${pipeline},\n`).join("")}  },\n});\n`;
    const render = async (out: string) => {
      const result = await runKaos(["render", "--stack", "cluster", "-o", out], { cwd: project.dir });
      expect(result.code, result.stderr).toBe(0);
      return result;
    };
    /** Every file of a folder, by relative path, with its bytes. */
    const folder = (dir: string): Record<string, string> =>
      Object.fromEntries(
        (readdirSync(project.path(dir), { recursive: true, withFileTypes: true }) as Dirent[])
          .filter((entry) => entry.isFile())
          .map((entry) => {
            const path = relative(project.path(dir), join(entry.parentPath, entry.name));
            return [path, readFileSync(join(entry.parentPath, entry.name), "utf8")];
          })
          .sort(([a], [b]) => (a! < b! ? -1 : 1)),
      );
    project.write({ "kaos.config.ts": config(["p", "q"]) });
    await render("out");
    expect(Object.keys(folder("out"))).toEqual([
      ".kaos-render.sha256",
      "kubernetes/namespace.yaml",
      "kubernetes/registry-secret.yaml",
      "pachyderm/p-build.json",
      "pachyderm/p-train.json",
      "pachyderm/q-build.json",
      "pachyderm/q-train.json",
    ]);
    // A file of the user's, even in the specs' own folder, is not kaos's to remove.
    project.write({ "out/pachyderm/mine.json": "{}\n", "out/README.md": "mine\n" });
    const before = folder("out");
    const same = await render("out");
    expect(same.stdout).not.toContain("removed");
    expect(folder("out")).toEqual(before);

    project.write({ "kaos.config.ts": config(["p"]) });
    const shrunk = await render("out");
    expect(shrunk.stdout).toContain("removed pachyderm/q-build.json\nremoved pachyderm/q-train.json\n");
    expect(shrunk.stdout).toContain("; removed 2 an earlier render wrote that this config no longer makes");
    await render("fresh");
    // What is left is what a render into a new folder writes, and the user's files.
    expect(folder("out")).toEqual({ ...folder("fresh"), "README.md": "mine\n", "pachyderm/mine.json": "{}\n" });

    // A spec edited since kaos wrote it is the user's now: kept, and named.
    project.write({ "kaos.config.ts": config(["p", "q"]) });
    await render("out");
    project.write({ "out/pachyderm/q-train.json": "{}\n" });
    project.write({ "kaos.config.ts": config(["p"]) });
    const edited = await render("out");
    expect(edited.stdout).toContain("removed pachyderm/q-build.json\n");
    expect(edited.stderr).toContain(
      "warning: kept pachyderm/q-train.json: an earlier render wrote it and this one does not, but it changed since kaos wrote it; remove it if it is not wanted",
    );
    expect(readFileSync(project.path("out/pachyderm/q-train.json"), "utf8")).toBe("{}\n");

    // A folder where kaos would write a spec is refused before anything is written.
    mkdirSync(project.path("blocked/pachyderm/p-train.json"), { recursive: true });
    const blocked = await runKaos(["render", "--stack", "cluster", "-o", "blocked"], { cwd: project.dir });
    expect(blocked.code).toBe(1);
    expect(blocked.stderr).toContain(
      `error: ${project.path("blocked/pachyderm/p-train.json")} is a directory, where kaos writes a file of its own`,
    );
    expect(existsSync(project.path("blocked/pachyderm/p-build.json"))).toBe(false);
  });
});
